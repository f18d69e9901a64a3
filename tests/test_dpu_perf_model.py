"""The DPU performance model: exact cycles and bytes of hand-computed layers on DPUCZDX8G B4096, the
compute/memory bound, core and DDR scaling, and the export step that puts the estimate in a bundle."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.check.ruleset import load_ruleset
from vidconv_deploy.dpu.perf_model import DpuConfig, estimate, graph_work, model_performance, throughput

KV260 = load_ruleset("dpu-kv260")


def _model(nodes: list[onnx.NodeProto], x: tuple[int, ...], inits: dict[str, tuple[int, ...]], out: str = "y") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    tensors = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in inits.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _works(model: onnx.ModelProto) -> dict[str, tuple[str, int, int, int]]:
    return {w.name: (w.engine, w.cycles, w.weight_bytes, w.feature_bytes) for w in graph_work(model, KV260)}


def test_conv_cycles_count_lanes_wasted_by_channels_and_width():
    # 20 -> 17 channels, 3x3, 4x10 output: rows 4 x ceil(10/PP=8)=2 x 9 taps x ceil(20/ICP=16)=2 x ceil(17/OCP=16)=2
    model = _model([helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                    helper.make_node("Relu", ["c"], ["y"], name="relu")], (1, 20, 4, 10), {"w": (17, 20, 3, 3), "b": (17,)})
    assert _works(model) == {"conv": ("conv", 4 * 2 * 9 * 2 * 2, 17 * 20 * 9 + 17, 20 * 40 + 17 * 40),
                             "relu": ("fused", 0, 0, 0)}


def test_depthwise_pool_add_and_gemm_cycles():
    nodes = [helper.make_node("Conv", ["x", "dw"], ["d"], name="dw", group=32, pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["d", "x"], ["a"], name="add"),
             helper.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], name="fc", transB=1)]
    model = _model(nodes, (1, 32, 4, 10), {"dw": (32, 1, 3, 3), "fc": (10, 320), "fb": (10,)})
    assert _works(model) == {
        # ALU at PP/2 = 4 pixels: rows 4 x ceil(10/4)=3 x 9 taps x ceil(32/16)=2
        "dw": ("alu", 4 * 3 * 9 * 2, 32 * 10, 2 * 1280),
        # each input at PP x ICP: 2 inputs x rows 4 x ceil(10/8)=2 x ceil(32/16)=2
        "add": ("eltwise", 2 * 4 * 2 * 2, 0, 3 * 1280),
        # 2x5 output on the ALU: rows 2 x ceil(5/4)=2 x 4 taps x 2 channel groups
        "pool": ("alu", 2 * 2 * 4 * 2, 0, 1280 + 320),
        "flat": ("movement", 0, 0, 0),
        # a 1 x 320 x 10 product: ceil(1/8) x ceil(320/16)=20 x ceil(10/16)=1
        "fc": ("conv", 20, 3200 + 10, 320 + 10),
    }


def test_a_layer_costs_the_larger_of_compute_and_memory_plus_the_overhead():
    config = dataclasses.replace(DpuConfig.from_rules(KV260), clock_hz=1e8, conv_efficiency=0.5, port_bytes_per_s=1e9,
                                 layer_overhead_cycles=100)
    fc = _model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], (1, 4096), {"w": (1000, 4096)})
    conv = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], (1, 16, 64, 64),
                  {"w": (16, 16, 3, 3)})
    (fc_cost,), (conv_cost,) = estimate(graph_work(fc, KV260), config).layers, estimate(graph_work(conv, KV260), config).layers
    # Gemm: 1 x 256 x 63 = 16128 cycles at 0.5 x 100 MHz; 4096000 weights + 1000 bias + 5096 features over 1 GB/s.
    assert (fc_cost.compute_s, fc_cost.memory_s, fc_cost.bound) == (pytest.approx(16128 / 5e7), pytest.approx(4102096 / 1e9), "memory")
    assert fc_cost.seconds == pytest.approx(4102096 / 1e9 + 100 / 1e8)
    # Conv: 64 rows x 8 x 9 x 1 x 1 = 4608 cycles; 2304 + 16 weights + 2 x 65536 features.
    assert (conv_cost.compute_s, conv_cost.memory_s, conv_cost.bound) == (pytest.approx(4608 / 5e7), pytest.approx(133392 / 1e9), "memory")
    fast_port = dataclasses.replace(config, port_bytes_per_s=1e12)
    (conv_fast,) = estimate(graph_work(conv, KV260), fast_port).layers
    assert conv_fast.bound == "compute" and conv_fast.seconds == pytest.approx(4608 / 5e7 + 100 / 1e8)


def test_cores_scale_multi_thread_until_the_shared_ddr_caps_it():
    one = dataclasses.replace(DpuConfig.from_rules(KV260), cores=1, ddr_bytes_per_s=1e12, host_s_per_frame=0.002)
    three = dataclasses.replace(one, cores=3)
    assert throughput(0.01, 10**6, one) == {"latency_ms": 10.0, "fps_single_thread": pytest.approx(1 / 0.012),
                                            "fps_multi_thread": pytest.approx(100.0)}
    assert throughput(0.01, 10**6, three)["fps_multi_thread"] == pytest.approx(300.0)
    assert throughput(0.01, 10**6, three)["fps_single_thread"] == pytest.approx(1 / 0.012)  # one frame at a time
    capped = dataclasses.replace(three, ddr_bytes_per_s=2e8)  # 200 MB/s over 1 MB per frame
    assert throughput(0.01, 10**6, capped)["fps_multi_thread"] == pytest.approx(200.0)


def test_boards_follow_their_rule_sets():
    kv260, zcu102 = DpuConfig.from_rules(KV260), DpuConfig.from_rules(load_ruleset("dpu-zcu102"))
    assert (kv260.pp, kv260.icp, kv260.ocp, kv260.alu_pp, kv260.cores, kv260.clock_hz) == (8, 16, 16, 4, 1, 300e6)
    assert (zcu102.cores, zcu102.clock_hz) == (3, 281e6)
    assert kv260.port_bytes_per_s == 2 * 16 * 300e6  # two 128-bit data ports at the DPU clock (PG338)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], (1, 16, 8, 8), {"w": (16, 16, 1, 1)})
    perf = model_performance(model, KV260)
    assert perf["config"]["pp_icp_ocp"] == [8, 16, 16] and [layer["cycles"] for layer in perf["layers"]] == [8]


def test_dpu_export_records_the_estimate_in_the_manifest(tmp_path):
    from vidconv_deploy.cli.export import main as export_main

    code = export_main(["--target", "dpu-kv260", "--arch", "vic-nano-dpu", "--classes", "10", "--image-size", "32",
                        "--stop-after", "dpu_performance", "--out", str(tmp_path)])
    bundle = tmp_path / "vic-nano-dpu-dpu-kv260"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert code == 0
    step = next(s for s in manifest["steps"] if s["name"] == "DPU performance")
    perf = manifest["performance"]
    early, later = perf["graphs"]["early"]["latency_ms"], perf["graphs"]["later"]["latency_ms"]
    frames = math.prod(manifest["model"]["config"]["grid"])  # one frame per collage cell
    assert perf["full_clip"]["frames"] == frames and perf["full_clip"]["latency_ms"] == pytest.approx(frames * early + later)
    assert perf["streaming"]["latency_ms"] == pytest.approx(early + later)
    assert step["clip_latency_ms"] == round(perf["full_clip"]["latency_ms"], 3)
    assert perf["graphs"]["later"]["bottlenecks"][0]["layer"] and not perf["graphs"]["early"]["off_dpu"]
    assert (bundle / "report_files" / "dpu_layers.png").read_bytes()[:4] == b"\x89PNG"


def test_check_cli_perf_prints_the_estimate_and_refuses_non_dpu_targets(tmp_path, capsys):
    from vidconv_deploy.cli.check import main as check_main

    path = tmp_path / "m.onnx"
    onnx.save(_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], (1, 16, 8, 8), {"w": (16, 16, 1, 1)}), str(path))
    assert check_main([str(path), "--target", "dpu-kv260", "--perf", "--json"]) == 0
    perf = json.loads(capsys.readouterr().out)["performance"]
    assert [(layer["layer"], layer["cycles"]) for layer in perf["layers"]] == [("conv", 8)]
    assert perf["latency_ms"] == pytest.approx(perf["layers"][0]["ms"])
    assert check_main([str(path), "--target", "dpu-kv260", "--perf"]) == 0
    assert "estimated on dpu-kv260" in capsys.readouterr().out
    assert check_main([str(path), "--target", "finn", "--perf"]) == 2
    assert capsys.readouterr().err.strip() == ("vidconv-check: error: --perf estimates DPU performance and finn is not a "
                                               "DPU target: choose a dpu-* target")
