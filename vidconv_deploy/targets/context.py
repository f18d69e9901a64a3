"""What the steps of one export share: the target, the options, the model, the bundle, the verdict, and
the intermediate results, each computed once, on demand.

A step asks the context for what it needs (``ctx.value("graphs")``) instead of receiving it from the
step before. That is what makes ``--start-from`` work: when an earlier step ran in a previous run,
the value is rebuilt from that run's bundle (an ONNX file, a manifest field) or recomputed from the
inputs, by the loader registered for it; a value that can be neither says which step to start from.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from vidconv_deploy.errors import UserError
from vidconv_deploy.bundle import Bundle
from vidconv_deploy.progress import Subtask, no_subtask
from vidconv_deploy.verdict import Verdict

if TYPE_CHECKING:
    from vidconv_deploy.targets.registry import Target


class StopPipeline(Exception):
    """Raised by a step whose failed verdict makes the steps after it meaningless (they are recorded as not run)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass
class StepRun:
    """One run of one step: the graph it works on (per-graph steps) and its manifest record."""

    graph: str | None
    record: dict[str, Any]
    #: Rows for the step's own long loops (calibration) under the export bar.
    subtask: Subtask = no_subtask

    def not_run(self, reason: str, **facts: Any) -> None:
        """Mark this step as not run here (a tool is missing), with why and what to run instead."""
        self.record.update(status="not run", reason=reason, **facts)


#: Rebuilds a value from a finished bundle or recomputes it (for --start-from); None when it cannot.
Loader = Callable[["ExportContext"], Any]


@dataclasses.dataclass
class ExportContext:
    """The shared state of one export (see the module docstring)."""

    target: Target
    options: argparse.Namespace
    bundle: Bundle
    model: Any
    weights: dict[str, Any]
    verdict: Verdict = dataclasses.field(default_factory=Verdict)
    #: Manifest fields beyond the bundle's own (model, verification, calibration, ...).
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The manifest of the bundle a ``--start-from`` run continues (empty otherwise).
    previous: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    #: Closed when the export ends: temporary folders, tool sessions (e.g. finn-plus's log capture).
    resources: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)
    _values: dict[str, Any] = dataclasses.field(default_factory=dict)
    _loaders: dict[str, tuple[str, Loader]] = dataclasses.field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return self.bundle.directory

    def set(self, name: str, value: Any) -> Any:
        """Keep an intermediate result for the steps after this one."""
        self._values[name] = value
        return value

    def loader(self, name: str, producer: str, load: Loader) -> None:
        """Register how ``name`` (made by step ``producer``) is rebuilt when that step did not run in this process."""
        self._loaders[name] = (producer, load)

    def value(self, name: str) -> Any:
        """An intermediate result: kept from this run, else rebuilt by its loader, else an error naming the step."""
        if name not in self._values:
            if name not in self._loaders:
                raise UserError(f"{name} is made by an earlier step and cannot be rebuilt from the bundle: "
                                f"--start-from an earlier step")
            producer, load = self._loaders[name]
            loaded = load(self)
            if loaded is None:
                raise UserError(f"{name} is made by step {producer} and cannot be rebuilt from the bundle: "
                                f"--start-from {producer} or an earlier step")
            self._values[name] = loaded
        return self._values[name]

    def has(self, name: str) -> bool:
        return name in self._values

    def workdir(self) -> Path:
        """A scratch folder outside the bundle for intermediates no artifact keeps, removed when the export ends."""
        if "workdir" not in self._values:
            self._values["workdir"] = Path(self.resources.enter_context(tempfile.TemporaryDirectory(prefix="vidconv-")))
        return self._values["workdir"]

    def onnx_artifact(self, role: str) -> onnx.ModelProto | None:
        """An ONNX artifact of this bundle (written this run or carried over by --start-from), or None."""
        art = self.bundle.artifacts.get(role)
        path = self.directory / art["file"] if art and "file" in art else None
        return onnx.load(str(path)) if path is not None and path.is_file() else None

    def manifest_fields(self) -> dict[str, Any]:
        """The manifest's fields beyond the bundle's own (artifacts, io, steps, tools)."""
        return {"model": {"arch": self.model.cfg.arch, "config": self.model.cfg.to_dict(), "weights": self.weights},
                "recipe": self.target.to_dict(), **self.fields, "verdict": self.verdict.to_dict()}

    def previous_field(self, name: str) -> Any:
        """A manifest field of the bundle a --start-from run continues (None when absent)."""
        return self.previous.get(name)
