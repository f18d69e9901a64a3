"""The DPU export: DPU variant -> exact lowering -> streaming graphs -> rule check -> INT8 -> reference,
golden vectors, compile step, board dir and report.

The DPU runs the streaming split as two xmodels: the early net once per new frame and the later
net on the collage the host assembles from the last L early outputs (a pure int8 rearrangement, so
the host adds no arithmetic). Both graphs are quantized with vai_q_pytorch's arithmetic; the later
graph's input is pinned to the early graph's output fix position so the int8 features pass through
unchanged. The integer reference must equal ONNX Runtime's fake-quant run bit for bit (ORT
rounding) and reports where the DPU's rounding gives other codes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from vidconv_deploy.atomic import write_bytes
from vidconv_deploy.check import check_model
from vidconv_deploy.check.ruleset import load_ruleset
from vidconv_deploy.dpu import prepare_compile, run_compile, write_board_dir, write_clip_golden
from vidconv_deploy.dpu.board_dir import io_fix_points
from vidconv_deploy.evaluate.classifiers import collage
from vidconv_deploy.export.bundle import Bundle
from vidconv_deploy.export.onnx_export import ort_session
from vidconv_deploy.export.passes import dpu_passes
from vidconv_deploy.export.pipeline import ExportedViC, export_graphs, stderr_progress
from vidconv_deploy.models.complexity import measure
from vidconv_deploy.models.vidconv import VidConv
from vidconv_deploy.quant import quantize_onnx, write_quant_info
from vidconv_deploy.reference import compare_with_onnxruntime, layer_report, rounding_differences, save_sqnr_plot
from vidconv_deploy.reference.compare import LayerStats

GRAPHS = ("early", "later")
#: Clips of the calibration set whose tensors the reference checks compare (all of it is used to calibrate).
CHECK_CLIPS = 2


@dataclasses.dataclass
class DpuExport:
    """What the DPU export measured, for the manifest, the report and the exit code."""

    verification: dict[str, Any]
    compliant: bool
    partition: dict[str, Any]
    reference: dict[str, Any]
    layers: dict[str, list[LayerStats]]
    compile: dict[str, Any]
    throughput: dict[str, Any]


def streaming_feeds(early: onnx.ModelProto, later: onnx.ModelProto, clips: Sequence[np.ndarray], grid: tuple[int, int]
                    ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Float feeds of both graphs: every frame for the early graph, each clip's host collage for the later one."""
    session = ort_session(early)
    later_in = later.graph.input[0].name
    early_in = session.get_inputs()[0].name
    frames, collages = [], []
    for clip in clips:
        features = []
        for frame in clip:
            feed = {early_in: np.ascontiguousarray(frame[None], dtype=np.float32)}
            frames.append(feed)
            features.append(session.run(None, feed)[0])
        collages.append({later_in: collage(features, grid)})
    return frames, collages


def peak_throughput(target: str, model: VidConv) -> dict[str, Any]:
    """The board's peak DPU ops/s and the clip rate it bounds (MACs counted on the model, 2 ops each).

    A bound, not a measurement: real DPUs reach a fraction of peak (memory, depthwise at half
    pixel parallelism, small channel counts).
    """
    data = load_ruleset(target).data
    board, conv = data.get("board", {}), data["engines"]["conv"]
    ops_per_clock = 2 * conv["pixel_parallel"] * data["channel_parallel"] * conv["output_channel_parallel"]
    cores = board.get("cores", 1) * board.get("batch", 1)
    peak = ops_per_clock * cores * board["clock_mhz"] * 1e6
    parts = {p.name: p.macs for p in measure(model.cfg)}
    early_macs = parts["stem"] + parts["stage1"] + parts["stage2"]
    later_macs = sum(parts.values()) - early_macs
    frames = model.cfg.frames
    return {"peak_ops_per_s": peak, "ops_per_clock_per_core": ops_per_clock, "cores": cores, "clock_mhz": board["clock_mhz"],
            "ops_per_clip": 2 * (frames * early_macs + later_macs),
            "clips_per_s_bound": peak / (2 * (frames * early_macs + later_macs)),
            "ops_per_streamed_frame": 2 * (early_macs + later_macs),
            "streamed_frames_per_s_bound": peak / (2 * (early_macs + later_macs)),
            "note": "peak-throughput bound 2 x PP x ICP x OCP x cores x clock (the DPUCZDX8G formula, PG338; for the "
                    "AIE-based DPUCVDX8G/DPUCV2DX8G it is an estimate from the same parallelism, not a datasheet figure); "
                    "the early net runs once per new frame when streaming"}


def export_dpu_bundle(model: VidConv, bundle: Bundle, target: str, calib_clips: Sequence[np.ndarray], class_names: Sequence[str],
                      calib_source: str, seed: int = 0) -> DpuExport:
    """Run the whole DPU pipeline into ``bundle`` (see the module docstring)."""
    rules = load_ruleset(target)
    cfg = model.cfg
    with stderr_progress() as progress:
        task = progress.add_task("exporting", total=9)

        def advance(what: str) -> None:
            progress.update(task, advance=1, description=what)

        exported: ExportedViC = export_graphs(model, bundle, dpu_passes(rules.data["channel_parallel"]), seed, advance)
        graphs = {"early": exported.early.model, "later": exported.later.model}
        advance("checking operators")
        with bundle.step("check operators") as record:
            results = {name: check_model(graph, target) for name, graph in graphs.items()}
            bundle.write_json("compliance_json", "compliance.json", {n: r.to_dict() for n, r in results.items()})
            compliant = all(r.compliant for r in results.values())
            record["rule_set"], record["compliant"] = target, compliant
        partition = {n: r.partition for n, r in results.items()}

        advance("calibrating")
        frames, collages = streaming_feeds(graphs["early"], graphs["later"], calib_clips, cfg.grid)
        with bundle.step("quantize") as record:
            early_q = quantize_onnx(graphs["early"], frames, progress=False)
            _, early_out_fp = io_fix_points(early_q.model)
            later_q = quantize_onnx(graphs["later"], collages, progress=False,
                                    fixed_fix_points={graphs["later"].graph.input[0].name: early_out_fp})
            quant = {"early": early_q, "later": later_q}
            for name, q in quant.items():
                write_bytes(bundle.directory / "quant" / f"{name}.onnx", q.model.SerializeToString())
                write_quant_info(q.info, bundle.directory / "quant" / f"{name}_quant_info.json")
            bundle.record_dir("quant_onnx", "quant")
            bundle.write_json("quant_info", "quant_info.json", {n: q.info for n, q in quant.items()})
            record.update(calibration=calib_source, clips=len(calib_clips), frames=len(frames),
                          collage_fix_point=early_out_fp)

        advance("integer reference")
        feeds = {"early": frames[: CHECK_CLIPS * cfg.frames], "later": collages[:CHECK_CLIPS]}
        with bundle.step("integer reference") as record:
            reference: dict[str, Any] = {}
            layers: dict[str, list[LayerStats]] = {}
            for name in GRAPHS:
                exact = compare_with_onnxruntime(quant[name].model, feeds[name])
                dpu = rounding_differences(quant[name].model, feeds[name])
                layers[name] = layer_report(graphs[name], quant[name].model, feeds[name], rounding="dpu")
                reference[name] = {
                    "bit_exact_vs_onnxruntime": exact.bit_exact,
                    "tensors_compared": len(exact.rows),
                    "not_exact_in_float32": [r.tensor for r in exact.not_exact_in_float32],
                    "dpu_rounding_differs": [dataclasses.asdict(r) for r in dpu.rows],
                }
            record.update({n: {"bit_exact": r["bit_exact_vs_onnxruntime"]} for n, r in reference.items()})
            bundle.directory.joinpath("report_files").mkdir(exist_ok=True)
            for name in GRAPHS:
                save_sqnr_plot(layers[name], bundle.directory / "report_files" / f"sqnr_{name}.png",
                               title=f"{cfg.arch} {name} graph: INT8 (DPU rounding) vs float, SQNR per tensor")

        advance("golden vectors")
        with bundle.step("golden vectors") as record:
            write_clip_golden(bundle.directory / "golden", quant["early"].model, quant["later"].model, calib_clips[0],
                              cfg.grid, meta={"clip": f"first calibration clip ({calib_source})"})
            bundle.record_dir("golden_dir", "golden")

        advance("compile step")
        plan = prepare_compile(bundle.directory, target, graphs["early"], graphs["later"], calib_clips, cfg.grid,
                               quant_info={n: bundle.directory / "quant" / f"{n}_quant_info.json" for n in GRAPHS})
        compiled = run_compile(plan, bundle)
        bundle.record_dir("compile_dir", "compile")

        advance("board dir")
        with bundle.step("board dir"):
            write_board_dir(bundle.directory / "board", target=target, arch=cfg.arch, grid=cfg.grid, image_size=cfg.image_size,
                            early=quant["early"].model, later=quant["later"].model, class_names=class_names,
                            xmodels={x.parent.name: x for x in compiled.xmodels} or None,
                            golden_dir=bundle.directory / "golden")
            bundle.record_dir("board_dir", "board")
        advance("done")
    return DpuExport(exported.verification, compliant, partition, reference, layers,
                     compiled.record(bundle.directory), peak_throughput(target, model))
