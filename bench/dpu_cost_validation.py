"""Validate the DPU performance model (vidconv_deploy/dpu/perf_model.py) on the Vitis AI Model Zoo.

Builds the classic CNNs of bench/data/model_zoo_dpu_throughput.yaml (torchvision's layer shapes,
random weights: the cost does not depend on the values), exports each to ONNX (BatchNorm folded),
costs it on dpu-zcu102, dpu-zcu104 and dpu-kv260, and compares with the published fps:

* multi-thread fps (every core busy, ARM work overlapped): the model's ``fps_multi_thread``;
* single-thread fps (ARM pre/post-processing and DPU time add): the model's ``fps_single_thread``.

``--fit`` also fits the four figures no datasheet gives (conv efficiency, per-layer overhead, DDR
efficiency, host ms per frame) by grid search on these data and reports the leave-one-network-out
error (each network predicted with figures fitted on the others). Prints a table, then the JSON on
its last line.

    .venv/bin/python bench/dpu_cost_validation.py [--fit]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_nets import NETWORKS  # noqa: E402

from vidconv_deploy.check.ruleset import load_ruleset  # noqa: E402
from vidconv_deploy.dpu.perf_model import DpuConfig, LayerWork, estimate, graph_work, throughput  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "model_zoo_dpu_throughput.yaml"
KINDS = ("multi_thread", "single_thread")


def export(network: str) -> onnx.ModelProto:
    """The network in eval mode as ONNX (TorchScript exporter folds BatchNorm into the convs)."""
    build, size = NETWORKS[network]
    torch.manual_seed(0)
    model = build().eval()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 3, size, size),), buffer, dynamo=False, opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


def predict(works: list[LayerWork], config: DpuConfig) -> dict[str, float]:
    est = estimate(works, config)
    t = throughput(est.seconds, est.bytes, config)
    return {"multi_thread": t["fps_multi_thread"], "single_thread": t["fps_single_thread"], "latency_ms": t["latency_ms"],
            "gmacs": est.macs / 1e9, "mbytes": est.bytes / 1e6}


def errors(rows: list[dict]) -> dict[str, float]:
    return {kind: statistics.median(abs(r[kind]["error"]) for r in rows) for kind in KINDS}


def evaluate(models: list[dict], works: dict, configs: dict[str, DpuConfig]) -> list[dict]:
    rows = []
    for m in models:
        for board, published in m["fps"].items():
            p = predict(works[m["network"], board], configs[board])
            rows.append({"network": m["network"], "zoo_name": m["zoo_name"], "board": board,
                         "latency_ms": p["latency_ms"], "gmacs": p["gmacs"], "mbytes": p["mbytes"],
                         **{k: {"published": published[k], "predicted": p[k], "error": p[k] / published[k] - 1} for k in KINDS}})
    return rows


def _arrays(works: list[LayerWork], config: DpuConfig) -> tuple[np.ndarray, np.ndarray, int]:
    costed = [w for w in works if w.engine in ("conv", "alu", "eltwise")]
    cycles = np.array([w.cycles for w in costed], float) / config.clock_hz
    memory = np.array([w.weight_bytes + w.feature_bytes for w in costed], float) / config.port_bytes_per_s
    return cycles, memory, len(costed)


def fit(models: list[dict], works: dict, configs: dict[str, DpuConfig]) -> dict[str, float]:
    """Grid search of the four fitted figures, minimising the mean |log(predicted / published)|."""
    cases = []
    for m in models:
        for board, published in m["fps"].items():
            c = configs[board]
            cycles, memory, n = _arrays(works[m["network"], board], c)
            total_bytes = sum(w.weight_bytes + w.feature_bytes for w in works[m["network"], board])
            cases.append((cycles, memory, n, c, total_bytes, published))
    best: tuple[float, tuple[float, int, float]] | None = None
    base_ddr = {id(c): c.ddr_bytes_per_s / load_ddr_efficiency(c) for *_, c, _, _ in cases}
    for eff, overhead, ddr_eff in itertools.product(np.arange(0.30, 1.001, 0.02), range(0, 3001, 100), np.arange(0.3, 1.001, 0.05)):
        loss = 0.0
        for cycles, memory, n, c, total_bytes, published in cases:
            seconds = float(np.maximum(cycles / eff, memory).sum()) + n * overhead / c.clock_hz
            multi = min(c.cores / seconds, base_ddr[id(c)] * ddr_eff / total_bytes)
            loss += abs(np.log(multi / published["multi_thread"]))
        if best is None or loss < best[0]:
            best = (loss, (float(eff), overhead, float(ddr_eff)))
    assert best is not None
    eff, overhead, ddr_eff = best[1]
    host_best: tuple[float, float] | None = None
    for host_ms in np.arange(0.0, 5.001, 0.05):
        loss = 0.0
        for cycles, memory, n, c, _, published in cases:
            seconds = float(np.maximum(cycles / eff, memory).sum()) + n * overhead / c.clock_hz
            loss += abs(np.log(1 / (seconds + host_ms / 1e3) / published["single_thread"]))
        if host_best is None or loss < host_best[0]:
            host_best = (loss, float(host_ms))
    assert host_best is not None
    return {"conv_efficiency": round(eff, 2), "layer_overhead_cycles": overhead, "ddr_efficiency": round(ddr_eff, 2),
            "host_ms_per_frame": round(host_best[1], 2)}


def load_ddr_efficiency(config: DpuConfig) -> float:
    return float(load_ruleset(config.target).data["perf"]["ddr_efficiency"])


def with_figures(config: DpuConfig, figures: dict[str, float]) -> DpuConfig:
    ddr = config.ddr_bytes_per_s / load_ddr_efficiency(config) * figures["ddr_efficiency"]
    return dataclasses.replace(config, conv_efficiency=figures["conv_efficiency"],
                               layer_overhead_cycles=int(figures["layer_overhead_cycles"]),
                               host_s_per_frame=figures["host_ms_per_frame"] / 1e3, ddr_bytes_per_s=ddr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", action="store_true", help="fit the four non-datasheet figures and cross-validate them")
    args = parser.parse_args()
    data = yaml.safe_load(DATA.read_text())
    models = data["models"]
    configs = {board: DpuConfig.from_rules(load_ruleset(board)) for board in data["boards"]}
    works: dict[tuple[str, str], list[LayerWork]] = {}
    for m in models:
        graph = export(m["network"])
        for board in m["fps"]:
            works[m["network"], board] = graph_work(graph, load_ruleset(board))
    rows = evaluate(models, works, configs)
    result: dict = {"source": data["source"], "figures": "E2E fps (ARM pre/post-processing included); multi-thread "
                    "overlaps it with the DPU", "rules": {b: {k: getattr(c, k) for k in ("conv_efficiency", "layer_overhead_cycles",
                                                                                          "host_s_per_frame")} for b, c in configs.items()},
                    "rows": rows, "median_abs_error": errors(rows)}
    if args.fit:
        fitted = fit(models, works, configs)
        held_out = []
        for m in models:
            others = fit([o for o in models if o is not m], works, configs)
            held_out += evaluate([m], works, {b: with_figures(c, others) for b, c in configs.items()})
        result["fit"] = {"figures": fitted, "median_abs_error_fitted": errors(evaluate(
            models, works, {b: with_figures(c, fitted) for b, c in configs.items()})),
            "median_abs_error_leave_one_network_out": errors(held_out), "held_out_rows": held_out}
    print(f"{'network':<14} {'board':<11} {'GMACs':>6} {'ms/frame':>8} {'MT pub':>8} {'MT pred':>8} {'err':>6} "
          f"{'ST pub':>8} {'ST pred':>8} {'err':>6}")
    for r in rows:
        mt, st = r["multi_thread"], r["single_thread"]
        print(f"{r['network']:<14} {r['board']:<11} {r['gmacs']:6.2f} {r['latency_ms']:8.2f} {mt['published']:8.1f} "
              f"{mt['predicted']:8.1f} {mt['error']:+6.0%} {st['published']:8.1f} {st['predicted']:8.1f} {st['error']:+6.0%}")
    print("median |error|:", {k: f"{v:.1%}" for k, v in result["median_abs_error"].items()})
    if args.fit:
        print("fitted:", result["fit"]["figures"], "| median |error| fitted:",
              {k: f"{v:.1%}" for k, v in result["fit"]["median_abs_error_fitted"].items()},
              "| leave one network out:", {k: f"{v:.1%}" for k, v in result["fit"]["median_abs_error_leave_one_network_out"].items()})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
