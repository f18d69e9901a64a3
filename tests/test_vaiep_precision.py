"""Mixed INT8/BF16 on the Versal AI Edge Gen 2 NPU (``quantizer.precision`` of a vaiep recipe): the BF16 nodes
really are BF16 in the graph Quark writes (Casts to bfloat16 that ONNX Runtime's CPU runs), the automatic choice,
the bundle's INT8 graphs and both forms measured against float, and the recipe checks that run before any work."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.check import check_model
from vidconv_deploy.check.ruleset import load_ruleset
from vidconv_deploy.cli.export import main as export_main
from vidconv_deploy.quark.precision import (Precision, bf16_nodes, choose_bf16_nodes, int8_errors, int8_only_missing,
                                            simulate_bf16)
from vidconv_deploy.quark.quantize import quantize_with_quark

SMALL = ["--arch", "vic-nano", "--classes", "10", "--image-size", "32"]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def recipes(tmp_path_factory, monkeypatch_module):
    folder = tmp_path_factory.mktemp("recipes")
    (folder / "ve2-mixed.yaml").write_text("_base_: vaiep-ve2-npu\nquantizer: {precision: mixed_bf16}\n")
    (folder / "ve2-mixed-unknown.yaml").write_text("_base_: vaiep-ve2-npu\nquantizer: {precision: mixed_bf16, "
                                                   "bf16_nodes: [/stem/stem.0/Conv, /no/such/Conv]}\n")
    (folder / "vek280-mixed.yaml").write_text("_base_: vaiep-vek280\nquantizer: {precision: mixed_bf16}\n")
    (folder / "ve2-fp8.yaml").write_text("_base_: vaiep-ve2-npu\nquantizer: {precision: fp8}\n")
    (folder / "ve2-int8-named.yaml").write_text("_base_: vaiep-ve2-npu\nquantizer: {bf16_nodes: [/stem/stem.0/Conv]}\n")
    monkeypatch_module.setenv("VIDCONV_RECIPES", str(folder))
    return folder


@pytest.fixture(scope="module")
def mixed_bundle(recipes, tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("mixed")
    assert export_main(["--target", "ve2-mixed", *SMALL, "--calib-clips", "2", "--calib", str(tiny_dataset),
                        "--eval", str(tiny_dataset), "--out", str(out)]) == 0
    return out / "vic-nano-ve2-mixed"


def _cast_inputs(model: onnx.ModelProto, node_name: str) -> list[tuple[str, int]]:
    """(op type, Cast 'to') of each producer of the node's inputs (0 for a non-Cast)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    return [(producer[i].op_type, next((a.i for a in producer[i].attribute if a.name == "to"), 0))
            for i in node.input if i in producer]


def test_mixed_bundle_has_its_bf16_nodes_in_the_graph(mixed_bundle):
    manifest = json.loads((mixed_bundle / "manifest.json").read_text())
    quark = manifest["quark"]
    assert (quark["config"], quark["precision"]) == ("VINT8", "mixed_bf16")
    # Auto: the candidates are the nodes with the worst INT8 input SQNR (the first LayerNorm's x - mean, whose mean
    # VINT8 rounds to zero: 0 dB; the LayerNorms' mean of squares) ...
    choice = quark["bf16_choice"]
    assert [c["node"] for c in choice["early"]["candidates"][:2]] == ["/down2/down2.0/Sub", "/stem/stem.1/ReduceMean_1"]
    assert choice["early"]["candidates"][0]["int8_input_sqnr_db"] == 0.0
    assert [c["node"] for c in choice["later"]["candidates"][:2]] == [
        "/stage3/stage3.1/norm/ReduceMean_1", "/stage3/stage3.0/norm/ReduceMean_1"]
    assert len(choice["early"]["candidates"]) == len(choice["later"]["candidates"]) == 6  # 3 per node of bf16_auto 2
    # ... and the selection keeps those whose BF16 raises the logits' SQNR: one node, +4.7 dB; then none adds 0.05 dB
    assert choice["early"]["selection"] == [{"node": None, "logits_sqnr_db": 21.713},
                                            {"node": "/stem/stem.1/ReduceMean_1", "logits_sqnr_db": 26.403}]
    assert choice["later"]["selection"] == [{"node": None, "logits_sqnr_db": 21.713}]
    assert choice["early"]["by"] == choice["later"]["by"] == "auto" and choice["early"]["without_int8"] == []
    # what is BF16 in the graphs Quark wrote (read from them)
    assert quark["bf16_nodes"] == {"early": {"/stem/stem.1/ReduceMean_1": "ReduceMean"}, "later": {}}
    for graph, nodes in quark["bf16_nodes"].items():
        mixed = onnx.load(str(mixed_bundle / "quark" / f"{graph}.onnx"))
        int8 = onnx.load(str(mixed_bundle / "quark_int8" / f"{graph}.onnx"))
        onnx.checker.check_model(mixed)
        assert bf16_nodes(mixed) == nodes and bf16_nodes(int8) == {}
        for name in nodes:  # each input a Cast back to float (TensorProto.FLOAT = 1) of a bfloat16 tensor
            assert {op for op, _ in _cast_inputs(mixed, name)} == {"Cast"}
            assert {to for _, to in _cast_inputs(mixed, name)} == {TensorProto.FLOAT}
            assert {op for op, _ in _cast_inputs(int8, name)} == {"DequantizeLinear"}
        assert not any(n.domain == "com.amd.quark" for n in mixed.graph.node)  # standard ops: any ONNX Runtime runs it


def test_mixed_is_closer_to_float_than_int8_and_both_are_reported(mixed_bundle):
    manifest = json.loads((mixed_bundle / "manifest.json").read_text())
    measured = manifest["quark"]["vs_float"]
    assert set(measured) == {"VINT8", "mixed_bf16"}
    assert measured["mixed_bf16"]["logits_sqnr_db"] > measured["VINT8"]["logits_sqnr_db"] > 15
    # the selection's trials are copies of the INT8 graphs made BF16, and Quark's mixed graphs compute the same
    assert (measured["VINT8"]["logits_sqnr_db"], measured["mixed_bf16"]["logits_sqnr_db"]) == (21.713, 26.403)
    assert manifest["quark"]["vs_float_on"] == "2 calibration clips, streaming split, ONNX Runtime CPU"
    assert manifest["artifacts"]["quark_int8_onnx"]["dir"] == "quark_int8"
    accuracy = {row["model"]: row for row in manifest["accuracy"]}
    assert accuracy["Quark QDQ (ONNX Runtime CPU)"]["videos"] == accuracy["Quark INT8 QDQ (ONNX Runtime CPU)"]["videos"] == 6
    assert manifest["ep_compile"]["ran"] is False
    # the deployed graphs checked node by node: no node falls back; between Q/DQ pairs a LayerNorm is no longer
    # one pattern, and its Sub and Sqrt sort after Sin, past the Gen 2 table's rows read (warnings)
    findings = [f for fs in manifest["quark"]["deployed_findings"].values() for f in fs]
    assert findings and {(f["op_type"], f["rule"], f["severity"]) for f in findings} == {
        ("Sub", "vaiep.unverified", "warning"), ("Sqrt", "vaiep.unverified", "warning")}
    assert manifest["verdict"]["checks"]["compliant_bf16"] == {"holds": True, "detail": "mixed_bf16 graphs: every op maps",
                                                               "step": "quantize (Quark)"}
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["EP compile"]["status"] == "not run" and steps["quantize (Quark)"]["bf16_nodes"] == 1
    report = (mixed_bundle / "report.md").read_text()
    assert f"| mixed_bf16 | {measured['mixed_bf16']['logits_sqnr_db']:.2f} |" in report
    assert f"| VINT8 | {measured['VINT8']['logits_sqnr_db']:.2f} |" in report
    assert "BF16 nodes of the early graph (auto): `/stem/stem.1/ReduceMean_1` (ReduceMean)" in report
    assert "The EP compile did not run: the BF16 nodes' placement and numerics on the NPU are unverified" in report
    config = json.loads((mixed_bundle / "quark" / "quark_config.json").read_text())
    assert config["options"]["BF16QDQToCast"] is True and "enable_f32_to_bf16_conversion" in config["bf16_source"]


def test_recipe_nodes_are_exactly_the_bf16_ones(mixed_bundle):
    later = onnx.load(str(mixed_bundle / "later.onnx"))
    rng = np.random.default_rng(0)
    shape = [d.dim_value for d in later.graph.input[0].type.tensor_type.shape.dim]
    feeds = [{later.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    named = ["/stage3/stage3.0/pw1/Conv", "/stage3/stage3.0/pw2/Conv"]
    precision = Precision.of("t", {"precision": "mixed_bf16", "bf16_nodes": named}, True)
    assert choose_bf16_nodes(later, precision, []) == named
    mixed = quantize_with_quark(later, feeds, "VINT8", bf16_nodes=named).model
    assert bf16_nodes(mixed) == {"/stage3/stage3.0/pw1/Conv": "Conv", "/stage3/stage3.0/pw2/Conv": "Conv"}
    bf16_weights = {t.name for t in mixed.graph.initializer if t.data_type == TensorProto.BFLOAT16}
    # pw2's weight is the layer scale folded in (_v_146), its bias an initializer onnxsim merged with an equal one
    assert bf16_weights == {"module.stage3.0.pw1.weight_quantized", "module.stage3.0.pw1.bias_quantized",
                            "_v_146_quantized", "module.stage3.0.spatial.bias_quantized"}
    session = ort.InferenceSession(mixed.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.isfinite(session.run(None, feeds[0])[0]).all()
    # the automatic choice measures candidates on a copy of the INT8 graph made BF16 there: the same numbers as
    # Quark's own mixed graph, bit for bit
    int8 = quantize_with_quark(later, feeds, "VINT8").model
    simulated = ort.InferenceSession(simulate_bf16(int8, later, named).SerializeToString(), providers=["CPUExecutionProvider"])
    for feed in feeds:
        assert np.array_equal(simulated.run(None, feed)[0], session.run(None, feed)[0])


def _prelu_graph() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.full((8, 1, 1), 0.25, np.float32), "slope")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("PRelu", ["c", "slope"], ["y"], name="prelu")]
    graph = helper.make_graph(nodes, "prelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_an_op_without_int8_goes_bf16_and_stays_on_the_npu():
    """PRelu is listed FP32/BF16 Y, INT8 N/A (Vitis AI 6.2 ops_support): quantized it falls back, in BF16 it maps."""
    model = _prelu_graph()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    table = load_ruleset("vaiep-ve2-npu").data["table"]["ops"]
    assert int8_only_missing(model, table) == ["prelu"]
    int8 = quantize_with_quark(model, feeds, "VINT8").model
    errors = int8_errors(int8, model, feeds)
    assert {e.node for e in errors} == {"conv", "prelu"}
    chosen = choose_bf16_nodes(model, Precision.of("t", {"precision": "mixed_bf16", "bf16_auto": 0}, True), ["prelu"])
    assert chosen == ["prelu"]
    mixed = quantize_with_quark(model, feeds, "VINT8", bf16_nodes=chosen).model
    assert bf16_nodes(mixed) == {"prelu": "PRelu"}
    on_int8 = check_model(int8, "vaiep-ve2-npu")
    assert [(f.node, f.rule, f.message) for f in on_int8.findings] == [
        ("prelu", "vaiep.cpu-fallback", "PRelu is listed without INT8 support (INT8: N/A)")]
    assert check_model(mixed, "vaiep-ve2-npu").findings == []


def test_int8_errors_rank_by_the_worst_input():
    model = _prelu_graph()
    feeds = [{"x": np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)}]
    int8 = quantize_with_quark(model, feeds, "VINT8").model
    errors = {e.node: e for e in int8_errors(int8, model, feeds)}
    # the conv's inputs: x and w; its worst one is named with its float name (w, not w_quantized)
    assert errors["conv"].tensor in {"x", "w"} and errors["prelu"].tensor in {"c", "slope"}
    assert all(0 < e.sqnr_db < 60 for e in errors.values())


def test_whole_graph_bf16_has_no_int8():
    model = _prelu_graph()
    feeds = [{"x": np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)}]
    bf16 = quantize_with_quark(model, feeds, "BF16").model
    assert bf16_nodes(bf16) == {"conv": "Conv", "prelu": "PRelu"}
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in bf16.graph.node)
    assert all(n.name for n in bf16.graph.node)  # Quark's unnamed Casts take the names of the pairs they replace


@pytest.mark.parametrize("target, message", [
    ("vek280-mixed", "recipe vek280-mixed: quantizer.precision mixed_bf16 needs BF16, which vek280-mixed's device does "
                     "not compute (its rule set's quark.bf16 is false): use precision int8"),
    ("ve2-fp8", "recipe ve2-fp8: quantizer.precision 'fp8' is not one of int8, bf16, mixed_bf16: fix the recipe's "
                "quantizer section (export/README.md)"),
    ("ve2-int8-named", "recipe ve2-int8-named: quantizer.bf16_nodes applies to precision mixed_bf16, not int8: fix the "
                       "recipe's quantizer section (export/README.md)")])
def test_bad_precision_recipes_are_refused_before_any_work(recipes, tmp_path, capsys, target, message):
    assert export_main(["--target", target, *SMALL, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"vidconv-export: error: {message}"]
    assert not any(tmp_path.iterdir())


def test_an_unknown_bf16_node_is_one_line_and_leaves_no_bundle(recipes, tmp_path, capsys, tiny_dataset):
    assert export_main(["--target", "ve2-mixed-unknown", *SMALL, "--calib-clips", "1", "--calib", str(tiny_dataset),
                        "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "vidconv-export: error: recipe ve2-mixed-unknown: quantizer.bf16_nodes names '/no/such/Conv', a node of neither "
        "streaming graph: give node names of early.onnx or later.onnx in the bundle")
    assert [p.name for p in tmp_path.iterdir()] == []
