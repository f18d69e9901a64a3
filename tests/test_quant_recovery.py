"""INT8 accuracy recovery for the DPU quantizer: vai_q_pytorch's bias correction and fast finetune.

The graph is built so that plain calibration leaves a visible error: one large weight sets the second conv's
weight position, and that conv's other weights, small and positive, mostly round to zero -- a coherent loss
on post-ReLU inputs that a per-channel bias absorbs (bias correction) and a re-learned rounding absorbs
better (fast finetune). Errors are measured on feeds that are not the calibration feeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import types

import numpy as np
import pytest
from onnx import numpy_helper

from test_quantizer import Net
from vidconv_deploy.cli.export import main as export_main
from vidconv_deploy.errors import UserError
from vidconv_deploy.fixpoint import arithmetic as fixpoint
from vidconv_deploy.quant import quantize_onnx
from vidconv_deploy.reference import compare_with_onnxruntime, layer_report
from vidconv_deploy.targets.families import quant_recovery, validate_dpu
from vidconv_deploy.targets.registry import get_target

METHODS = ("none", "bias_correction", "fast_finetune")


def recovery_net() -> tuple[Net, str]:
    """Conv+ReLU (32 channels), the hard conv+ReLU (8 channels), global pool, Flatten, Gemm head."""
    net = Net([1, 3, 8, 8])
    a = net.op("Relu", [net.conv("x", 3, 32)])
    w = net.rng.uniform(0.0, 0.7 * 2**-6, (8, 32, 3, 3))
    w[0, 0, 1, 1] = 1.0  # the weight position becomes 7: the others are 0 to 1.4 LSB
    hard = net.op("Relu", [net.conv(a, 32, 8, weight=w)])
    pooled = net.op("Flatten", [net.op("GlobalAveragePool", [hard])], axis=1)
    head = net.const((net.rng.standard_normal((5, 8)) / 3).astype(np.float32))
    y = net.op("Gemm", [pooled, head, net.const(np.full(5, 0.1, np.float32))], transB=1)
    return net, y


@pytest.fixture(scope="module")
def recovered():
    net, y = recovery_net()
    model = net.model(y)
    calib, check = net.feeds(8, seed=1), net.feeds(4, seed=2)
    results = {m: quantize_onnx(model, calib, recovery=m) for m in METHODS}
    sqnr = {m: {s.float_tensor: s.sqnr_db for s in layer_report(model, r.model, check, rounding="onnxruntime")}
            for m, r in results.items()}
    return types.SimpleNamespace(model=model, calib=calib, check=check, results=results, sqnr=sqnr, output=y)


def test_bias_correction_and_fast_finetune_lower_the_int8_error(recovered):
    sqnr, out = recovered.sqnr, recovered.output
    # plain calibration: the hard conv's output at 21.5 dB, the logits at 24.2 dB
    assert sqnr["none"]["relu8"] < 23 and sqnr["none"][out] < 26
    # bias correction: +5.5 dB on the hard conv, the pooled features nearly exact in the mean (+20 dB), logits +4 dB
    assert sqnr["bias_correction"]["relu8"] > sqnr["none"]["relu8"] + 5
    assert sqnr["bias_correction"]["globalaveragepool9"] > sqnr["none"]["globalaveragepool9"] + 15
    assert sqnr["bias_correction"][out] > sqnr["none"][out] + 3.5
    # fast finetune: better again on the hard conv (+7.5 dB) and the logits (+5.5 dB)
    assert sqnr["fast_finetune"]["relu8"] > sqnr["bias_correction"]["relu8"] + 1.5
    assert sqnr["fast_finetune"][out] > sqnr["none"][out] + 5
    ff = recovered.results["fast_finetune"].info["onnx"]["recovery"]
    assert ff["net_loss_after"][0] < 0.65 * ff["net_loss_before"][0]  # 0.0251 vs 0.0442 (RMSE of the logits)
    assert [(r["node"], r["kept"] > 0) for r in ff["layers"]] == [("conv3_node", False), ("conv7_node", True), ("gemm13_node", True)]


def test_recovery_keeps_every_fix_position_and_the_shift_rules_hold(recovered):
    plain = recovered.results["none"].info
    for method in ("bias_correction", "fast_finetune"):
        info = recovered.results[method].info
        assert info["param"] == plain["param"] and info["output"] == plain["output"]
        assert info["onnx"]["adjustments"] == plain["onnx"]["adjustments"]
        for conv in info["onnx"]["convs"].values():
            shift_bias_min = min(0, -(24 - (8 + conv["shift_cut"])))
            assert fixpoint.SHIFT_CUT_MIN <= conv["shift_cut"] <= fixpoint.SHIFT_CUT_MAX
            assert shift_bias_min <= conv["shift_bias"] <= fixpoint.SHIFT_BIAS_MAX


def int8_initializers(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_quantized")}


def test_recovered_qdq_models_are_bit_exact_with_the_integer_reference(recovered):
    plain = int8_initializers(recovered.results["none"].model)
    changed = {}
    for method in ("bias_correction", "fast_finetune"):
        model = recovered.results[method].model
        report = compare_with_onnxruntime(model, recovered.check)
        assert report.bit_exact and not report.not_exact_in_float32
        codes = int8_initializers(model)
        changed[method] = sorted(n for n in plain if not np.array_equal(plain[n], codes[n]))
    # bias correction moves biases only (every conv's and the Gemm's); fast finetune moves weights too
    assert changed["bias_correction"] == ["b2_quantized", "b6_quantized", "c12_quantized"]
    assert {"w5_quantized", "b6_quantized"} <= set(changed["fast_finetune"])


def test_quant_info_says_which_recovery_ran(recovered):
    flags = {m: (r.info["bias_corrected"], r.info["fast_finetuned"], r.info["onnx"]["recovery"]["method"])
             for m, r in recovered.results.items()}
    assert flags == {"none": (False, False, "none"), "bias_correction": (True, False, "bias_correction"),
                     "fast_finetune": (False, True, "fast_finetune")}
    assert recovered.results["bias_correction"].info["onnx"]["recovery"]["copied_parameters"] == {}  # none shared
    layers = recovered.results["bias_correction"].info["onnx"]["recovery"]["layers"]
    # the Gemm's bias (0.1 everywhere, position 10: 102 LSB) saturates int8 in one channel once corrected
    assert [(r["node"], r["bias"], r["fix_point"], r["saturated_channels"]) for r in layers] == [
        ("conv3_node", "b2", 9, 0), ("conv7_node", "b6", 9, 0), ("gemm13_node", "c12", 10, 1)]
    assert layers[1]["max_correction_lsb"] > 20  # the hard conv's lost mean: 26.7 bias LSB


def test_a_bias_shared_by_two_convs_becomes_one_per_conv_and_each_is_corrected():
    """onnxsim merges equal initializers (the zero biases of folded BatchNorms); on the DPU each conv has its own."""
    net = Net([1, 3, 8, 8], seed=3)
    shared = net.const(np.zeros(8, np.float32), "b")
    w = net.rng.uniform(0.0, 0.7 * 2**-6, (8, 8, 3, 3)).astype(np.float32)
    w[0, 0, 1, 1] = 1.0
    first = net.op("Relu", [net.op("Conv", ["x", net.const(net.rng.standard_normal((8, 3, 3, 3)).astype(np.float32) / 5, "w"),
                                            shared], kernel_shape=[3, 3], pads=[1] * 4)])
    y = net.op("Conv", [first, net.const(w, "w"), shared], kernel_shape=[3, 3], pads=[1] * 4)
    model, feeds = net.model(y), net.feeds(4, seed=1)
    plain, fixed = quantize_onnx(model, feeds), quantize_onnx(model, feeds, recovery="bias_correction")
    assert fixed.info["onnx"]["recovery"]["copied_parameters"] == {"conv6_node/bias": "b1"}
    assert fixed.info["param"] == {**plain.info["param"], "conv6_node/bias": plain.info["param"]["b1"]}
    codes = int8_initializers(fixed.model)
    assert not np.array_equal(codes["b1_quantized"], codes["conv6_node/bias_quantized"])
    assert compare_with_onnxruntime(fixed.model, net.feeds(2, seed=2)).bit_exact
    assert [i.name for i in model.graph.initializer].count("conv6_node/bias") == 0  # the caller's graph is not touched


def test_recovery_reads_feeds_given_once_as_a_generator(recovered):
    again = quantize_onnx(recovered.model, (feed for feed in recovered.calib), recovery="bias_correction")
    assert again.model.SerializeToString() == recovered.results["bias_correction"].model.SerializeToString()


def test_unknown_recovery_is_a_user_error(recovered):
    with pytest.raises(UserError, match=r"^unknown INT8 recovery 'adaround'; use one of none, bias_correction, "
                                        r"fast_finetune$"):
        quantize_onnx(recovered.model, recovered.calib, recovery="adaround")


def test_recovery_comes_from_the_flag_else_the_recipe():
    target = get_target("dpu-kv260")
    assert target.quantizer["recovery"] == "none"
    assert quant_recovery(target, argparse.Namespace(quant_recovery=None)) == "none"
    assert quant_recovery(target, argparse.Namespace(quant_recovery="fast_finetune")) == "fast_finetune"
    assert quant_recovery(target, argparse.Namespace()) == "none"  # options built without the flag (bench/)
    bad = types.SimpleNamespace(name="dpu-test", quantizer={"recovery": "adaround"})
    with pytest.raises(UserError, match=r"^recipe dpu-test: quantizer.recovery 'adaround' is not one of none, "
                                        r"bias_correction, fast_finetune; fix the recipe or give --quant-recovery$"):
        validate_dpu(bad, argparse.Namespace(quant_recovery=None))


def test_quant_recovery_flag_is_for_dpu_targets_only(capsys):
    assert export_main(["--target", "onnx", "--quant-recovery", "bias_correction"]) == 2
    assert "--quant-recovery applies to dpu-* targets, not onnx: drop it or choose such a target" in capsys.readouterr().err


def test_dpu_export_with_bias_correction_records_it_and_stays_bit_exact(dpu_bundle, tiny_dataset, tmp_path):
    """--start-from quantize on a copy of the shared bundle: the manifest and quant_info say what ran."""
    shutil.copytree(dpu_bundle, tmp_path / dpu_bundle.name)
    code = export_main(["--target", "dpu-kv260", "--arch", "vic-nano-dpu", "--classes", "10", "--image-size", "32",
                        "--calib-clips", "2", "--calib", str(tiny_dataset), "--out", str(tmp_path), "--start-from", "quantize",
                        "--stop-after", "integer_reference", "--quant-recovery", "bias_correction"])
    assert code == 0
    bundle = tmp_path / dpu_bundle.name
    manifest = json.loads((bundle / "manifest.json").read_text())
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["quantize"]["recovery"] == "bias_correction"
    assert all(r["bit_exact_vs_onnxruntime"] for r in manifest["reference"].values())
    info = json.loads((bundle / "quant_info.json").read_text())
    assert {g: (i["bias_corrected"], i["fast_finetuned"]) for g, i in info.items()} == {"early": (True, False), "later": (True, False)}
    plain = json.loads((dpu_bundle / "quant_info.json").read_text())
    for graph, i in info.items():  # every position kept; the merged zero biases became one per conv at theirs
        copies = i["onnx"]["recovery"]["copied_parameters"]
        assert copies and all(name.endswith("/Conv/bias") for name in copies)
        assert i["param"] == {**plain[graph]["param"], **{c: plain[graph]["param"][s] for c, s in copies.items()}}
