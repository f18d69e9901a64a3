"""The export bundle: a folder of artifacts named by role, and ``manifest.json`` saying what ran.

Every file is written atomically (temporary name, then rename) and the manifest is written last,
so a folder with a manifest is complete and one without is not. The manifest records, per
artifact, its file, size and SHA-256; per step, whether it ran and how long it took; the tool
versions; and the graphs' inputs and outputs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import platform
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx

from vidconv_deploy import __version__
from vidconv_deploy.atomic import write_bytes

MANIFEST = "manifest.json"
#: Packages whose versions every manifest records.
TOOLS = ("torch", "onnx", "onnxruntime", "onnxsim", "numpy")


def tool_versions() -> dict[str, str]:
    """Installed versions of the tools the bundle was made with."""
    versions = {"python": platform.python_version(), "vidconv-deploy": __version__}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class Bundle:
    """Collects artifacts and step records into ``directory``; :meth:`finish` writes the manifest."""

    def __init__(self, directory: Path, target: str) -> None:
        self.directory = directory
        self.target = target
        self.artifacts: dict[str, dict[str, Any]] = {}
        self.steps: list[dict[str, Any]] = []
        self.io: dict[str, Any] = {}
        directory.mkdir(parents=True, exist_ok=True)
        # A manifest from an earlier run would vouch for files this run may not rewrite.
        (directory / MANIFEST).unlink(missing_ok=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        """Time one pipeline step; the yielded dict may take extra facts for the manifest."""
        record: dict[str, Any] = {"name": name, "status": "ran"}
        start = time.perf_counter()
        yield record
        record["seconds"] = round(time.perf_counter() - start, 3)
        self.steps.append(record)

    def not_run(self, name: str, reason: str, **facts: Any) -> None:
        """Record a step that could not run here, and why (e.g. no vai_c_xir on this machine)."""
        self.steps.append({"name": name, "status": "not run", "reason": reason, **facts})

    def write(self, role: str, filename: str, data: bytes | str) -> Path:
        """Write an artifact atomically and record it under ``role``."""
        raw = data.encode("utf-8") if isinstance(data, str) else data
        path = self.directory / filename
        write_bytes(path, raw)
        self.artifacts[role] = {"file": filename, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        return path

    def write_onnx(self, role: str, filename: str, model: onnx.ModelProto) -> Path:
        return self.write(role, filename, model.SerializeToString())

    def write_json(self, role: str, filename: str, obj: Any) -> Path:
        return self.write(role, filename, json.dumps(obj, indent=2) + "\n")

    def record_file(self, role: str, filename: str) -> Path:
        """Record a file another module wrote atomically into the bundle (e.g. the report)."""
        path = self.directory / filename
        data = path.read_bytes()
        self.artifacts[role] = {"file": filename, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return path

    def record_dir(self, role: str, dirname: str) -> Path:
        """Record a folder artifact (golden vectors, compile scripts) with each file's size and hash.

        Its files were written atomically one by one; the manifest, written last, vouches for the set.
        """
        root = self.directory / dirname
        files = {
            str(path.relative_to(root)): {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
            for path in sorted(root.rglob("*")) if path.is_file()
        }
        self.artifacts[role] = {"dir": dirname, "files": files}
        return root

    def finish(self, **fields: Any) -> Path:
        """Write ``manifest.json`` (last, atomically) and return its path."""
        manifest = {
            "tool": "vidconv-deploy",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "target": self.target,
            **fields,
            "artifacts": self.artifacts,
            "io": self.io,
            "steps": self.steps,
            "tools": tool_versions(),
        }
        path = self.directory / MANIFEST
        write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
        return path
