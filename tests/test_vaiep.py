"""``vidconv-export --target vaiep-*`` on the shipped demo models: a Quark-quantized bundle per target,
the EP's config and session code, the compile step recorded as not run here, and the rule findings
of the faithful ViC and its DPU variant on each target."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from vidconv_deploy.check import check_model
from vidconv_deploy.cli.export import main as export_main


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("vaiep")
    codes = {t: export_main(["--target", t, "--calib-clips", "1", "--calib", str(tiny_dataset), "--out", str(out),
                             *(["--eval", str(tiny_dataset)] if t == "vaiep-ve2-npu" else [])])
             for t in ("vaiep-ve2-npu", "vaiep-vek280")}
    # the bundles of the targets' default models (vic-nano, vic-nano-dpu or their retrained -hard versions)
    return codes, {t: next(out.glob(f"vic-nano*-{t}")) for t in codes}


@pytest.mark.parametrize("target, config", [("vaiep-ve2-npu", "VINT8"), ("vaiep-vek280", "XINT8")])
def test_each_target_gets_a_quark_bundle(bundles, target, config):
    codes, dirs = bundles
    assert codes[target] == 0
    bundle = dirs[target]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["compliant"] is True and manifest["quark"]["config"] == config
    assert manifest["quark"]["versions"]["amd-quark"] == "0.13"
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["EP compile"]["status"] == "not run" and "no VitisAIExecutionProvider" in steps["EP compile"]["reason"]
    for graph in ("early", "later"):
        model = onnx.load(str(bundle / "quark" / f"{graph}.onnx"))
        onnx.checker.check_model(model)
        scales = [float(numpy_helper.to_array(t)) for t in model.graph.initializer if t.name.endswith("_scale")]
        assert scales and all(s == 2.0 ** round(np.log2(s)) for s in scales)
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # static shapes
    run_ep = (bundle / "ep" / "run_ep.py").read_text()
    assert '"session.disable_cpu_ep_fallback", "1"' in run_ep and "VitisAIExecutionProvider" in run_ep
    compile(run_ep, "run_ep.py", "exec")
    assert "Every node maps to the device." in (bundle / "report.md").read_text()


def test_gen2_npu_config_and_accuracy(bundles):
    _, dirs = bundles
    bundle = dirs["vaiep-ve2-npu"]
    config = json.loads((bundle / "ep" / "vitisai_config.json").read_text())
    assert config["target"] == "VAIML" and config["passes"][1]["vaiml_config"]["device"] == "ve2"
    assert "PROVIDER_OPTIONS = {\"config_file\": \"vitisai_config.json\", \"target\": \"VAIML\"}" in (bundle / "ep" / "run_ep.py").read_text()
    accuracy = {row["model"]: row for row in json.loads((bundle / "manifest.json").read_text())["accuracy"]}
    assert set(accuracy) == {"float", "deploy", "Quark QDQ (ONNX Runtime CPU)"}
    assert accuracy["Quark QDQ (ONNX Runtime CPU)"]["videos"] == 6


def test_vek280_uses_the_board_images_config(bundles):
    _, dirs = bundles
    bundle = dirs["vaiep-vek280"]
    assert not (bundle / "ep" / "vitisai_config.json").exists()
    assert 'PROVIDER_OPTIONS = {"config_file": "/etc/vaip_config.json"}' in (bundle / "ep" / "run_ep.py").read_text()


def test_faithful_vic_falls_back_on_vek280_and_maps_on_the_gen2_npu(bundles):
    _, dirs = bundles
    faithful = dirs["vaiep-ve2-npu"] / "early.onnx"
    on_vek280 = check_model(faithful, "vaiep-vek280")
    assert not on_vek280.compliant
    assert [(f.op_type, f.rule) for f in on_vek280.findings] == [
        ("LayerNorm", "vaiep.cpu-fallback"), ("LayerNorm", "vaiep.cpu-fallback"), ("GELU", "vaiep.cpu-fallback"),
        ("LayerNorm", "vaiep.cpu-fallback"), ("LayerNorm", "vaiep.cpu-fallback"), ("GELU", "vaiep.cpu-fallback"),
        ("LayerNorm", "vaiep.cpu-fallback")]
    first = on_vek280.findings[0]
    assert first.node == "/stem/stem.1/ReduceMean../stem/stem.1/Add_1"  # with the affine Mul/Add
    assert first.message == "leaves the DPU: LayerNorm has no DPU engine and no board CPU kernel (dpu.unsupported-op)"
    assert on_vek280.partition["devices"]["CPU"] == {"ops": 7, "subgraphs": 7}
    assert check_model(faithful, "vaiep-ve2-npu").findings == []
    variant = dirs["vaiep-vek280"] / "early.onnx"
    assert check_model(variant, "vaiep-vek280").findings == []
    assert check_model(variant, "vaiep-ve2-npu").findings == []


def test_gen2_table_names_unlisted_and_unverified_ops():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk"),
             helper.make_node("Softmax", ["v"], ["y"], name="softmax")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(np.array([2], np.int64), "k")])
    result = check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "vaiep-ve2-npu")
    assert [(f.node, f.rule, f.severity) for f in result.findings] == [
        ("topk", "vaiep.unverified", "warning"), ("softmax", "vaiep.unverified", "warning")]
    assert result.findings[1].message == "Softmax sorts after Sin, past the rows of the table this rule set was written from"


def test_vidconv_check_reports_an_op_after_sin_as_unverified(tmp_path, capsys):
    """vidconv-check on the Gen 2 NPU: an op past the rows the table was read through (Sin) is a warning, not a
    fallback; the graph stays compliant (exit 0) and the JSON names the node, the rule and the table's source."""
    from onnx import TensorProto, helper

    from vidconv_deploy.cli.check import main as check_main

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),  # a listed row: maps
             helper.make_node("Tanh", ["r"], ["y"], name="tanh")]  # sorts after Sin, not in the rows read
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    path = tmp_path / "tanh.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert check_main([str(path), "--target", "vaiep-ve2-npu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["compliant"] is True
    assert [(f["node"], f["op_type"], f["rule"], f["severity"], f["message"]) for f in result["findings"]] == [
        ("tanh", "Tanh", "vaiep.unverified", "warning",
         "Tanh sorts after Sin, past the rows of the table this rule set was written from")]
    assert result["findings"][0]["source"] == "Vitis AI 6.2 docs, additional_information/ops_support.html (Supported Operators)"


def test_gen2_rows_added_from_the_current_table():
    """GridSample is listed FP32/BF16 only (INT8: N/A): a float graph, judged as quantized, falls back there."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("GridSample", ["x", "grid"], ["y"], name="grid_sample")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]),
                                           helper.make_tensor_value_info("grid", TensorProto.FLOAT, [1, 4, 4, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])])
    result = check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "vaiep-ve2-npu")
    assert [(f.node, f.rule, f.message) for f in result.findings] == [
        ("grid_sample", "vaiep.cpu-fallback", "GridSample is listed without INT8 support (INT8: N/A)")]
