"""The FINN steps: Brevitas FINN model -> QONNX -> finn-plus streamlining -> HW layers -> the bit-exact chain ->
dataflow partition, specialization and folding -> estimates -> report, and the ``finn build`` step.

Writes, per graph (``early``: one frame; ``later``: one collage): ``qonnx_<graph>``,
``finn_streamlined_<graph>`` (integer FINN-ONNX, the host's input quantizer and output scale peeled
off), ``finn_dataflow_<graph>`` (HW layers specialized for the board's part and folded),
``folding_config_<graph>``; and once ``finn_report``, ``finn_log``, ``finn_build/`` and the models
``vidconv-eval`` scores. Verdicts: ``mapped`` (every node became a HW layer), ``bit_exact`` (the
chain), ``fits`` (the board's budget; ``--allow-unfit`` accepts a design that does not fit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vidconv_deploy.checkpoints import load_model, save_checkpoint
from vidconv_deploy.finn import finn_env
from vidconv_deploy.finn.boards import get_board
from vidconv_deploy.finn.checkpoint import load_finn_checkpoint, save_finn_checkpoint
from vidconv_deploy.finn.document import finn_document
from vidconv_deploy.finn.layer_error import quantizer_sqnr
from vidconv_deploy.finn.pipeline import export_qonnx, prepare_model, run_build, tensor_io, write_build
from vidconv_deploy.finn.report import finn_report
from vidconv_deploy.runners import GRAPHS
from vidconv_deploy.targets.context import ExportContext, StepRun
from vidconv_deploy.targets.steps import step


def _session(ctx: ExportContext) -> None:
    """finn-plus's quiet session (its prints kept for finn_log.txt), entered once for the whole export."""
    if not ctx.has("finn_log"):
        ctx.set("finn_log", ctx.resources.enter_context(finn_env.finn_session()))


def _flow() -> Any:
    from vidconv_deploy.finn import flow  # imports finn-plus: only FINN exports pay for it

    return flow


def _bundle_wrapper(ctx: ExportContext, role: str) -> Any:
    from qonnx.core.modelwrapper import ModelWrapper

    art = ctx.bundle.artifacts.get(role)
    path = ctx.directory / art["file"] if art else None
    return ModelWrapper(str(path)) if path is not None and path.is_file() else None


def _optional_file(path: Path, load: Any) -> Any:
    return load(path) if path.is_file() else None


def _previous_report(ctx: ExportContext) -> dict[str, Any]:
    """The finn_report.json of the bundle a --start-from run continues (empty when there is none)."""
    path = ctx.directory / "finn_report.json"
    return json.loads(path.read_text(encoding="utf-8")) if ctx.previous and path.is_file() else {}


def register_loaders(ctx: ExportContext) -> None:
    """How the FINN steps' values are rebuilt for a --start-from run (from the bundle's files, or recomputed)."""
    ctx.loader("finn_model", "finn_model", lambda c: _optional_file(c.directory / "finn_model.safetensors",
                                                                    load_finn_checkpoint))
    ctx.loader("float_model", "finn_model", lambda c: _optional_file(
        c.directory / "float_model.safetensors", lambda p: load_model(p)[0].eval()) or False)
    ctx.loader("finn_clips", "finn_model", lambda c: [torch.from_numpy(x)[None] for x in c.value("calibration")["clips"]])
    ctx.loader("facts", "finn_model", lambda c: {k: v for k, v in _previous_report(c).get("model", {}).items()
                                                 if k != "arch"} or None)
    for graph in GRAPHS:
        ctx.loader(f"qonnx_{graph}", "export_qonnx", lambda c, g=graph: _bundle_wrapper(c, f"qonnx_{g}"))
        ctx.loader(f"streamlined_{graph}", "streamline", lambda c, g=graph: _bundle_wrapper(c, f"finn_streamlined_{g}"))
        ctx.loader(f"hw_{graph}", "convert_to_hw", lambda c, g=graph: _flow().convert_to_hw(c.value(f"streamlined_{g}")))
        ctx.loader(f"unmapped_{graph}", "convert_to_hw", lambda c, g=graph: _flow().unmapped_nodes(c.value(f"hw_{g}")))
        ctx.loader(f"notes_{graph}", "dataflow", lambda c, g=graph: _previous_report(c).get("folding", {})
                   .get("notes", {}).get(g))
        ctx.loader(f"estimate_{graph}", "estimate", lambda c, g=graph: _previous_report(c).get("graphs", {}).get(g))
    # The rule check reads what FINN reads: the QONNX export of each graph.
    ctx.loader("graphs_to_check", "export_qonnx", lambda c: {g: c.value(f"qonnx_{g}").model for g in GRAPHS})
    ctx.loader("chain", "verify_chain", lambda c: _previous_report(c).get("chain"))
    ctx.loader("layer_sqnr", "layer_error", lambda c: _previous_report(c).get("layer_sqnr"))
    ctx.loader("finn_report", "finn_report", lambda c: _previous_report(c) or None)


def _mapped(ctx: ExportContext) -> tuple[bool, str]:
    unmapped = [f"{g}/{n['node']} ({n['op_type']})" for g in GRAPHS for n in ctx.value(f"unmapped_{g}")]
    return not unmapped, "unmapped nodes: " + ", ".join(unmapped)


def _needs_hw_layers(ctx: ExportContext, run: StepRun) -> bool:
    """Steps past HW conversion run only when every node mapped; otherwise they say which nodes stopped them."""
    mapped, detail = _mapped(ctx)
    if not mapped:
        run.not_run(detail)
    else:
        _session(ctx)
    return mapped


@step("finn_model", "FINN model")
def step_finn_model(ctx: ExportContext, run: StepRun) -> None:
    """The FINN variant at --bits, calibrated (or a QAT-trained FINN checkpoint as is); both models into the bundle."""
    _session(ctx)
    clips = [torch.from_numpy(c) for c in ctx.value("calibration")["clips"]]
    finn_model, float_model, clips, facts = prepare_model(ctx.model, ctx.options.bits, clips, ctx.seed)
    float_model = float_model or ctx.value("teacher")
    ctx.set("finn_model", finn_model), ctx.set("float_model", float_model or False)
    ctx.set("finn_clips", clips), ctx.set("facts", facts)
    run.record.update(bits=ctx.options.bits, **facts)
    # Both models in the bundle: vidconv-eval scores them (the FINN one is bit-exact with the accelerator).
    save_finn_checkpoint(finn_model, ctx.directory / "finn_model.safetensors")
    ctx.bundle.record_file("finn_checkpoint", "finn_model.safetensors")
    if float_model is not None:
        save_checkpoint(float_model, ctx.directory / "float_model.safetensors")
        ctx.bundle.record_file("float_checkpoint", "float_model.safetensors")


@step("export_qonnx", "export QONNX", per_graph=True)
def step_export_qonnx(ctx: ExportContext, run: StepRun) -> None:
    _session(ctx)
    graph = run.graph
    qonnx = export_qonnx(ctx.value("finn_model"), graph, ctx.workdir())
    ctx.bundle.write_onnx(f"qonnx_{graph}", f"qonnx_{graph}.onnx", qonnx.model)
    ctx.set(f"qonnx_{graph}", qonnx)


@step("streamline", "streamline", per_graph=True)
def step_streamline(ctx: ExportContext, run: StepRun) -> None:
    _session(ctx)
    flow, graph = _flow(), run.graph
    streamlined, host = flow.streamline(flow.to_finn(ctx.value(f"qonnx_{graph}")))
    ctx.bundle.write_onnx(f"finn_streamlined_{graph}", f"finn_streamlined_{graph}.onnx", streamlined.model)
    ctx.bundle.io[f"finn_streamlined_{graph}"] = {**tensor_io(streamlined), "host": host.to_dict()}
    ctx.set(f"streamlined_{graph}", streamlined)


@step("convert_to_hw", "convert to HW layers", per_graph=True)
def step_convert_to_hw(ctx: ExportContext, run: StepRun) -> None:
    """HW layers; the verdict ``mapped`` once both graphs are converted (a node left over names itself)."""
    _session(ctx)
    flow, graph = _flow(), run.graph
    hw = ctx.set(f"hw_{graph}", flow.convert_to_hw(ctx.value(f"streamlined_{graph}")))
    unmapped = ctx.set(f"unmapped_{graph}", flow.unmapped_nodes(hw))
    run.record["unmapped_nodes"] = len(unmapped)
    if graph == GRAPHS[-1]:
        mapped, detail = _mapped(ctx)
        ctx.verdict.record("mapped", mapped, detail if not mapped else "every node is a HW layer")


@step("verify_chain", "verify bit-exact chain")
def step_verify_chain(ctx: ExportContext, run: StepRun) -> None:
    """The verdict ``bit_exact``: Brevitas (float64) = FINN streamlined = FINN HW on real clips, QONNX within 1 LSB."""
    if not _needs_hw_layers(ctx, run):
        ctx.set("chain", {"bit_exact": False, "reason": "not run: unmapped nodes"})
        return
    from vidconv_deploy.finn.chain import GraphForms, verify_chain

    forms = {g: GraphForms(ctx.value(f"qonnx_{g}"), ctx.value(f"streamlined_{g}"), ctx.value(f"hw_{g}")) for g in GRAPHS}
    clips = ctx.value("finn_clips")[: int(ctx.target.recipe.get("chain_clips", 2))]
    chain = ctx.set("chain", verify_chain(ctx.value("finn_model"), forms["early"], forms["later"], clips))
    ctx.fields["finn_chain"] = {"bit_exact": chain["bit_exact"], "clips": chain["clips"]}
    run.record.update(bit_exact=chain["bit_exact"], clips=chain["clips"])
    ctx.verdict.record("bit_exact", chain["bit_exact"], "Brevitas = FINN streamlined = FINN HW" if chain["bit_exact"]
                       else "the FINN graphs differ from Brevitas (finn_report.json chain)")


@step("dataflow", "dataflow", per_graph=True)
def step_dataflow(ctx: ExportContext, run: StepRun) -> None:
    """Dataflow partition, SpecializeLayers for the board's part, folding to --fps (URAM where the part has it)."""
    if not _needs_hw_layers(ctx, run):
        return
    flow, graph = _flow(), run.graph
    board, fps = get_board(ctx.target.board["name"]), ctx.options.fps
    frames = ctx.model.cfg.frames if graph == "early" else 1
    cycles = flow.target_cycles(None if fps is None else fps * frames)
    dataflow = flow.specialize_and_fold(ctx.value(f"hw_{graph}"), board.part, cycles, ctx.workdir() / f"df_{graph}",
                                        flow.URAM_MIN_BRAM if board.budget["URAM"] else None)
    ctx.set(f"notes_{graph}", dataflow.notes)
    ctx.set(f"dataflow_{graph}", dataflow.model)
    run.record.update(part=board.part, target_cycles=cycles)
    ctx.bundle.write_onnx(f"finn_dataflow_{graph}", f"finn_dataflow_{graph}.onnx", dataflow.model.model)
    ctx.bundle.write_json(f"folding_config_{graph}", f"folding_config_{graph}.json", dataflow.folding)
    ctx.bundle.io[f"finn_dataflow_{graph}"] = tensor_io(dataflow.model)


@step("estimate", "estimate", per_graph=True)
def step_estimate(ctx: ExportContext, run: StepRun) -> None:
    if not _needs_hw_layers(ctx, run):
        return
    board = get_board(ctx.target.board["name"])
    ctx.set(f"estimate_{run.graph}", _flow().estimate(ctx.value(f"dataflow_{run.graph}"), board.part))


@step("layer_error", "per-layer error")
def step_layer_error(ctx: ExportContext, run: StepRun) -> None:
    clips = ctx.value("finn_clips")[: int(ctx.target.recipe.get("chain_clips", 2))]
    ctx.set("layer_sqnr", {"clips": len(clips), "quantizers": quantizer_sqnr(ctx.value("finn_model"), clips)})


@step("finn_report", "FINN report")
def step_finn_report(ctx: ExportContext, run: StepRun) -> None:
    """finn_report.json and finn_log.txt; the verdict ``fits`` (accepted with --allow-unfit)."""
    flow, board = _flow(), get_board(ctx.target.board["name"])
    mapped, _ = _mapped(ctx)
    streamlined_io = {g: ctx.bundle.io.get(f"finn_streamlined_{g}", {}).get("host") for g in GRAPHS}
    fps = ctx.options.fps
    report = finn_report(board, ctx.options.bits, ctx.model.cfg.frames, flow.CLK_NS,
                         {g: ctx.value(f"unmapped_{g}") for g in GRAPHS},
                         {g: ctx.value(f"estimate_{g}") for g in GRAPHS} if mapped else None, {
        "host": streamlined_io,
        "chain": ctx.value("chain"),
        "layer_sqnr": ctx.value("layer_sqnr"),
        "folding": {"target_fps": fps, "policy": "SetFolding to the target" if fps else
                    "no --fps: every layer fully folded (PE = SIMD = 1), the smallest design",
                    "notes": {g: ctx.value(f"notes_{g}") for g in GRAPHS}},
        "model": {"arch": ctx.model.cfg.arch, **ctx.value("facts")},
        "workarounds": list(finn_env.WORKAROUNDS),
        "tools": finn_env.versions(),
    })
    ctx.set("finn_report", report)
    ctx.bundle.write_json("finn_report", "finn_report.json", report)
    if ctx.has("finn_log"):  # a --start-from run that ran no finn-plus step keeps the log it carried over
        ctx.bundle.write("finn_log", "finn_log.txt", ctx.value("finn_log").getvalue())
    if mapped:
        used = ", ".join(f"{k} {v:.0%}" for k, v in report["utilization"].items() if v is not None)
        ctx.verdict.record("fits", report["fits"], f"{board.name}: {used}", accepted=ctx.options.allow_unfit)


@step("finn_build", "finn build")
def step_finn_build(ctx: ExportContext, run: StepRun) -> None:
    """``finn build`` (stitched IP, bitfile, driver) where Vivado is; otherwise its configs and scripts, not run."""
    board = get_board(ctx.target.board["name"])
    if not _needs_hw_layers(ctx, run):
        build = {"built": False, "reason": "unmapped nodes"}
    else:
        script = write_build(ctx.bundle, board, _flow().CLK_NS)
        build = run_build(script, board, run.record)
        if run.record["status"] == "failed":
            ctx.verdict.record("built", False, build["reason"])
    ctx.fields["finn"] = {"board": board.name, "bits": ctx.options.bits,
                          "bitfile": build.get("outputs") or f"not built: {build['reason']}"}


@step("finn_document", "report")
def step_finn_document(ctx: ExportContext, run: StepRun) -> None:
    finn_document(ctx.bundle, ctx.value("finn_report"), {"arch": ctx.model.cfg.arch, "weights": ctx.weights["source"],
                                                        "verdict": ctx.verdict.to_dict()},
                  ctx.fields.get("accuracy"))
    ctx.bundle.record_report()
