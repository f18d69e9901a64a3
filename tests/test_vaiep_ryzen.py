"""``vaiep-ryzen-ai``: the Ryzen AI NPU (STX/KRK) through the Vitis AI EP, with the Ryzen AI 1.5 operator table
(BF16 and XINT8 columns): a Quark XINT8 bundle with the INT8 provider options (xclbin), a BF16 bundle with the
BF16 ones (config file), the rule findings of the faithful ViC and its DPU variant, and the table's semantics."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.check import check_model
from vidconv_deploy.cli.export import main as export_main
from vidconv_deploy.quark.precision import bf16_nodes

SMALL = ["--arch", "vic-nano", "--classes", "10", "--image-size", "32", "--calib-clips", "1"]
XCLBIN = "${RYZEN_AI_INSTALLATION_PATH}/voe-4.0-win_amd64/xclbins/strix/AMD_AIE2P_4x4_Overlay.xclbin"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_dataset, monkeypatch_module):
    recipes = tmp_path_factory.mktemp("recipes")
    (recipes / "ryzen-bf16.yaml").write_text("_base_: vaiep-ryzen-ai\nquantizer: {precision: bf16}\n")
    (recipes / "ryzen-mixed.yaml").write_text("_base_: vaiep-ryzen-ai\nquantizer: {precision: mixed_bf16}\n")
    monkeypatch_module.setenv("VIDCONV_RECIPES", str(recipes))
    out = tmp_path_factory.mktemp("ryzen")
    for target in ("vaiep-ryzen-ai", "ryzen-bf16"):
        assert export_main(["--target", target, *SMALL, "--calib", str(tiny_dataset), "--out", str(out)]) == 0
    return out / "vic-nano-vaiep-ryzen-ai", out / "vic-nano-ryzen-bf16"


def test_xint8_bundle_with_the_int8_provider_options(bundles):
    bundle, _ = bundles
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["compliant"] is True
    assert (manifest["quark"]["config"], manifest["quark"]["precision"]) == ("XINT8", "int8")
    for graph in ("early", "later"):
        model = onnx.load(str(bundle / "quark" / f"{graph}.onnx"))
        scales = [float(numpy_helper.to_array(t)) for t in model.graph.initializer if t.name.endswith("_scale")]
        assert scales and all(s == 2.0 ** round(np.log2(s)) for s in scales)
    assert not (bundle / "ep" / "vitisai_config.json").exists()
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["EP config and session code"]["provider_options"] == {"xclbin": XCLBIN, "enable_cache_file_io_in_mem": 0}
    assert steps["EP config and session code"]["vitisai_config"].startswith("none: the provider options name the device")
    assert steps["EP compile"]["status"] == "not run"
    run_ep = (bundle / "ep" / "run_ep.py").read_text()
    assert f'PROVIDER_OPTIONS = {{"xclbin": "{XCLBIN}", "enable_cache_file_io_in_mem": 0}}' in run_ep
    assert "cache_dir=str(CACHE_DIR), cache_key=graph" in run_ep and "os.path.expandvars" in run_ep
    compile(run_ep, "run_ep.py", "exec")


def test_bf16_bundle_with_the_bf16_provider_options(bundles):
    _, bundle = bundles
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["quark"]["precision"] == "bf16" and set(manifest["quark"]["vs_float"]) == {"XINT8", "bf16"}
    # every Conv/Gemm of the deployed graphs computes in BF16; their INT8 counterparts stay in quark_int8/
    for graph in ("early", "later"):
        model = onnx.load(str(bundle / "quark" / f"{graph}.onnx"))
        compute = {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
        assert compute and compute <= set(bf16_nodes(model))
        assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    assert manifest["quark"]["vs_float"]["bf16"]["logits_sqnr_db"] > manifest["quark"]["vs_float"]["XINT8"]["logits_sqnr_db"]
    config = json.loads((bundle / "ep" / "vitisai_config.json").read_text())
    assert config["passes"][1]["vaiml_config"] == {"optimize_level": 1, "preferred_data_storage": "auto"}
    assert 'PROVIDER_OPTIONS = {"config_file": "vitisai_config.json"}' in (bundle / "ep" / "run_ep.py").read_text()


def test_mixed_is_refused_on_ryzen_ai(bundles, tmp_path, capsys):
    assert export_main(["--target", "ryzen-mixed", *SMALL, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "vidconv-export: error: recipe ryzen-mixed: quantizer.precision mixed_bf16: ryzen-mixed's docs list INT8 and "
        "BF16 models, not mixed ones (its rule set's quark.mixed_bf16 is false): use precision int8 or bf16"]
    assert not any(tmp_path.iterdir())


def test_faithful_vic_and_its_dpu_variant_map_in_xint8(bundles, dpu_bundle):
    """The Ryzen AI 1.5 table lists LayerNormalization and Gelu (XINT8), so both models map to the NPU whole."""
    faithful, _ = bundles
    for graph in ("early", "later"):
        for model in (faithful / f"{graph}.onnx", dpu_bundle / f"{graph}.onnx"):
            result = check_model(model, "vaiep-ryzen-ai")
            assert result.compliant and result.findings == [], (model, result.findings)


def _model(nodes, inits=(), opset=17, out_shape=(1, 4, 8, 8)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_table_columns_empty_cells_and_unlisted_ops():
    """A float graph is judged as quantized (XINT8 column): Split and Cos have empty XINT8 cells, Softplus is no
    row of the table at all."""
    nodes = [helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2, name="split"),
             helper.make_node("Cos", ["a"], ["c"], name="cos"),
             helper.make_node("Softplus", ["b"], ["d"], name="softplus"),
             helper.make_node("Concat", ["c", "d"], ["y"], axis=1, name="concat")]
    result = check_model(_model(nodes, opset=18), "vaiep-ryzen-ai")
    assert [(f.node, f.rule, f.severity, f.message) for f in result.findings] == [
        ("<graph>", "vaiep.opset", "warning", "opset 18 is above 17"),
        ("split", "vaiep.cpu-fallback", "error", "Split is listed without XINT8 support (XINT8: empty)"),
        ("cos", "vaiep.cpu-fallback", "error", "Cos is listed without XINT8 support (XINT8: empty)"),
        ("softplus", "vaiep.cpu-fallback", "error",
         "Softplus is not in the supported-operators table (its rows run Abs to Xor alphabetically)")]
    assert result.findings[1].source == ("Ryzen AI 1.5.0 Supported Operators (amd/ryzen-ai-documentation "
                                         "docs/ops_support.rst, ryzenai.docs.amd.com ops_support.html)")
    assert result.partition["devices"]["CPU"]["ops"] == 3


def test_a_float_relu_in_a_quantized_graph_is_judged_by_the_bf16_column():
    """In a QDQ graph a node without a DequantizeLinear input runs in float (BF16 on the NPU): the table has no BF16
    cell for Relu, while the quantized Conv is covered in XINT8."""
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    scale = numpy_helper.from_array(np.array(2.0 ** -4, np.float32), "scale")
    weight = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.int8), "w_q")
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w_q", "scale", "zero"], ["w"], name="dq_w"),
             helper.make_node("Conv", ["xd", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    result = check_model(_model(nodes, [zero, scale, weight]), "vaiep-ryzen-ai")
    assert [(f.node, f.message) for f in result.findings] == [("relu", "Relu is listed without BF16 support (BF16: empty)")]
