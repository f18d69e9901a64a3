"""AMD Quark 0.13 installed next to our onnx 1.23 (scripts/quark-install.sh): it imports, and its XINT8
quantizes a small graph to a valid QDQ model with power-of-two scales, on our calibration feeds."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.quark.env import extensions_dir, import_quark
from vidconv_deploy.quark.quantize import quantize_with_quark


def _conv_relu() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_both_stacks_install_in_one_environment():
    assert metadata.version("amd-quark") == "0.13"
    assert metadata.version("onnx") == "1.23.2" and metadata.version("onnxruntime") == "1.32.0"
    assert metadata.version("torch").startswith("2.13.0") and metadata.version("finn-plus") == "1.6.1"
    import_quark()
    assert list(extensions_dir().glob("quark_custom_ops_stable_abi/*.so")), "Quark's ops are compiled into the venv"


def test_xint8_quantizes_a_tiny_graph_with_power_of_two_scales():
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    result = quantize_with_quark(_conv_relu(), feeds, "XINT8")
    onnx.checker.check_model(result.model)
    ops = [n.op_type for n in result.model.graph.node]
    # Conv + Relu fuse (no QDQ between them); the input, weight, bias and output are quantized.
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 4 and "Relu" in ops
    scales = {t.name: float(numpy_helper.to_array(t)) for t in result.model.graph.initializer if t.name.endswith("_scale")}
    assert set(scales) == {"x_scale", "w_scale", "b_scale", "y_scale"}
    assert all(s == 2.0 ** round(np.log2(s)) for s in scales.values())
    zero_points = [numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name.endswith("_zero_point")]
    assert all(z.dtype == np.int8 and int(z) == 0 for z in zero_points)  # symmetric int8
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, feeds[0])[0]
    reference = ort.InferenceSession(_conv_relu().SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    assert np.abs(out - reference).max() <= scales["y_scale"] * 4
    assert result.options["config"] == "XINT8" and result.options["extra_options"]["UseRandomData"] is False


def test_unknown_config_is_refused():
    with pytest.raises(ValueError, match="use one of XINT8, VINT8"):
        quantize_with_quark(_conv_relu(), [], "XINT16")
