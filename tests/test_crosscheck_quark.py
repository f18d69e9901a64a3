"""``vidconv-export --target dpu-* --crosscheck quark`` on the shipped demo model (vic-nano-dpu, one calibration
clip): Quark XINT8's fix positions and int8 codes against ours, tensor by tensor, each difference with its rule,
the QDQ graphs compared in ONNX Runtime, both accuracies; the step not run without the flag; the flag refused
on a non-DPU target or without amd-quark, before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.cli.export import main as export_main
from vidconv_deploy.quant.qdq import quantize_onnx
from vidconv_deploy.quark.crosscheck import REFINED, UNREFINED, operator_diffs, position_diffs, quark_points
from vidconv_deploy.quark.quantize import quantize_with_quark
from vidconv_deploy.quark.rules import RULES

#: The easy-set model whose positions and codes the tests below pin (the default is now vic-nano-dpu-hard).
EASY_DPU = Path(__file__).resolve().parents[1] / "models" / "vic-nano-dpu.safetensors"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("crosscheck")
    assert export_main(["--target", "dpu-kv260", "--checkpoint", str(EASY_DPU), "--calib-clips", "1", "--calib",
                        str(tiny_dataset), "--eval", str(tiny_dataset), "--crosscheck", "quark", "--out", str(out)]) == 0
    return out / "vic-nano-dpu-dpu-kv260"


def test_positions_that_differ_and_why(bundle):
    crosscheck = json.loads((bundle / "crosscheck.json").read_text())
    early, later = crosscheck["graphs"]["early"], crosscheck["graphs"]["later"]
    assert early["positions_compared"] == early["positions_agree"] == 30 and early["position_diffs"] == []
    assert (later["positions_compared"], later["positions_agree"]) == (59, 56)
    assert [(d["tensor"], d["kind"], d["ours"], d["quark"], d["quark_calibrated"], d["rule"]) for d in later["position_diffs"]] == [
        # Quark's refinement aligns the pool's output with its input (4); vai_q keeps the calibrated 5
        ("/pool/GlobalAveragePool_output_0", "activation", 5, 4, 5, "align_pool"),
        # vai_q caps positions at 12, Quark's MinMSE does not
        ("module.stage4.0.temporal.conv.bias", "bias", 12, 13, 13, "max_fix_pos"),
        ("module.neck.0.weight", "weight", 12, 13, 13, "max_fix_pos"),
        # Quark quantizes the Flatten's output on its own; in vai_q a flatten shares its input's quantizer
        ("/Flatten_output_0", "activation", None, 5, 5, "reshape_quantizer")]
    # the streaming seam: both tools give the early output and the later input the same position
    assert crosscheck["seam"] == {"ours": 3, "quark_early_output": 3, "quark_later_input": 3}


def test_codes_that_differ_at_the_same_position(bundle):
    crosscheck = json.loads((bundle / "crosscheck.json").read_text())
    codes = {g: {d["tensor"]: (d["differing"], d["rule"]) for d in c["code_diffs"]} for g, c in crosscheck["graphs"].items()}
    # weights beyond -127.5 LSB: -128 in vai_q's [-128, 127], -127 in Quark's symmetric [-127, 127]
    assert codes == {"early": {"module.down2.0.weight": (1, "param_range"), "module.stage2.0.pw1.weight": (1, "param_range")},
                     "later": {"module.stage3.1.spatial.bias": (2, "param_range"), "module.stage3.1.pw1.weight": (3, "param_range"),
                               "module.stage3.1.pw2.weight": (1, "param_range"), "module.down4.0.weight": (5, "param_range"),
                               "module.stage4.0.pw2.weight": (2, "param_range"), "module.head.weight": (1, "param_range")}}


def test_every_output_difference_is_explained(bundle):
    crosscheck = json.loads((bundle / "crosscheck.json").read_text())
    assert crosscheck["unexplained"] == []
    outputs = {g: {t["tensor"]: t for t in c["outputs"]} for g, c in crosscheck["graphs"].items()}
    differing = {g: [n for n, t in rows.items() if t["differing"]] for g, rows in outputs.items()}
    assert (len(differing["early"]), len(differing["later"])) == (4, 17)
    pool = outputs["later"]["/pool/GlobalAveragePool_output_0"]
    assert (pool["ours_fp"], pool["quark_fp"], pool["differing"], pool["elements"], pool["max_lsb"], pool["cause"]) == (
        5, 4, 61, 256, 2, "align_pool")
    assert pool["sqnr_ours_db"] > pool["sqnr_quark_db"]  # the coarser aligned position costs Quark ~2 dB here
    assert outputs["later"]["logits"]["cause"] == "follows /Flatten_output_0 (reshape_quantizer)"
    assert outputs["later"]["/neck/neck.1/Relu_output_0"]["cause"] == "follows module.neck.0.weight (max_fix_pos)"
    assert outputs["early"]["features"]["cause"] == "follows module.down2.0.weight (param_range)"
    assert all(t["max_lsb"] <= 2 for rows in outputs.values() for t in rows.values())
    # each rule hit is stated for both tools with its source, and which one the DPU compiler follows
    assert set(crosscheck["rules"]) == {"align_pool", "max_fix_pos", "param_range", "reshape_quantizer"}
    assert crosscheck["rules"]["align_pool"] == RULES["align_pool"].__dict__
    for rule in crosscheck["rules"].values():
        assert "VAI/" in rule["vai_q"] and "QUARK/" in rule["quark"] and rule["compiler"]


def test_manifest_report_models_and_accuracy(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["cross-check (Quark)"]["status"] == "ran" and steps["cross-check (Quark)"]["unexplained"] == 0
    record = manifest["crosscheck"]
    assert [d["rule"] for d in record["graphs"]["later"]["position_diffs"]] == [
        "align_pool", "max_fix_pos", "max_fix_pos", "reshape_quantizer"]
    assert manifest["artifacts"]["crosscheck_quark_onnx"]["dir"] == "crosscheck"
    for graph in ("early", "later"):
        model = onnx.load(str(bundle / "crosscheck" / f"{graph}.onnx"))
        onnx.checker.check_model(model)
    accuracy = {row["model"]: row for row in manifest["accuracy"]}
    ours, quark = accuracy["int8 fake-quant (ONNX Runtime)"], accuracy["Quark XINT8 fake-quant (ONNX Runtime)"]
    assert ours["videos"] == quark["videos"] == 6
    assert record["accuracy"] == [ours, quark]
    assert json.loads((bundle / "crosscheck.json").read_text())["accuracy"] == [ours, quark]
    report = (bundle / "report.md").read_text()
    assert "## Cross-check: AMD Quark XINT8 (--crosscheck quark)" in report
    assert "| later | /pool/GlobalAveragePool_output_0 | activation | 5 | 4 | 5 | align_pool |" in report
    assert "ONNX Runtime runs of both QDQ graphs on the check feeds: 21 tensors differ." in report
    assert "Accuracy of both on --eval: int8 fake-quant (ONNX Runtime) top-1" in report


def test_not_run_without_the_flag(dpu_bundle):
    steps = {s["name"]: s for s in json.loads((dpu_bundle / "manifest.json").read_text())["steps"]}
    assert steps["cross-check (Quark)"] == {"name": "cross-check (Quark)", "status": "not run",
                                            "reason": "no --crosscheck quark given"}
    assert not (dpu_bundle / "crosscheck.json").exists()


def test_flag_on_a_non_dpu_target_is_one_line(tmp_path, capsys):
    assert export_main(["--target", "onnx", "--crosscheck", "quark", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["vidconv-export: error: --crosscheck applies to dpu-* targets, not onnx: drop it or choose such a target"]
    assert not any(tmp_path.iterdir())


def test_flag_without_quark_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    from vidconv_deploy.quark import env

    monkeypatch.setattr(env, "quark_version", lambda: None)  # as if amd-quark were not installed
    assert export_main(["--target", "dpu-kv260", "--crosscheck", "quark", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vidconv-export: error: --crosscheck quark: amd-quark 0.13 is not installed: {env.INSTALL_FIX}"]
    assert not any(tmp_path.iterdir())


# The rules the demo model never triggers, each on a small graph made to trigger it: our vai_q-style quantizer
# and Quark XINT8 (refined, and calibration only) on the same seeded feeds, the differences as the cross-check
# explains them.

def _graph(nodes, inits, shape, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _conv(name: str, out: str, channels: int, scale: float, rng: np.random.Generator) -> tuple[onnx.NodeProto, list]:
    """A 3x3 conv of x, its weights and bias drawn at ``scale`` (the range its output, and so its position, takes)."""
    inits = [numpy_helper.from_array((rng.standard_normal((channels, 3, 3, 3)) * scale).astype(np.float32), f"w_{name}"),
             numpy_helper.from_array((rng.standard_normal(channels) * scale).astype(np.float32), f"b_{name}")]
    return helper.make_node("Conv", ["x", f"w_{name}", f"b_{name}"], [out], pads=[1, 1, 1, 1], name=name), inits


def _crosscheck(model: onnx.ModelProto, shape: list[int], seed: int):
    """Position differences (tensor, kind, ours, Quark, Quark calibrated, rule), operator differences (node, op,
    ours, Quark, rule) and Quark's refined graph, on four seeded feeds."""
    rng = np.random.default_rng(seed)
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    ours = quantize_onnx(model, feeds)
    refined = quantize_with_quark(model, feeds, "XINT8", extra=REFINED).model
    calibrated = quantize_with_quark(model, feeds, "XINT8", extra=UNREFINED).model
    _, positions = position_diffs(model, ours.info, refined, calibrated)
    return ([(p.tensor, p.kind, p.ours, p.quark, p.quark_calibrated, p.rule) for p in positions],
            [(o.node, o.op, o.ours, o.quark, o.rule) for o in operator_diffs(model, ours.info, refined)], refined)


def test_leaky_relu_slope_rule():
    """vai_q forces 26/256 whatever alpha is; Quark writes round(alpha * 256) / 256 into its LeakyRelu: alpha 0.2
    differs (51/256), alpha 0.1 rounds to 26/256 in both."""
    conv, inits = _conv("conv", "c", 4, 1.0, np.random.default_rng(10))
    nodes = [conv, helper.make_node("LeakyRelu", ["c"], ["l"], alpha=0.2, name="leaky_02"),
             helper.make_node("LeakyRelu", ["l"], ["y"], alpha=0.1, name="leaky_01")]
    _, operators, refined = _crosscheck(_graph(nodes, inits, [1, 3, 8, 8], [1, 4, 8, 8]), [1, 3, 8, 8], 11)
    assert operators == [("leaky_02", "LeakyRelu", 26 / 256, 51 / 256, "leaky_relu_slope")]
    alphas = {n.name: n.attribute[0].f for n in refined.graph.node if n.op_type == "LeakyRelu"}
    assert alphas == {"leaky_02": 51 / 256, "leaky_01": 26 / 256}


def test_pool_scale_rule_on_a_window_quark_does_not_simulate():
    """Square windows: both tools use the same DPU factor (3x3: 7/64). A 3x5 window: vai_q's 17/256, while Quark
    simulates square windows only and keeps the exact 1/15."""
    conv, inits = _conv("conv", "c", 4, 1.0, np.random.default_rng(12))
    nodes = [conv, helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[3, 3], strides=[1, 1], name="pool_3x3"),
             helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 5], strides=[3, 5], name="pool_3x5")]
    _, operators, _ = _crosscheck(_graph(nodes, inits, [1, 3, 8, 12], [1, 4, 2, 2]), [1, 3, 8, 12], 13)
    assert operators == [("pool_3x5", "AveragePool", 17 / 256, 1 / 15, "pool_scale")]


def test_concat_alignment_rule():
    """Two convs of very different ranges into a Concat: vai_q writes both inputs at the Concat's position (3, its own
    calibration); Quark's MinMSE puts the wide input at 2, the narrow one at 7 and the output at 3, then align_concat
    moves all three to the smallest, 2."""
    rng = np.random.default_rng(25)
    (c1, i1), (c2, i2) = _conv("conv1", "c1", 4, 1.0, rng), _conv("conv2", "c2", 4, 0.05, rng)
    nodes = [c1, c2, helper.make_node("Concat", ["c1", "c2"], ["y"], axis=1, name="concat")]
    positions, operators, _ = _crosscheck(_graph(nodes, i1 + i2, [1, 3, 8, 8], [1, 8, 8, 8]), [1, 3, 8, 8], 25)
    assert positions == [("y", "activation", 3, 2, 3, "align_concat"), ("c1", "activation", 3, 2, 2, "align_concat"),
                         ("c2", "activation", 3, 2, 7, "align_concat")]
    assert operators == []


def test_add_shift_rule():
    """An Add of a wide (position 0 in both) and a narrow input (9): Quark keeps shift_read = max - min <= 7 by
    lowering the narrow one to 7 (it was calibrated at 9, where vai_q, which has no Add rule, leaves it); vai_q's cap
    at 12 explains the narrow conv's bias."""
    rng = np.random.default_rng(16)
    (c1, i1), (c2, i2) = _conv("conv1", "c1", 4, 8.0, rng), _conv("conv2", "c2", 4, 0.01, rng)
    nodes = [c1, c2, helper.make_node("Add", ["c1", "c2"], ["y"], name="add")]
    positions, operators, refined = _crosscheck(_graph(nodes, i1 + i2, [1, 3, 8, 8], [1, 4, 8, 8]), [1, 3, 8, 8], 17)
    assert positions == [("c2", "activation", 9, 7, 9, "shift_read_write"), ("b_conv2", "bias", 12, 13, 13, "max_fix_pos")]
    assert quark_points(refined)["c1"].position == 0  # shift_read 9 - 0 > 7 before the refinement, 7 - 0 after
