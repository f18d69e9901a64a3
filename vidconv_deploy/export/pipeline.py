"""The ONNX export pipeline: plain export, exact rewrite, streaming split, verification, compliance.

Writes into a :class:`Bundle`: ``float_onnx`` (the PyTorch model exported as is), ``deploy_onnx``
(the rewritten whole-clip graph: standard ops, static shapes, collage as Reshape/Transpose),
``early_onnx`` (one frame) and ``later_onnx`` (one collage) for streaming, where the host
assembles the collage and the graphs hold no rearrangement at all, and ``compliance_json``.
Each graph is checked against the PyTorch model with ONNX Runtime (relative error <= 1e-5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from vidconv_deploy.check import check_model
from vidconv_deploy.export.bundle import Bundle
from vidconv_deploy.export.deploy_model import DeployViC, to_deploy
from vidconv_deploy.export.onnx_export import SHAPE_OPS, ExportedGraph, MethodModule, export_graph, relative_error, run_onnx
from vidconv_deploy.export.passes import STANDARD_PASSES, Pass, apply_passes
from vidconv_deploy.models.collage import frames_to_collage
from vidconv_deploy.models.vidconv import VidConv

#: The rewrite must match PyTorch to this relative error (max |diff| / max |reference|).
REWRITE_TOLERANCE = 1e-5
#: Ops the whole-clip deploy graph must not contain; the streaming graphs also lose the rearrangement.
DEPLOY_FORBIDDEN = SHAPE_OPS | {"Tile"}
STREAMING_FORBIDDEN = DEPLOY_FORBIDDEN | {"Transpose", "Reshape"}


def streaming_logits(early: ExportedGraph, later: ExportedGraph, clip: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Run the streaming split as a host would: early graph per frame, collage on the host, later graph."""
    features = [run_onnx(early.model, {early.input_name: clip[:, t]})[0] for t in range(clip.shape[1])]
    collage = frames_to_collage(torch.from_numpy(np.concatenate(features)), grid).numpy()
    return run_onnx(later.model, {later.input_name: collage})[0]


@dataclasses.dataclass
class ExportedViC:
    """The graphs of one export and how closely each matches PyTorch."""

    deploy: DeployViC
    whole: ExportedGraph
    early: ExportedGraph
    later: ExportedGraph
    verification: dict[str, Any]


def export_graphs(model: VidConv, bundle: Bundle, passes: Sequence[Pass], seed: int, advance: Callable[[str], None]) -> ExportedViC:
    """Write ``float_onnx``, ``deploy_onnx``, ``early_onnx`` and ``later_onnx``; fail if any is not exact.

    Exact means relative error <= :data:`REWRITE_TOLERANCE` against ``model`` in PyTorch on one random
    clip; the streaming split is run as a host runs it (early graph per frame, host collage).
    """
    model.eval()
    cfg = model.cfg
    clip = torch.randn((1, cfg.frames, 3, *cfg.image_size), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = model(clip).numpy()
    verification: dict[str, Any] = {"tolerance": REWRITE_TOLERANCE, "input": f"one random clip (seed {seed})"}
    with bundle.step("export float graph"):
        plain = export_graph(model, clip, "clip", "logits", reference=reference)
        bundle.write_onnx("float_onnx", "float.onnx", plain.model)
        bundle.io["float_onnx"] = plain.io()
    advance("rewriting")
    with bundle.step("rewrite") as record:
        deploy: DeployViC = apply_passes(to_deploy(model), passes)
        record["passes"] = [p.name for p in passes]
    with bundle.step("export deploy graph"):
        whole = export_graph(deploy, clip, "clip", "logits", DEPLOY_FORBIDDEN, reference=reference)
        bundle.write_onnx("deploy_onnx", "deploy.onnx", whole.model)
        bundle.io["deploy_onnx"] = whole.io()
        verification["deploy_vs_torch"] = whole.max_relative_error
    advance("exporting the streaming split")
    with bundle.step("export streaming split"):
        early = export_graph(MethodModule(deploy, deploy.early), torch.randn(deploy.frame_shape()), "frame", "features",
                             STREAMING_FORBIDDEN)
        later = export_graph(MethodModule(deploy, deploy.later), torch.randn(deploy.collage_shape()), "collage", "logits",
                             STREAMING_FORBIDDEN)
        bundle.write_onnx("early_onnx", "early.onnx", early.model)
        bundle.write_onnx("later_onnx", "later.onnx", later.model)
        bundle.io["early_onnx"], bundle.io["later_onnx"] = early.io(), later.io()
        verification["streaming_vs_torch"] = relative_error(streaming_logits(early, later, clip.numpy(), cfg.grid), reference)
    verification["float_vs_torch"] = plain.max_relative_error
    failed = {k: v for k, v in verification.items() if k.endswith("_vs_torch") and v > REWRITE_TOLERANCE}
    if failed:
        raise RuntimeError(f"rewrite exceeds relative error {REWRITE_TOLERANCE}: {failed}")
    return ExportedViC(deploy, whole, early, later, verification)


def stderr_progress() -> Progress:
    """A transient progress display on stderr, so stdout stays clean for JSON."""
    return Progress(console=Console(stderr=True), transient=True)


def export_onnx_bundle(
    model: VidConv,
    bundle: Bundle,
    passes: Sequence[Pass] = STANDARD_PASSES,
    rule_set: str = "onnx",
    seed: int = 0,
) -> tuple[dict[str, Any], bool]:
    """Export ``model`` into ``bundle``; return the verification figures and whether the deploy graph complies."""
    with stderr_progress() as progress:
        task = progress.add_task("exporting", total=4)

        def advance(what: str) -> None:
            progress.update(task, advance=1, description=what)

        exported = export_graphs(model, bundle, passes, seed, advance)
        advance("checking operators")
        with bundle.step("check operators") as record:
            result = check_model(exported.whole.model, rule_set)
            bundle.write_json("compliance_json", "compliance.json", result.to_dict())
            record["rule_set"], record["compliant"] = rule_set, result.compliant
        advance("done")
    return exported.verification, result.compliant


def bundle_dir(out: Path, arch: str, target: str) -> Path:
    """Where a bundle goes inside ``--out``: one folder per model and target."""
    return out / f"{arch}-{target}"
