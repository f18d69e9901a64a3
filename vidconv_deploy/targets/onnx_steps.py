"""The steps every target starts with: the PyTorch model exported as is, the exact rewrite, the deploy
graph, the streaming split, their verification against PyTorch, and the rule check.

Writes ``float_onnx``, ``deploy_onnx`` (the whole clip: standard ops, static shapes, the collage as
one Reshape/Transpose), ``early_onnx`` (one frame) and ``later_onnx`` (one collage: the host
assembles it, so the streaming graphs hold no rearrangement at all) and ``compliance_json``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from vidconv_deploy.check import check_model
from vidconv_deploy.export.deploy_model import DeployViC, to_deploy
from vidconv_deploy.export.onnx_export import (
    DEPLOY_FORBIDDEN, STREAMING_FORBIDDEN, MethodModule, export_graph, relative_error,
)
from vidconv_deploy.export.passes import apply_passes
from vidconv_deploy.runners import GRAPHS, OnnxRuntimeRunner, StreamingSplit
from vidconv_deploy.targets.context import ExportContext, StepRun, StopPipeline
from vidconv_deploy.targets.steps import step


def non_finite_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers holding NaN or infinity (with how many values)."""
    found = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                found.append(f"{name} ({bad} of {tensor.numel()} values)")
    return found


def verification_clip(ctx: ExportContext) -> tuple[torch.Tensor, np.ndarray]:
    """One random clip, seeded so two runs verify on the same input, and the model's logits on it."""
    cfg = ctx.model.cfg
    clip = torch.randn((1, cfg.frames, 3, *cfg.image_size), generator=torch.Generator().manual_seed(ctx.seed))
    with torch.no_grad():
        reference = ctx.model.eval()(clip).numpy()
    return clip, reference


def rewritten(ctx: ExportContext) -> DeployViC:
    """The model rewritten by the target's lowering passes (cheap: rebuilt when a --start-from run needs it)."""
    return apply_passes(to_deploy(ctx.model.eval()), ctx.target.passes())


def register_loaders(ctx: ExportContext) -> None:
    """How each value of these steps is rebuilt when a --start-from run skipped the step that made it."""
    ctx.loader("clip", "export_float", verification_clip)
    ctx.loader("deploy", "rewrite", rewritten)
    ctx.loader("deploy_graph", "export_deploy", lambda c: c.onnx_artifact("deploy_onnx"))

    def streaming(c: ExportContext) -> dict[str, Any] | None:
        graphs = {g: c.onnx_artifact(f"{g}_onnx") for g in GRAPHS}
        return graphs if all(v is not None for v in graphs.values()) else None

    ctx.loader("graphs", "export_streaming", streaming)
    # What check_operators checks: the whole deploy graph here; families that deploy the streaming graphs override it.
    ctx.loader("graphs_to_check", "export_deploy", lambda c: {"deploy": c.value("deploy_graph")})


@step("export_float", "export float graph")
def step_export_float(ctx: ExportContext, run: StepRun) -> None:
    """Refuse non-finite weights (a verdict, naming the tensors), then export the model as is."""
    bad = non_finite_tensors(ctx.model)
    if bad:
        ctx.verdict.record("finite", False, "non-finite weights: " + ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
        raise StopPipeline("the model's weights are not finite")
    clip, reference = ctx.value("clip")
    plain = export_graph(ctx.model, clip, "clip", "logits", reference=reference)
    ctx.bundle.write("float_onnx", "float.onnx", plain.data)
    ctx.bundle.io["float_onnx"] = plain.io()
    verification = ctx.fields.setdefault("verification", {})
    verification.update(tolerance=float(ctx.target.recipe["tolerance"]), input=f"one random clip (seed {ctx.seed})",
                        float_vs_torch=plain.max_relative_error)


@step("rewrite", "rewrite")
def step_rewrite(ctx: ExportContext, run: StepRun) -> None:
    ctx.set("deploy", rewritten(ctx))
    run.record["passes"] = list(ctx.target.recipe.get("passes", []))


@step("export_deploy", "export deploy graph")
def step_export_deploy(ctx: ExportContext, run: StepRun) -> None:
    clip, reference = ctx.value("clip")
    whole = export_graph(ctx.value("deploy"), clip, "clip", "logits", DEPLOY_FORBIDDEN, reference=reference)
    ctx.bundle.write("deploy_onnx", "deploy.onnx", whole.data)
    ctx.bundle.io["deploy_onnx"] = whole.io()
    ctx.set("deploy_graph", whole.model)
    ctx.fields.setdefault("verification", {})["deploy_vs_torch"] = whole.max_relative_error


@step("export_streaming", "export streaming split")
def step_export_streaming(ctx: ExportContext, run: StepRun) -> None:
    deploy: DeployViC = ctx.value("deploy")
    clip, reference = ctx.value("clip")
    example = torch.Generator().manual_seed(ctx.seed + 1)
    early = export_graph(MethodModule(deploy, deploy.early), torch.randn(deploy.frame_shape(), generator=example),
                         "frame", "features", STREAMING_FORBIDDEN)
    later = export_graph(MethodModule(deploy, deploy.later), torch.randn(deploy.collage_shape(), generator=example),
                         "collage", "logits", STREAMING_FORBIDDEN)
    for graph, exported in (("early", early), ("later", later)):
        ctx.bundle.write(f"{graph}_onnx", f"{graph}.onnx", exported.data)
        ctx.bundle.io[f"{graph}_onnx"] = exported.io()
    ctx.set("graphs", {"early": early.model, "later": later.model})
    split = StreamingSplit(ctx.model.cfg.grid, OnnxRuntimeRunner(early.data), OnnxRuntimeRunner(later.data))
    logits = split.run_clip(clip.numpy()).logits
    ctx.fields.setdefault("verification", {})["streaming_vs_torch"] = relative_error(logits, reference)


@step("verify_rewrite", "verify rewrite")
def step_verify_rewrite(ctx: ExportContext, run: StepRun) -> None:
    """The verdicts ``finite`` and ``exact``: every graph within the tolerance of PyTorch, every figure finite.

    A rewrite that is not exact makes everything after it meaningless, so the steps after it do not run.
    """
    verification = ctx.fields["verification"]
    _, reference = ctx.value("clip")
    figures = {k: v for k, v in verification.items() if k.endswith("_vs_torch")}
    not_finite = [k for k, v in figures.items() if not math.isfinite(v)]
    if not np.all(np.isfinite(reference)):
        not_finite.insert(0, "PyTorch logits")
    ctx.verdict.record("finite", not not_finite, f"non-finite outputs: {', '.join(not_finite)}" if not_finite else
                       "every output finite")
    tolerance = verification["tolerance"]
    over = {k: v for k, v in figures.items() if math.isfinite(v) and v > tolerance}
    exact = ctx.verdict.record("exact", not over and not not_finite,
                               f"relative error over {tolerance:g}: " + ", ".join(f"{k} {v:.2e}" for k, v in over.items())
                               if over else f"every graph within {tolerance:g} of PyTorch" if not not_finite
                               else "not measurable: non-finite outputs")
    run.record.update(exact=exact)
    if not exact:
        raise StopPipeline("the rewrite is not exact")


@step("check_operators", "check operators")
def step_check_operators(ctx: ExportContext, run: StepRun) -> None:
    """The verdict ``compliant``: the graphs the target deploys, against its rule set (compliance.json)."""
    rules = ctx.target.ruleset.name
    graphs = ctx.value("graphs_to_check")
    results = {name: check_model(graph, ctx.target.ruleset) for name, graph in graphs.items()}  # its DPU, if any
    compliant = all(r.compliant for r in results.values())
    if len(results) == 1:
        ctx.bundle.write_json("compliance_json", "compliance.json", next(iter(results.values())).to_dict())
    else:
        ctx.bundle.write_json("compliance_json", "compliance.json", {n: r.to_dict() for n, r in results.items()})
    failing = [f"{n}: {len(r.errors)} violations" for n, r in results.items() if not r.compliant]
    ctx.verdict.record("compliant", compliant, f"{rules} rules: " + ("; ".join(failing) + " (compliance.json)"
                                                                      if failing else "every op maps"))
    ctx.fields["compliant"] = compliant
    ctx.set("partition", {n: r.partition for n, r in results.items()})
    run.record.update(rule_set=rules, compliant=compliant)
