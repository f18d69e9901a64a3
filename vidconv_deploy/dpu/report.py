"""``report.md`` / ``report.html`` of a DPU bundle: what ran and what did not, the partition, the
integer reference's verdicts, per-layer error with plots, the compile step, the performance estimate
and the peak-throughput bound."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from vidconv_deploy.bundle import Bundle
from vidconv_deploy.dpu.perf_model import dpu_cores, slowest_layers
from vidconv_deploy.reference.compare import LayerStats
from vidconv_deploy.report import Report
from vidconv_deploy.runners import GRAPHS


@dataclasses.dataclass
class DpuExport:
    """What the DPU export measured, as the report reads it."""

    verification: dict[str, Any]
    compliant: bool
    partition: dict[str, Any]
    reference: dict[str, Any]
    layers: dict[str, list[LayerStats]]
    compile: dict[str, Any]
    throughput: dict[str, Any]
    performance: dict[str, Any]
    #: The DPU configuration the bundle assumes: the rule set's ``arch`` (name, size, fingerprint, chosen_by).
    dpu: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: crosscheck.json of ``--crosscheck quark`` (None when it did not run).
    crosscheck: dict[str, Any] | None = None
    #: The sensitivity step's manifest record (None when it did not run).
    sensitivity: dict[str, Any] | None = None


def dpu_report(bundle: Bundle, result: DpuExport, model_facts: dict[str, Any], accuracy: list[dict] | None = None
               ) -> tuple[Path, Path]:
    """Write the report into the bundle (both renderings) and return their paths."""
    report = Report(f"{model_facts['arch']} -> {bundle.target}")
    report.what_ran(bundle.steps, model_facts["verdict"], model_facts["weights"])

    if result.dpu:
        d = result.dpu
        report.section("DPU").text(f"{d['name']}, fingerprint {d['fingerprint']} ({d['chosen_by']}): the rule check, the "
                                   f"channel split and the throughput bound are for this DPU; compile/compile.sh and "
                                   f"board/run_xmodel.py refuse another.")
    report.section("Partition (predicted from the target's rules)")
    rows = []
    for graph, part in result.partition.items():
        for device, facts in part["devices"].items():
            rows.append([graph, device, facts["ops"], facts["subgraphs"]])
    report.table(["graph", "device", "ops", "subgraphs"], rows)
    cpu = [r for r in rows if r[1] != "DPU"]
    report.text("Every op runs on the DPU; the host only assembles the collage from int8 early outputs."
                if not cpu else f"Ops off the DPU: {cpu} (see compliance.json for each node and the fix).")
    crossing = [[graph, i, ", ".join(sg["ops"][:3]) + (" ..." if len(sg["ops"]) > 3 else ""),
                 sg["dpu_to_cpu_bytes"], sg["cpu_to_dpu_bytes"]]
                for graph, part in result.partition.items() for i, sg in enumerate(part["subgraphs"]) if "dpu_to_cpu_bytes" in sg]
    if crossing:
        report.text("Bytes between the DPU and each subgraph off it, per run of the graph (the early graph runs once "
                    "per frame, the later once per window: per frame at stride 1); int8, one byte per element:")
        report.table(["graph", "subgraph", "ops", "DPU -> CPU bytes", "CPU -> DPU bytes"], crossing)
    report.text(f"Rule check: {'compliant' if result.compliant else 'NOT compliant'} with {bundle.target}.")

    report.section("Exact rewrite (float)").table(
        ["graph", "relative error vs PyTorch"],
        [[k.removesuffix("_vs_torch"), v] for k, v in result.verification.items() if k.endswith("_vs_torch")])

    report.section("Integer reference")
    for graph in GRAPHS:
        ref = result.reference[graph]
        report.text(f"{graph}: integer reference vs ONNX Runtime fake-quant over {ref['tensors_compared']} tensors: "
                    f"{'bit-exact' if ref['bit_exact_vs_onnxruntime'] else 'NOT bit-exact'}"
                    + (f"; float32 fake-quant not exact for {ref['not_exact_in_float32']}" if ref["not_exact_in_float32"] else "")
                    + ". DPU rounding (half up) differs from ONNX Runtime's (half to even) in "
                    f"{len(ref['dpu_rounding_differs'])} tensors.")
        if ref["dpu_rounding_differs"]:
            report.table(["tensor", "elements", "differing", "max LSB"],
                         [[r["tensor"], r["elements"], r["differing"], r["max_lsb"]] for r in ref["dpu_rounding_differs"]])

    report.section("Per-layer error, INT8 (DPU rounding) vs float")
    for graph in GRAPHS:
        stats = result.layers[graph]
        report.image(f"report_files/sqnr_{graph}.png", f"{graph} graph: SQNR per tensor")
        worst = sorted(stats, key=lambda s: s.sqnr_db)[:8]
        report.table(["tensor (lowest SQNR first)", "fix point", "SQNR dB", "cosine", "max |LSB| error"],
                     [[s.float_tensor, s.fix_point, s.sqnr_db, s.cosine, s.max_lsb_error] for s in worst])

    if accuracy:
        report.section("Accuracy").accuracy_table(accuracy)
    if result.crosscheck:
        crosscheck_section(report, result.crosscheck, accuracy)

    if result.sensitivity:
        sensitivity_section(report, result.sensitivity)

    report.section("Compile (Vitis AI)")
    compiled = result.compile
    report.text(("xmodels built: " + ", ".join(compiled.get("xmodels", []))) if compiled["ran"]
                else f"Not run here: {compiled['reason']}. No xmodel was built.")
    report.text("Run it: compile/docker_run.sh (the Vitis AI image from docker/vitis-ai), then copy board/ to the "
                "board and run board/run_xmodel.py.")

    performance_section(report, result.performance)

    t = result.throughput
    report.section("DPU peak-throughput bound").table(
        ["figure", "value"],
        [["peak ops/s", f"{t['peak_ops_per_s']:.3e}"], ["DPU cores x batch", t["cores"]], ["clock MHz", t["clock_mhz"]],
         ["ops per clip", f"{t['ops_per_clip']:.3e}"], ["clips/s bound", f"{t['clips_per_s_bound']:.1f}"],
         ["ops per streamed frame", f"{t['ops_per_streamed_frame']:.3e}"],
         ["streamed frames/s bound", f"{t['streamed_frames_per_s_bound']:.1f}"]])
    report.text(t["note"] + ".")
    return report.write(bundle.directory)


def crosscheck_section(report: Report, crosscheck: dict[str, Any], accuracy: list[dict] | None) -> None:
    """Quark XINT8 against our quantization: differing positions, codes and outputs, each with its rule."""
    seam = crosscheck["seam"]
    report.section("Cross-check: AMD Quark XINT8 (--crosscheck quark)").text(
        "Quark quantized the same streaming graphs on the same calibration feeds (DPU simulation and refinement on; "
        "'Quark calibrated' is its position before the refinement). Streaming seam: ours pins the later input to "
        f"position {seam['ours']}; Quark's early output is {seam['quark_early_output']}, its later input "
        f"{seam['quark_later_input']}. Full figures: crosscheck.json.")
    graphs = crosscheck["graphs"]
    report.table(["graph", "positions compared", "agree"],
                 [[g, c["positions_compared"], c["positions_agree"]] for g, c in graphs.items()])
    positions = [[g, d["tensor"], d["kind"], d["ours"], d["quark"], d["quark_calibrated"], d["rule"]]
                 for g, c in graphs.items() for d in c["position_diffs"]]
    if positions:
        report.table(["graph", "tensor", "kind", "ours", "Quark", "Quark calibrated", "rule"], positions)
    codes = [[g, d["tensor"], f"{d['differing']} of {d['elements']}", d["rule"]] for g, c in graphs.items() for d in c["code_diffs"]]
    if codes:
        report.text("Weights and biases at the same position whose int8 codes differ:")
        report.table(["graph", "tensor", "codes differing", "rule"], codes)
    operators = [[g, d["node"], d["op"], d["ours"], d["quark"], d["rule"]] for g, c in graphs.items() for d in c["operator_diffs"]]
    if operators:
        report.table(["graph", "node", "op", "ours", "Quark", "rule"], operators)
    outputs = [[g, t["tensor"], f"{t['ours_fp']}/{t['quark_fp']}", f"{t['differing']} of {t['elements']}", t["max_lsb"],
                t["sqnr_ours_db"], t["sqnr_quark_db"], t["cause"]]
               for g, c in graphs.items() for t in c["outputs"] if t["differing"]]
    report.text(f"ONNX Runtime runs of both QDQ graphs on the check feeds: {len(outputs)} tensors differ.")
    if outputs:
        report.table(["graph", "tensor", "fp ours/Quark", "elements differing", "max LSB", "SQNR ours dB",
                      "SQNR Quark dB", "cause"], outputs)
    if crosscheck["unexplained"]:
        report.text(f"Not explained by any rule: {', '.join(crosscheck['unexplained'])}.")
    report.table(["rule", "vai_q_pytorch (ours)", "Quark 0.13", "the DPUCZDX8G compiler"],
                 [[f"{key}: {rule['title']}", rule["vai_q"], rule["quark"], rule["compiler"]] for key, rule in crosscheck["rules"].items()])
    rows = [row for row in accuracy or [] if row["model"] in crosscheck["accuracy_rows"]]
    report.text("Accuracy of both on --eval: " + ("; ".join(f"{r['model']} top-1 {r['top1']:.1f} %, agreement with float "
                                                            f"{r['agreement_with_float']:.1f} %" for r in rows)
                                                 if rows else "not measured (no --eval, or the evaluate step did not run)."))


def _db(value: float | None) -> str:
    """A logit SQNR: None (the manifest's spelling of +inf) is a quantization that changed no logit."""
    return "no error" if value is None or value == math.inf else f"{value:.1f}"


def sensitivity_section(report: Report, sens: dict[str, Any], rows: int = 10) -> None:
    """Which tensors cost the accuracy: each alone in INT8 and each left float, the worst with what to do."""
    labelled = sens["labelled"]
    int8 = sens["int8"]
    report.section("Sensitivity: which tensors cost the accuracy").text(
        f"On {sens['source']}, through the whole streaming split (ONNX Runtime, the bundle's QDQ graphs): each "
        "quantized tensor, weight, bias and DPU approximation alone in INT8 (everything else float), and left float "
        "(everything else INT8), scored by the logits' SQNR against float and top-1 agreement with float"
        + (f", and top-1 (float {sens['float_top1']:.1f} %)" if labelled else "") + ". All INT8: SQNR "
        f"{_db(int8['sqnr_db'])} dB, agreement {int8['top1_agreement']:.1f} %"
        + (f", top-1 {int8['top1']:.1f} %" if labelled else "") + ". Full figures: manifest.json `sensitivity`.")
    report.image("report_files/sensitivity.png", "logit SQNR with only this tensor INT8, graph order (worst in red)")
    headers = ["rank", "graph", "tensor", "kind", "fix point", "alone: SQNR dB", "alone: agree %",
               "kept float: SQNR dB", "kept float: gain dB", "kept float: agree %"]
    if labelled:
        headers += ["alone: top-1 %", "kept float: top-1 %"]
    table = []
    for rank, t in enumerate(sens["ranked"][:rows], 1):
        alone, kept = t["alone"], t["kept_float"]
        row = [rank, t["graph"], t["tensor"], t["kind"], "-" if t["fix_point"] is None else t["fix_point"], _db(alone["sqnr_db"]),
               alone["top1_agreement"], _db(kept["sqnr_db"]), _db(t["recovery_db"]), kept["top1_agreement"]]
        table.append(row + ([alone["top1"], kept["top1"]] if labelled else []))
    report.table(headers, table)
    report.text("What to do about the worst on the DPU. A CPU subgraph computes its op in float (its weights stay "
                "float) but takes and hands back int8 feature maps: it removes the weight's and the op's "
                "quantization, not that of the tensors crossing.")
    report.table(["tensor", "what to try", "moved to the CPU: subgraphs", "bytes DPU -> CPU / CPU -> DPU per run",
                  "DPU ms freed per run", "MACs on the CPU"],
                 [[f"{a['graph']}:{a['tensor']} ({a['kind']})", a["advice"],
                   *([", ".join(f"{d} {n}" for d, n in a["cpu"]["subgraphs"].items()),
                      f"{a['cpu']['dpu_to_cpu_bytes']} / {a['cpu']['cpu_to_dpu_bytes']}", a["cpu"]["dpu_ms_freed"],
                      a["cpu"]["macs"]] if "cpu" in a else ["not an op on the DPU", "-", "-", "-"])]
                  for a in sens["advice"]])


def performance_section(report: Report, performance: dict[str, Any]) -> None:
    """The performance model's estimate: clip and streaming rates, the slowest layers, the figures it used."""
    clip, stream, config = performance["full_clip"], performance["streaming"], performance["config"]
    report.section("DPU performance estimate (model, not a measurement)").table(
        ["mode", "latency ms (one core)", "single thread /s", f"multi-thread /s ({dpu_cores(config['cores'])})"],
        [[f"full clip ({clip['frames']} frames + collage), clips", clip["latency_ms"], clip["clips_per_s_single_thread"],
          clip["clips_per_s_multi_thread"]],
         ["streaming (1 early + 1 later run per new frame), frames", stream["latency_ms"], stream["fps_single_thread"],
          stream["fps_multi_thread"]]])
    report.image("report_files/dpu_layers.png", "slowest layers of a streamed frame (blue compute-bound, orange memory-bound)")
    report.table(["bottleneck layer", "op", "engine", "ms", "bound"],
                 [[layer["layer"], layer["op_type"], layer["engine"], layer["ms"], layer["bound"]]
                  for layer in slowest_layers(performance, 8)])
    off = [f"{g}:{name}" for g, p in performance["graphs"].items() for name in p["off_dpu"]]
    if off:
        report.text(f"Not costed (they run on the board CPU): {', '.join(off)}.")
    report.text(f"{config['arch']}: PP x ICP x OCP = {' x '.join(map(str, config['pp_icp_ocp']))}, ALU pixel parallelism "
                f"{config['alu_pixel_parallel']}, {config['clock_mhz']:g} MHz, {dpu_cores(config['cores'])}, data ports "
                f"{config['port_gb_per_s']:.1f} GB/s per core, DDR {config['ddr_gb_per_s']:.1f} GB/s usable; fitted: conv "
                f"efficiency {config['conv_efficiency']:g}, {config['layer_overhead_cycles']} overhead cycles per layer, "
                f"{config['host_ms_per_frame']:g} ms host work per frame (single thread). Validated on the Vitis AI Model Zoo "
                "(bench/dpu_cost_validation.py, DPUCZDX8G boards only).")
