"""Pipelines as lists of named steps, run by one runner (as FINN's ``build_dataflow`` runs its ``step_*``).

A step is a function ``step(ctx, run)`` registered under a name that recipes list
(``export/*.yaml``). The runner times every step into the bundle's manifest, records each step that
did not run and why (a missing tool, a failed verdict before it, ``--stop-after``), drives one
progress bar from the list (steps per graph count once per graph), and can continue a finished
bundle from a step (``--start-from``: the records of the steps before it are kept).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, ContextManager

from vidconv_deploy.errors import UserError
from vidconv_deploy.progress import progress_bar, subtasks
from vidconv_deploy.runners import GRAPHS
from vidconv_deploy.targets.context import ExportContext, StepRun, StopPipeline



@dataclasses.dataclass(frozen=True)
class Step:
    """One named step; ``title`` is its name in the manifest (``"<title> <graph>"`` for per-graph steps)."""

    name: str
    title: str
    run: Callable[[ExportContext, StepRun], None]
    per_graph: bool = False

    def titles(self) -> list[tuple[str, str | None]]:
        """(manifest name, graph) of each run of this step."""
        return [(f"{self.title} {g}", g) for g in GRAPHS] if self.per_graph else [(self.title, None)]


REGISTRY: dict[str, Step] = {}


def step(name: str, title: str, per_graph: bool = False) -> Callable[[Callable[[ExportContext, StepRun], None]], Step]:
    """Register a step function under ``name`` (what recipes list)."""

    def register(fn: Callable[[ExportContext, StepRun], None]) -> Step:
        if name in REGISTRY:
            raise ValueError(f"step {name!r} is registered twice")
        REGISTRY[name] = Step(name, title, fn, per_graph)
        return REGISTRY[name]

    return register


def resolve_steps(names: Sequence[str], where: str) -> list[Step]:
    """The registered steps a recipe lists; an unknown name is a one-line error naming the recipe."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UserError(f"{where} lists unknown step(s) {', '.join(unknown)}: use steps from "
                        f"{', '.join(sorted(REGISTRY))}")
    return [REGISTRY[n] for n in names]


def check_step_range(steps: Sequence[Step], start_from: str | None, stop_after: str | None) -> None:
    """``--start-from`` and ``--stop-after`` name steps of this target, the first not after the second."""
    names = [s.name for s in steps]
    for flag, name in (("--start-from", start_from), ("--stop-after", stop_after)):
        if name is not None and name not in names:
            raise UserError(f"{flag} {name}: not a step of this target; its steps are {', '.join(names)}")
    if start_from and stop_after and names.index(stop_after) < names.index(start_from):
        raise UserError(f"--stop-after {stop_after} comes before --start-from {start_from}: swap them")


#: Wraps each step that runs and may add figures to its record (bench/ measures peak memory per step with it).
Observer = Callable[[dict[str, Any]], ContextManager[None]]


def run_steps(ctx: ExportContext, steps: Sequence[Step], start_from: str | None = None,
              stop_after: str | None = None, observer: Observer | None = None) -> None:
    """Run ``steps`` on ``ctx`` in order, recording each in ``ctx.bundle.steps`` (see the module docstring)."""
    observe = observer or (lambda record: contextlib.nullcontext())
    names = [s.name for s in steps]
    first = names.index(start_from) if start_from else 0
    last = names.index(stop_after) if stop_after else len(steps) - 1
    runs = [(s, title, graph) for s in steps[first:] for title, graph in s.titles()]
    stopped: str | None = None
    with progress_bar() as progress:
        task = progress.add_task("export", total=sum(1 for s, _, _ in runs if names.index(s.name) <= last), info="")
        for s, title, graph in runs:
            if names.index(s.name) > last:
                ctx.bundle.not_run(title, f"--stop-after {stop_after}")
                continue
            if stopped is not None:
                ctx.bundle.not_run(title, stopped)
                progress.advance(task)
                continue
            progress.update(task, description=title)
            ctx.verdict.current_step = title
            record = {"name": title, "status": "ran"}
            start = time.perf_counter()
            try:
                with observe(record):
                    s.run(ctx, StepRun(graph, record, subtasks(progress)))
            except StopPipeline as stop:
                record.update(status="failed", reason=stop.reason)
                stopped = stop.reason
            if record["status"] != "not run":
                record["seconds"] = round(time.perf_counter() - start, 3)
            ctx.bundle.steps.append(record)
            progress.advance(task)
