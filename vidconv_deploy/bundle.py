"""The export bundle: a folder of artifacts named by role, and ``manifest.json`` saying what ran.

Every file is written atomically (temporary name, then rename) and the manifest is written last,
so a folder with a manifest is complete and one without is not. A command builds its bundle in a
sibling folder (:func:`staged_bundle`) and swaps it in only when complete, so a finished bundle is
never half-overwritten; every path a bundle records is relative to it, so it can be moved. The manifest records, per
artifact, its file, size and SHA-256; per step, whether it ran and how long it took; the tool
versions; and the graphs' inputs and outputs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from vidconv_deploy.version import __version__, package_versions
from vidconv_deploy import strict_json
from vidconv_deploy.atomic import current_umask, is_temporary, write_bytes
from vidconv_deploy.errors import UserError

MANIFEST = "manifest.json"
#: Packages whose versions every manifest records.
TOOLS = ("torch", "onnx", "onnxruntime", "onnxsim", "numpy")


def read_manifest(directory: Path, fix: str = "give the folder vidconv-export wrote (--out/<arch>-<target>)") -> dict:
    """A finished bundle's manifest; a folder without a readable one is not a finished bundle (``fix`` says what to do)."""
    try:
        return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{directory} holds no readable {MANIFEST}: {fix}") from None


def tool_versions() -> dict[str, str]:
    """Installed versions of the tools the bundle was made with."""
    return {"python": platform.python_version(), "vidconv-deploy": __version__, **package_versions(TOOLS)}


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
        """Write ``obj`` as strict JSON (non-finite figures become null)."""
        return self.write(role, filename, strict_json.dumps(obj) + "\n")

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
            for path in sorted(root.rglob("*")) if path.is_file() and not is_temporary(path)
        }
        self.artifacts[role] = {"dir": dirname, "files": files}
        return root

    def record_report(self) -> None:
        """Record the report every target writes: Markdown, HTML and the plots beside them."""
        self.record_file("report", "report.md")
        self.record_file("report_html", "report.html")
        self.record_dir("report_files", "report_files")

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
        write_bytes(path, (strict_json.dumps(manifest) + "\n").encode("utf-8"))
        return path


#: Marks a bundle folder under construction (``.<name>.<pid>.partial``) beside its final place.
PARTIAL_SUFFIX = ".partial"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(final: Path, leftover: Path) -> int | None:
    """The process id in the name of a staging or aside folder of ``final`` (``.<name>.<pid>.…``)."""
    pid = leftover.name[len(final.name) + 2:].split(".")[0]
    return int(pid) if pid.isdigit() else None


def remove_dead_leftovers(final: Path) -> None:
    """Clean up after runs that were killed (their process is gone).

    Their staging folders are removed. An older bundle a run had moved aside just before moving its
    new one in (a kill between the two renames of :func:`swap_into_place`) is put back at ``final``
    when nothing is there, as the killed run never finished, and removed otherwise.
    """
    for aside in sorted(final.parent.glob(f".{final.name}.*.old.*")):
        pid = _owner_pid(final, aside)
        if pid is None or _pid_alive(pid) or not aside.is_dir():
            continue
        if not final.exists() and (aside / MANIFEST).is_file():
            os.rename(aside, final)
        else:
            shutil.rmtree(aside, ignore_errors=True)
    for stale in final.parent.glob(f".{final.name}.*{PARTIAL_SUFFIX}"):
        pid = _owner_pid(final, stale)
        if pid is not None and not _pid_alive(pid):
            shutil.rmtree(stale, ignore_errors=True)


def _apply_umask(root: Path) -> None:
    """Give every folder and file of ``root`` the mode the umask gives new ones (0o666, or 0o777 for folders and
    executables, less the umask), whoever wrote it: tools that chmod a script 0o755 or copy a file with its mode
    would otherwise leave a bundle that the group sharing a build folder cannot update."""
    mask = current_umask()
    root.chmod(0o777 & ~mask)
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o777 & ~mask)
        elif path.is_file():
            path.chmod((0o777 if path.stat().st_mode & 0o111 else 0o666) & ~mask)


def swap_into_place(staging: Path, final: Path) -> None:
    """Put the finished ``staging`` folder at ``final``; an older bundle there is replaced only now.

    Two renames: the old bundle moves aside, the new one moves in, the old one is deleted. A kill
    between the two renames leaves the old bundle complete under its aside name, never a mix (the
    next run puts it back, see :func:`remove_dead_leftovers`).
    """
    _apply_umask(staging)
    if final.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.old.", dir=final.parent))
        aside.rmdir()
        os.rename(final, aside)
        os.rename(staging, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staging, final)


@contextlib.contextmanager
def staged_bundle(final: Path, target: str) -> Iterator[Bundle]:
    """A :class:`Bundle` built in a sibling folder and swapped in at ``final`` only when the block succeeds.

    Until then an existing bundle at ``final`` stays intact, byte for byte; if the block fails the
    staging folder is removed, so a failed or interrupted run never leaves a bundle that lies.
    """
    if final.exists() and not final.is_dir():
        raise UserError(f"{final} exists and is not a folder: give --out a folder (the bundle goes to "
                        f"--out/<arch>-<target>/)")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=PARTIAL_SUFFIX, dir=final.parent))
    try:
        yield Bundle(staging, target)
        swap_into_place(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
