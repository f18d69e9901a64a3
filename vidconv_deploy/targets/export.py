"""One export, for every target: a staged bundle, the target's steps, one verdict, the manifest.

This is the library call behind ``vidconv-export`` (and the benchmarks): it builds the bundle in a
sibling folder and swaps it in only when complete, so an existing bundle stays intact until then
and a failed or interrupted run leaves nothing that lies. A verdict that fails still gives a
complete bundle (its manifest says which verdict and why); bad input or a tool error gives none.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path
from typing import Any

from vidconv_deploy.errors import UserError
from vidconv_deploy.bundle import MANIFEST, Bundle, read_manifest, staged_bundle
from vidconv_deploy.targets import dpu_steps, evaluate_step, finn_steps, onnx_steps, vaiep_steps  # noqa: F401 (registers steps)
from vidconv_deploy.targets.context import ExportContext
from vidconv_deploy.targets.registry import Target
from vidconv_deploy.targets.steps import Observer, check_step_range, run_steps
from vidconv_deploy.verdict import Check, Verdict

#: Where each family's steps rebuild their values from a finished bundle (--start-from).
LOADERS = {"onnx": [onnx_steps.register_loaders], "dpu": [onnx_steps.register_loaders, dpu_steps.register_loaders],
           "finn": [onnx_steps.register_loaders, finn_steps.register_loaders],
           "vaiep": [onnx_steps.register_loaders, vaiep_steps.register_loaders]}


#: What to do when --start-from finds no finished bundle.
START_FROM_FIX = "--start-from needs a finished bundle there: run the export once without --start-from"


@dataclasses.dataclass
class Outcome:
    """What an export left: the bundle folder, the verdict, and the context (for a summary)."""

    directory: Path
    verdict: Verdict
    context: ExportContext


def bundle_dir(out: Path, arch: str, target: Target) -> Path:
    """Where a bundle goes inside ``--out``: one folder per model and target, and per DPU when one was named
    (``--dpu-arch B3136`` exports go to ``...-dpu-kv260-b3136``, beside the board default's bundle)."""
    dpu = f"-{target.ruleset.data['arch']['size'].lower()}" if target.dpu is not None else ""
    return out / f"{arch}-{target.name}{dpu}"


def check_same_dpu(previous: dict[str, Any], target: Target, final: Path) -> None:
    """A --start-from run continues a bundle only for the DPU it was exported for (its rules, split, golden)."""
    before = previous.get("recipe", {}).get("dpu", {}).get("fingerprint")
    now = target.ruleset.data.get("arch", {}).get("fingerprint") if target.family == "dpu" else None
    if before != now:
        raise UserError(f"--start-from: {final} was exported for DPU fingerprint {before}, not {now}: give the same "
                        f"--dpu-arch/--fingerprint/--arch-json, or export afresh without --start-from")


def carry_over(bundle: Bundle, final: Path, previous: dict[str, Any], steps_before: list[str], verdict: Verdict) -> None:
    """Start a staged bundle from a finished one: its files, and the records of the steps before --start-from."""
    for path in final.iterdir():
        if path.name != MANIFEST:
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, bundle.directory / path.name)
    bundle.artifacts.update(previous.get("artifacts", {}))
    bundle.io.update(previous.get("io", {}))
    bundle.steps.extend(s for s in previous.get("steps", []) if s["name"] in steps_before)
    for name, check in previous.get("verdict", {}).get("checks", {}).items():
        if check.get("step") in steps_before:
            verdict.checks[name] = Check(check["holds"], check.get("detail", ""), check.get("accepted", False),
                                         check["step"])


def export_bundle(target: Target, model: Any, weights: dict[str, Any], options: argparse.Namespace, out: Path,
                  values: dict[str, Any] | None = None, seed: int = 0, observer: Observer | None = None) -> Outcome:
    """Run ``target``'s steps on ``model`` into ``out/<arch>-<target>`` (see the module docstring).

    ``options``: the parsed command-line options (``start_from``, ``stop_after`` and the family's).
    ``values``: inputs the steps read (``calibration``: clips, source, skips; ``class_names``; ``teacher``).
    ``observer``: wraps every step that runs (e.g. to measure its memory).
    """
    steps = target.steps()
    start_from, stop_after = getattr(options, "start_from", None), getattr(options, "stop_after", None)
    check_step_range(steps, start_from, stop_after)
    final = bundle_dir(out, model.cfg.arch, target)
    previous = read_manifest(final, START_FROM_FIX) if start_from else {}
    if previous and (previous.get("target") != target.name or previous.get("model", {}).get("config") != model.cfg.to_dict()):
        raise UserError(f"--start-from: {final} was exported for {previous.get('target')} with another model config: "
                        f"give the same --target and model flags, or export afresh without --start-from")
    if previous:
        check_same_dpu(previous, target, final)
    with staged_bundle(final, target.name) as bundle:
        ctx = ExportContext(target, options, bundle, model, weights, previous=previous, seed=seed)
        if previous:
            before = [t for s in steps[: [s.name for s in steps].index(start_from)] for t, _ in s.titles()]
            carry_over(bundle, final, previous, before, ctx.verdict)
            ctx.fields.update({k: v for k, v in previous.items() if k not in (
                "tool", "created", "target", "artifacts", "io", "steps", "tools", "model", "recipe", "verdict")})
        for register in LOADERS[target.family]:
            register(ctx)
        for name, value in (values or {}).items():
            ctx.set(name, value)
        if ctx.has("calibration"):
            calibration = ctx.value("calibration")
            skips = calibration.get("skips")
            ctx.fields["calibration"] = {"source": calibration["source"], **({"skipped": skips.to_dict()} if skips else {})}
        with ctx.resources:
            run_steps(ctx, steps, start_from, stop_after, observer)
        bundle.finish(**ctx.manifest_fields())
    return Outcome(final, ctx.verdict, ctx)
