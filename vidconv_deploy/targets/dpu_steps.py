"""The DPU steps after the shared ones: INT8 of both streaming graphs, the integer reference, golden vectors,
the Vitis AI compile step, the board dir, accuracy and the report.

The DPU runs the streaming split as two xmodels: the early net once per new frame and the later
net on the collage the host assembles from the last L early outputs (a pure int8 rearrangement, so
the host adds no arithmetic). Both graphs are quantized with vai_q_pytorch's arithmetic; the later
graph's input is pinned to the early graph's output fix position so the int8 features pass through
unchanged. The integer reference must equal ONNX Runtime's fake-quant run bit for bit (ORT
rounding; the verdict ``bit_exact``) and reports where the DPU's rounding gives other codes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import onnx

from vidconv_deploy.atomic import write_bytes
from vidconv_deploy.dpu import prepare_compile, run_compile, write_board_dir, write_clip_golden
from vidconv_deploy.dpu.board_dir import io_fix_points
from vidconv_deploy.dpu.compile import COMPILE_DIR, STEP as COMPILE_STEP
from vidconv_deploy.dpu.report import DpuExport, dpu_report
from vidconv_deploy.dpu.perf_model import save_layer_chart, streaming_performance
from vidconv_deploy.dpu.throughput import peak_throughput
from vidconv_deploy.evaluate.sensitivity import advice, labelled_clips, save_sensitivity_plot, sensitivity
from vidconv_deploy.parallel import core_pool
from vidconv_deploy.quant import quantize_onnx, write_quant_info
from vidconv_deploy.quant.qat_dpu import checkpoint_fix_points
from vidconv_deploy.quant.qdq import QuantResult
from vidconv_deploy.quark.artifacts import ARTIFACT as CROSSCHECK_ARTIFACT, DIRECTORY as CROSSCHECK_DIR
from vidconv_deploy.quark.crosscheck import crosscheck_graphs
from vidconv_deploy.quark.env import INSTALL_FIX as QUARK_INSTALL_FIX, VERSION as QUARK_VERSION, quark_version
from vidconv_deploy.quark.env import versions as quark_versions
from vidconv_deploy.reference import integer_checks, layer_report, save_sqnr_plot
from vidconv_deploy.runners import GRAPHS, OnnxRuntimeRunner, StreamingSplit
from vidconv_deploy.targets.context import ExportContext, StepRun
from vidconv_deploy.targets.families import quant_recovery
from vidconv_deploy.targets.steps import step


def _feeds(ctx: ExportContext) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Float feeds of both graphs over the calibration set: every frame, and each clip's host collage (the
    frames on the core pool, each on a single-threaded session)."""
    graphs = ctx.value("graphs")
    with core_pool() as pool:
        split = StreamingSplit(ctx.model.cfg.grid, OnnxRuntimeRunner(graphs["early"], threads=pool.engine_threads),
                               OnnxRuntimeRunner(graphs["later"], threads=pool.engine_threads))
        return split.feeds(ctx.value("calibration")["clips"], pool.map)


def _check_feeds(ctx: ExportContext) -> dict[str, list[dict[str, np.ndarray]]]:
    """The feeds the reference checks compare: the first clips of the calibration set."""
    frames, collages = ctx.value("feeds")
    clips = int(ctx.target.quantizer.get("check_clips", 2))
    return {"early": frames[: clips * ctx.model.cfg.frames], "later": collages[:clips]}


def _quant_from_bundle(ctx: ExportContext) -> dict[str, QuantResult] | None:
    quant = {}
    for graph in GRAPHS:
        model, info = ctx.directory / "quant" / f"{graph}.onnx", ctx.directory / "quant" / f"{graph}_quant_info.json"
        if not (model.is_file() and info.is_file()):
            return None
        quant[graph] = QuantResult(onnx.load(str(model)), json.loads(info.read_text()))
    return quant


def _layers(ctx: ExportContext) -> dict[str, Any]:
    """Per-tensor error of each INT8 graph (DPU rounding) against its float graph, on the check feeds."""
    graphs, quant, feeds = ctx.value("graphs"), ctx.value("quant"), ctx.value("check_feeds")
    return {g: layer_report(graphs[g], quant[g].model, feeds[g], rounding="dpu") for g in GRAPHS}


def _performance(ctx: ExportContext) -> dict[str, Any]:
    """The performance model's estimate of both graphs on the target's board (deterministic, so recomputed)."""
    return streaming_performance(ctx.value("graphs"), ctx.model.cfg.frames, ctx.target.ruleset)


def register_loaders(ctx: ExportContext) -> None:
    """How the DPU steps' values are rebuilt for a --start-from run (recomputed, or read from the bundle)."""
    ctx.loader("graphs_to_check", "export_streaming", lambda c: c.value("graphs"))
    ctx.loader("feeds", "quantize", _feeds)
    ctx.loader("check_feeds", "integer_reference", _check_feeds)
    ctx.loader("quant", "quantize", _quant_from_bundle)
    ctx.loader("reference", "integer_reference", lambda c: c.previous_field("reference"))
    ctx.loader("layers", "integer_reference", _layers)
    ctx.loader("performance", "dpu_performance", _performance)
    ctx.loader("partition", "check_operators", lambda c: {g: r["partition"] for g, r in json.loads(
        (c.directory / "compliance.json").read_text()).items()} if (c.directory / "compliance.json").is_file() else None)


@step("quantize", "quantize")
def step_quantize(ctx: ExportContext, run: StepRun) -> None:
    graphs = ctx.value("graphs")
    frames, collages = ctx.value("feeds")
    recovery = quant_recovery(ctx.target, ctx.options)
    qat = checkpoint_fix_points(getattr(ctx.options, "checkpoint", None), graphs, recovery)  # DPU QAT: pin all
    pinned = qat[0] if qat else {"early": None, "later": {}}
    early_q = quantize_onnx(graphs["early"], frames, recovery=recovery, progress=run.subtask, fixed_fix_points=pinned["early"])
    _, early_out_fp = io_fix_points(early_q.model)
    later_q = quantize_onnx(graphs["later"], collages, recovery=recovery, progress=run.subtask,
                            fixed_fix_points={**pinned["later"], graphs["later"].graph.input[0].name: early_out_fp})
    quant = ctx.set("quant", {"early": early_q, "later": later_q})
    if qat:
        for q in quant.values():
            q.info["qat"] = qat[1]
        run.record["qat"] = qat[1]
    for name, q in quant.items():
        write_bytes(ctx.directory / "quant" / f"{name}.onnx", q.model.SerializeToString())
        write_quant_info(q.info, ctx.directory / "quant" / f"{name}_quant_info.json")
    ctx.bundle.record_dir("quant_onnx", "quant")
    ctx.bundle.write_json("quant_info", "quant_info.json", {n: q.info for n, q in quant.items()})
    calibration = ctx.value("calibration")
    run.record.update(calibration=calibration["source"], clips=len(calibration["clips"]), frames=len(frames),
                      collage_fix_point=early_out_fp, recovery=recovery)


@step("integer_reference", "integer reference")
def step_integer_reference(ctx: ExportContext, run: StepRun) -> None:
    """The verdict ``bit_exact``: the integer reference equals ONNX Runtime's fake-quant run on every tensor."""
    graphs, quant, feeds = ctx.value("graphs"), ctx.value("quant"), ctx.value("check_feeds")
    reference: dict[str, Any] = {}
    layers: dict[str, Any] = {}
    for name in GRAPHS:
        checks = integer_checks(graphs[name], quant[name].model, feeds[name])
        reference[name] = {
            "bit_exact_vs_onnxruntime": checks.exact.bit_exact,
            "tensors_compared": len(checks.exact.rows),
            "not_exact_in_float32": [r.tensor for r in checks.exact.not_exact_in_float32],
            "dpu_rounding_differs": [dataclasses.asdict(r) for r in checks.dpu_rounding.rows],
        }
        layers[name] = checks.layers
    ctx.set("layers", layers)
    ctx.fields["reference"] = ctx.set("reference", reference)
    run.record.update({n: {"bit_exact": r["bit_exact_vs_onnxruntime"]} for n, r in reference.items()})
    inexact = [g for g, r in reference.items() if not r["bit_exact_vs_onnxruntime"]]
    ctx.verdict.record("bit_exact", not inexact, f"integer reference differs from ONNX Runtime on the {', '.join(inexact)} "
                       f"graph(s) (report.md)" if inexact else "integer reference = ONNX Runtime on both graphs")
    ctx.directory.joinpath("report_files").mkdir(exist_ok=True)
    for name in GRAPHS:
        save_sqnr_plot(layers[name], ctx.directory / "report_files" / f"sqnr_{name}.png",
                       title=f"{ctx.model.cfg.arch} {name} graph: INT8 (DPU rounding) vs float, SQNR per tensor")


@step("golden_vectors", "golden vectors")
def step_golden_vectors(ctx: ExportContext, run: StepRun) -> None:
    quant, calibration = ctx.value("quant"), ctx.value("calibration")
    write_clip_golden(ctx.directory / "golden", quant["early"].model, quant["later"].model, calibration["clips"][0],
                      ctx.model.cfg.grid, meta={"clip": f"first calibration clip ({calibration['source']})"})
    ctx.bundle.record_dir("golden_dir", "golden")


@step("compile_xmodel", COMPILE_STEP)
def step_compile_xmodel(ctx: ExportContext, run: StepRun) -> None:
    """vai_q_pytorch + vai_c_xir where they are; otherwise the scripts are written and the step says it did not run."""
    graphs = ctx.value("graphs")
    plan = prepare_compile(ctx.directory, ctx.target.ruleset, graphs["early"], graphs["later"],
                           ctx.value("calibration")["clips"], ctx.model.cfg.grid,
                           quant_info={n: ctx.directory / "quant" / f"{n}_quant_info.json" for n in GRAPHS},
                           feeds=ctx.value("feeds"))
    result = run_compile(plan)
    record = result.record(ctx.directory)
    ctx.fields["compile"] = record
    ctx.bundle.record_dir("compile_dir", COMPILE_DIR)
    ctx.set("xmodels", result.xmodels)
    if not result.ran and not result.log:
        run.not_run(result.reason, script=f"{COMPILE_DIR}/compile.sh", docker_command=plan.docker_command)
    else:
        run.record.update(record)
        ctx.verdict.record("built", result.ran, result.reason)


@step("board_dir", "board dir")
def step_board_dir(ctx: ExportContext, run: StepRun) -> None:
    cfg, quant = ctx.model.cfg, ctx.value("quant")
    xmodels = ctx.value("xmodels") if ctx.has("xmodels") else ()
    write_board_dir(ctx.directory / "board", target=ctx.target.ruleset, arch=cfg.arch, grid=cfg.grid,
                    image_size=cfg.image_size, early=quant["early"].model, later=quant["later"].model,
                    class_names=ctx.value("class_names"), xmodels={x.parent.name: x for x in xmodels} or None,
                    golden_dir=ctx.directory / "golden")
    ctx.bundle.record_dir("board_dir", "board")


def _crosscheck_with_accuracy(ctx: ExportContext) -> dict[str, Any] | None:
    """crosscheck.json of this bundle (None: --crosscheck did not run), with both models' accuracy once measured."""
    path = ctx.directory / "crosscheck.json"
    if not path.is_file():
        return None
    crosscheck = json.loads(path.read_text())
    rows = [row for row in ctx.fields.get("accuracy") or [] if row["model"] in crosscheck["accuracy_rows"]]
    if rows:
        crosscheck["accuracy"] = ctx.fields["crosscheck"]["accuracy"] = rows
        ctx.bundle.write_json("crosscheck", "crosscheck.json", crosscheck)
    return crosscheck


@step("dpu_report", "report")
def step_dpu_report(ctx: ExportContext, run: StepRun) -> None:
    cfg = ctx.model.cfg
    ctx.fields["throughput"] = throughput = peak_throughput(ctx.target.ruleset.data, cfg)
    ctx.fields["performance"] = performance = ctx.value("performance")
    compiled = ctx.fields.get("compile") or {"ran": False, "reason": "this target's recipe has no compile_xmodel step"}
    result = DpuExport(ctx.fields["verification"], ctx.fields["compliant"], ctx.value("partition"),
                       ctx.value("reference"), ctx.value("layers"), compiled, throughput, performance,
                       ctx.target.ruleset.data["arch"], _crosscheck_with_accuracy(ctx),
                       sensitivity=ctx.fields.get("sensitivity"))
    dpu_report(ctx.bundle, result, {"arch": cfg.arch, "weights": ctx.weights["source"],
                                          "verdict": ctx.verdict.to_dict()}, ctx.fields.get("accuracy"))
    ctx.bundle.record_report()


@step("dpu_performance", "DPU performance")
def step_dpu_performance(ctx: ExportContext, run: StepRun) -> None:
    """Estimated latency and fps of the full clip and of streaming on the board, and the slowest layers
    (vidconv_deploy.dpu.perf_model: a model validated on the Vitis AI Model Zoo, not a measurement)."""
    performance = ctx.set("performance", _performance(ctx))
    ctx.fields["performance"] = performance
    ctx.directory.joinpath("report_files").mkdir(exist_ok=True)
    save_layer_chart(performance, ctx.directory / "report_files" / "dpu_layers.png",
                     f"{ctx.model.cfg.arch} on {ctx.target.ruleset.name}: slowest layers of a streamed frame (estimate)")
    clip, stream = performance["full_clip"], performance["streaming"]
    run.record.update(clip_latency_ms=round(clip["latency_ms"], 3), clips_per_s_multi_thread=round(clip["clips_per_s_multi_thread"], 1),
                      streamed_frames_per_s_multi_thread=round(stream["fps_multi_thread"], 1))


@step("crosscheck_quark", "cross-check (Quark)")
def step_crosscheck_quark(ctx: ExportContext, run: StepRun) -> None:
    """``--crosscheck quark``: AMD Quark XINT8 on the same graphs and feeds, compared with ours tensor by tensor
    (vidconv_deploy/quark/crosscheck.py); Quark's QDQ graphs join the accuracy step's models."""
    if getattr(ctx.options, "crosscheck", None) != "quark":
        run.not_run("no --crosscheck quark given")
        return
    if quark_version() != QUARK_VERSION:
        run.not_run(f"amd-quark {QUARK_VERSION} is not installed here: {QUARK_INSTALL_FIX}")
        return
    frames, collages = ctx.value("feeds")
    result = crosscheck_graphs(ctx.value("graphs"), ctx.value("quant"), {"early": frames, "later": collages},
                               ctx.value("check_feeds"), run.subtask)
    for name, model in result.models.items():
        write_bytes(ctx.directory / CROSSCHECK_DIR / f"{name}.onnx", model.SerializeToString())
    ctx.bundle.record_dir(CROSSCHECK_ARTIFACT, CROSSCHECK_DIR)
    ctx.bundle.write_json("crosscheck", "crosscheck.json", {**result.to_dict(), "versions": quark_versions()})
    ctx.fields["crosscheck"] = result.summary()
    run.record.update({g: {"position_diffs": len(c.positions), "tensors_differing": sum(1 for t in c.outputs if t.differing)}
                       for g, c in result.graphs.items()}, unexplained=len(result.unexplained()))


@step("sensitivity", "sensitivity")
def step_sensitivity(ctx: ExportContext, run: StepRun) -> None:
    """Per quantized tensor, the logit cost of quantizing it alone and of leaving it float, on the recipe's
    ``sensitivity.clips`` clips (the --eval test split's, with labels, else the calibration set's), and what to
    do about the worst on the DPU (vidconv_deploy/evaluate/sensitivity.py)."""
    wanted = int(ctx.target.recipe.get("sensitivity", {}).get("clips", 0))
    if wanted < 1:
        run.not_run(f"the recipe's sensitivity.clips is {wanted}: give 1 or more to run it")
        return
    cfg, graphs = ctx.model.cfg, ctx.value("graphs")
    if ctx.options.eval is not None:
        clips, labels = labelled_clips(ctx.options.eval, cfg.frames, tuple(cfg.image_size), wanted)
        source = f"{len(clips)} test clips of {ctx.options.eval} (first view of each video)"
    else:
        clips, labels = ctx.value("calibration")["clips"][:wanted], None
        source = f"the first {min(wanted, len(ctx.value('calibration')['clips']))} calibration clips"
    result = sensitivity(graphs, ctx.value("quant"), cfg.grid, clips, labels, progress=run.subtask)
    ctx.fields["sensitivity"] = {"source": source, **result.to_dict(),
                                 "advice": advice(result, graphs, ctx.target.ruleset, ctx.value("performance"))}
    ctx.directory.joinpath("report_files").mkdir(exist_ok=True)
    save_sensitivity_plot(result, ctx.directory / "report_files" / "sensitivity.png",
                          f"{cfg.arch}: logit SQNR vs float with only this tensor INT8 (worst in red)")
    worst = result.ranked[0]
    run.record.update(clips=result.clips, tensors=len(result.tensors), most_sensitive=f"{worst.graph}:{worst.tensor}")
