"""``report.md`` / ``report.html`` of a FINN bundle: what ran, the fit against the board, where the cycles
go per layer (the bottleneck sets the frame rate), the bit-exact chain, per-layer SQNR, accuracy and the
work-arounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vidconv_deploy.bundle import Bundle
from vidconv_deploy.finn.boards import RESOURCES
from vidconv_deploy.plots import save_layer_bars
from vidconv_deploy.report import Report
from vidconv_deploy.runners import GRAPHS

#: Layers listed per graph in the tables (slowest first); the plot shows them all.
LISTED_LAYERS = 12


def save_cycles_plot(layers: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Bar chart of estimated cycles per layer in stream order, the slowest (the bottleneck) in red."""
    cycles = [facts["cycles"] for facts in layers.values()]
    colors = ["tab:red" if c == max(cycles) else "tab:blue" for c in cycles]
    save_layer_bars(list(layers), cycles, path, title, "cycles per input (log)", colors, log=True)


def finn_document(bundle: Bundle, report: dict[str, Any], model_facts: dict[str, Any],
                  accuracy: list[dict] | None = None) -> tuple[Path, Path]:
    """Write the report (both renderings, plots under ``report_files/``) and return the two paths."""
    doc = Report(f"{model_facts['arch']} -> {bundle.target} ({report['bits']})")
    doc.what_ran(bundle.steps, model_facts["verdict"], model_facts["weights"])

    board = report["board"]
    doc.section(f"Fit on {board['name']} ({board['part']})").table(
        ["resource", "estimated", "available", "utilization"],
        [[key, "n/a" if report["resources"][key] is None else f"{report['resources'][key]:,.0f}",
          f"{board['budget'][key]:,}",
          "n/a" if report["utilization"][key] is None else f"{report['utilization'][key]:.1%}"] for key in RESOURCES])
    verdict = "fits" if report["fits"] else "does NOT fit"
    doc.text(f"Verdict: {verdict} ({report['estimator']}). Budget source: {board['source']}.")
    if report["unmapped_nodes"]:
        doc.table(["graph", "node", "op", "why"],
                  [[n["graph"], n["node"], n["op_type"], n["why"]] for n in report["unmapped_nodes"]])
    if report["fps"] is not None:
        doc.text(f"Throughput {report['fps']:.2f} clips/s, latency {report['latency_ms']:.2f} ms ({report['fps_unit']}); "
                 f"folding: {report['folding']['policy']}.")

    files = bundle.directory / "report_files"
    for graph in GRAPHS:
        estimate = report["graphs"].get(graph)
        if not estimate:
            continue
        layers = estimate["layers"]
        doc.section(f"{graph} graph: cycles and resources per layer")
        save_cycles_plot(layers, files / f"finn_cycles_{graph}.png", f"{graph}: estimated cycles per layer")
        doc.image(f"report_files/finn_cycles_{graph}.png", f"{graph}: cycles per layer (bottleneck in red)")
        slowest = sorted(layers.items(), key=lambda item: -item[1]["cycles"])[:LISTED_LAYERS]
        doc.table(["layer (slowest first)", "cycles", *[k for k in RESOURCES if k != "FF"]],
                  [[name, facts["cycles"], *[facts.get(k, "") for k in RESOURCES if k != "FF"]] for name, facts in slowest])
        doc.text(f"Bottleneck {estimate['max_cycles_node']}: {estimate['max_cycles']:,} cycles per input; "
                 f"critical path {estimate['critical_path_cycles']:,} cycles.")

    chain = report["chain"]
    doc.section("Bit-exact chain").text(
        "Brevitas integer outputs (float64) = FINN Python execution of the streamlined and HW-layer graphs: "
        + (f"bit-exact on {chain['clips']} clips." if chain["bit_exact"] else f"NOT bit-exact: {chain.get('mismatches') or chain.get('reason')}."))
    rounding = chain.get("qonnx_float32_rounding")
    if chain["bit_exact"]:
        doc.text("QONNX execution (float32 in ONNX Runtime) within 1 LSB: "
                 + ("; ".join(rounding) + " (values within float32 precision of a rounding boundary)." if rounding
                    else "identical on every integer."))
    sqnr = report.get("layer_sqnr")
    if sqnr:
        doc.section(f"Per-layer error, {report['bits']} vs float")
        defined = [row for row in sqnr["quantizers"] if row["sqnr_db"] is not None]
        save_layer_bars([row["quantizer"] for row in defined], [row["sqnr_db"] for row in defined],
                        files / "sqnr_finn.png", f"{report['bits']} vs float: SQNR per quantizer", "SQNR (dB)")
        doc.image("report_files/sqnr_finn.png", "SQNR of every activation quantizer's output (stream order)")
        doc.text("Float here is the same Brevitas model with its quantizers off (the float DPU variant exactly), on "
                 f"{sqnr['clips']} calibration clips; each figure includes the error of every layer before it. "
                 "After QAT the weights are tuned for the quantized model, so low figures there are expected; "
                 "accuracy is the measure that counts.")
        worst = sorted(defined, key=lambda row: row["sqnr_db"])[:8]
        doc.table(["quantizer (lowest SQNR first)", "SQNR dB", "elements"],
                  [[row["quantizer"], row["sqnr_db"], row["elements"]] for row in worst])
    if accuracy:
        doc.section("Accuracy").accuracy_table(accuracy)
    doc.section("Work-arounds for finn-plus here").text("; ".join(report["workarounds"]) + ".")
    doc.text("Tools that ran: " + ", ".join(f"{k} {v}" for k, v in report["tools"].items()) + ".")
    return doc.write(bundle.directory)
