"""The vai_q-style quantizer on small ONNX graphs: where it quantizes, the positions it picks, the QDQ form.

VAI = Xilinx/Vitis-AI src/vai_quantizer/vai_q_pytorch (Vitis AI 3.5).
"""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.errors import UserError
from vidconv_deploy.quant import QuantResult, quantize_onnx, write_quant_info
from vidconv_deploy.fixpoint.kernels import log2_exact


class Net:
    """A float NCHW graph under construction; ``x`` is the input, weights are random (fan-in scaled)."""

    def __init__(self, shape: list[int], seed: int = 0, input_name: str = "x") -> None:
        self.rng = np.random.default_rng(seed)
        self.shape = shape
        self.input_name = input_name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{out}_node", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, group: int = 1,
             pad: int | None = None, bias: bool = True, weight: np.ndarray | None = None, bias_value: np.ndarray | None = None) -> str:
        pad = dilation * (k - 1) // 2 if pad is None else pad
        if weight is None:
            weight = self.rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)
        inputs = [x, self.const(weight.astype(np.float32), "w")]
        if bias:
            b = self.rng.standard_normal(cout) * 0.1 if bias_value is None else bias_value
            inputs.append(self.const(np.asarray(b, dtype=np.float32), "b"))
        return self.op("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride], dilations=[dilation, dilation],
                       pads=[pad] * 4, group=group)

    def model(self, *outputs: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info(self.input_name, TensorProto.FLOAT, self.shape)],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model

    def feeds(self, count: int, seed: int = 1, scale: float = 1.0) -> list[dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        return [{self.input_name: (rng.standard_normal(self.shape) * scale).astype(np.float32)} for _ in range(count)]


def quantize(net: Net, *outputs: str, feeds=None, **kw) -> QuantResult:
    return quantize_onnx(net.model(*outputs), feeds or net.feeds(2), **kw)


def ort_run(model: onnx.ModelProto, feed: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for name in outputs or []:
        elem = TensorProto.INT8 if name.endswith("_quantized") else TensorProto.FLOAT
        model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def nodes_of(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def producer_op(model: onnx.ModelProto, tensor: str) -> str:
    return next(n.op_type for n in model.graph.node if tensor in n.output)


def every_op_net() -> tuple[Net, str]:
    """Conv+ReLU, dilated depthwise, spatial tile concat, Add, LeakyReLU, MaxPool, AvgPool, ReLU6, Mul by a
    constant, global pool, Flatten, Gemm."""
    net = Net([1, 3, 16, 16])
    a = net.op("Relu", [net.conv("x", 3, 8)])
    d = net.conv(a, 8, 8, k=3, dilation=2, group=8)
    tile = net.op("Concat", [d, d], axis=3)
    half = net.op("Slice", [tile, net.const(np.array([0], np.int64)), net.const(np.array([16], np.int64)),
                            net.const(np.array([3], np.int64))])
    s = net.op("Add", [a, net.conv(half, 8, 8, k=1)])
    s = net.op("LeakyRelu", [s], alpha=0.1)
    s = net.op("MaxPool", [s], kernel_shape=[2, 2], strides=[2, 2])
    s = net.op("AveragePool", [s], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1)
    s = net.op("Clip", [s, net.const(np.float32(0.0)), net.const(np.float32(6.0))])
    s = net.op("Mul", [s, net.const((np.arange(8, dtype=np.float32) / 8 + 0.5).reshape(1, 8, 1, 1))])
    g = net.op("Flatten", [net.op("GlobalAveragePool", [s])], axis=1)
    w = net.const((net.rng.standard_normal((5, 8)) / 3).astype(np.float32))
    y = net.op("Gemm", [g, w, net.const(np.zeros(5, np.float32))], transB=1)
    return net, y


def test_qdq_model_is_symmetric_power_of_two_int8_and_runs_in_onnxruntime():
    net, y = every_op_net()
    result = quantize(net, y)
    model = result.model
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qdq = nodes_of(model, "QuantizeLinear") + nodes_of(model, "DequantizeLinear")
    assert qdq
    for node in qdq:
        scale, zero = inits[node.input[1]], inits[node.input[2]]
        assert scale.dtype == np.float32 and scale.shape == () and log2_exact(float(scale)) is not None
        assert zero.dtype == np.int8 and zero.shape == () and zero == 0
    for node in nodes_of(model, "DequantizeLinear"):
        if node.input[0] in inits:  # weights, biases, constants: int8 codes stored once
            assert inits[node.input[0]].dtype == np.int8
    for conv in nodes_of(model, "Conv"):
        if not conv.name.endswith("/window_sum"):
            assert producer_op(model, conv.input[1]) == "DequantizeLinear"
    out = ort_run(model, net.feeds(1)[0])[y]
    ref = ort_run(net.model(y), net.feeds(1)[0])[y]
    assert out.shape == ref.shape and np.max(np.abs(out - ref)) < 0.1 * np.max(np.abs(ref)) + 0.05
    # every fix position in quant_info is the one the graph uses
    for key, entry in result.info["onnx"]["tensors"].items():
        dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == entry["dequantized"])
        assert float(inits[dq.input[1]]) == 2.0 ** -result.info["output"][key][0][1]


def test_quantization_points_follow_vai_q_groups():
    net, y = every_op_net()
    result = quantize(net, y)
    keys = list(result.info["output"])
    # conv1 + relu: one point after the ReLU (group_up); the dilated dw conv feeds the tile concat twice, so it is
    # not a "concat input" and keeps its own point; the Slice after the concat moves bytes (no point);
    # Add + LeakyReLU one point; MaxPool its own; AvgPool + ReLU6 one point; the Mul and its constant operand;
    # global pool (Flatten passes through); Gemm.
    assert keys == [
        "x", "relu4_node", "conv7_node", "concat8_node", "conv15_node", "leakyrelu17_node", "maxpool18_node",
        "clip22_node", "mul24_node", "globalaveragepool25_node", "gemm29_node",
        "c23",  # added by the second pass ("check the input fix of all quantized ops"), as in vai_q
    ]
    assert result.info["output"]["x"][0][0] == 8
    model = result.model
    quantized = {n.input[0] for n in nodes_of(model, "QuantizeLinear")}
    assert "conv3_prequant" not in quantized and "relu4_prequant" in quantized
    assert not any(t.startswith(("slice12", "flatten26", "add16", "averagepool19")) for t in quantized)
    assert set(result.info["param"]) == {"w1", "b2", "w5", "b6", "w13", "b14", "c27", "c28"}
    mapping = json.loads(next(p.value for p in model.metadata_props if p.key == "vidconv_deploy.quant_tensors"))
    assert mapping["x_dequantized"] == "x" and mapping["relu4"] == "relu4"


def test_sole_concat_inputs_share_the_concat_position():
    net = Net([1, 4, 8, 8])
    a = net.conv("x", 4, 4)
    b = net.op("Relu", [net.conv("x", 4, 4)])
    c = net.op("Concat", [a, b], axis=1)
    result = quantize(net, c)
    # is_concat_input: a node whose only consumer is a Concat is quantized by the Concat's entry
    assert list(result.info["output"]) == ["x", "concat8_node"]
    assert nodes_of(result.model, "Concat")[0].input[:] == [a, b]


def test_graph_input_position_uses_no_search_and_activations_take_the_mode():
    net = Net([1, 1, 1, 1001])
    y = net.conv("x", 1, 1, k=1, pad=0, weight=np.ones((1, 1, 1, 1)), bias_value=np.zeros(1))
    base = np.array([1.0] + [0.01] * 1000, dtype=np.float32).reshape(1, 1, 1, 1001)
    # input: scope 1 -> the overflow position floor(log2(127.5 / max)) for each batch: 6, 4, 4 -> mode 4
    # (the search would give 7 for the first batch: test_fixpoint.test_diffs_search_prefers_least_squared_error)
    feeds = [{"x": base}, {"x": base * 4}, {"x": base * 4}]
    result = quantize_onnx(net.model(y), feeds)
    history = result.info["onnx"]["calibration"]["history"]
    assert history["x"] == [6, 4, 4]
    assert result.info["output"]["x"] == [[8, 4]]
    assert result.info["onnx"]["calibration"]["batches"] == 3


def test_shift_cut_above_16_lowers_the_weight_position():
    # tiny weights (position capped at 12), input ~N(0,1) in [-1, 1) (position 7), output dominated by a bias
    # of 30 (position 2): shift_cut = 12 + 7 - 2 = 17 > 16 -> weight position 11 (fix_pos_adjust.py)
    net = Net([1, 2, 4, 4])
    y = net.conv("x", 2, 1, k=1, pad=0, weight=np.full((1, 2, 1, 1), 1e-4), bias_value=np.array([30.0]))
    feeds = [{"x": np.clip(f["x"], -1, 0.99)} for f in net.feeds(2)]
    result = quantize_onnx(net.model(y), feeds)
    info = result.info
    assert info["output"]["x"] == [[8, 7]] and info["output"]["conv3_node"] == [[8, 2]]
    assert info["param"]["w1"] == [[8, 11]]
    assert info["onnx"]["adjustments"] == [{"tensor": "w1", "from": 12, "to": 11, "rule": "conv conv3_node: shift_cut/shift_bias <= 16"}]
    assert info["onnx"]["convs"]["conv3_node"]["shift_cut"] == 16


def streaming_pair() -> tuple[Net, str, Net, str]:
    first = Net([1, 3, 8, 8])
    mid = first.op("Relu", [first.conv("x", 3, 4)])
    second = Net([1, 4, 8, 8], seed=5, input_name=mid)
    out = second.conv(mid, 4, 2)
    return first, mid, second, out


def test_fixed_fix_point_pins_the_second_graph_input():
    first, mid, second, out = streaming_pair()
    q1 = quantize(first, mid)
    fp = q1.info["output"]["relu4_node"][0][1]
    feeds = [{mid: v} for v in (ort_run(first.model(mid), f)[mid] for f in first.feeds(2))]
    pinned = fp - 2  # differs from what calibration alone picks
    q2 = quantize_onnx(second.model(out), feeds, fixed_fix_points={mid: pinned})
    assert q2.info["output"][mid] == [[8, pinned]]
    assert q2.info["onnx"]["fixed_fix_points"] == {mid: pinned}
    assert mid not in q2.info["onnx"]["calibration"]["history"]


def test_pinned_output_raises_the_weight_position_instead():
    net = Net([1, 2, 4, 4])
    y = net.conv("x", 2, 2, k=1, pad=0)
    free = quantize(net, y).info
    fp_in, fp_w = free["output"]["x"][0][1], free["param"]["w1"][0][1]
    pin = fp_in + fp_w + 2  # shift_cut would be -2: the source lowers the output, which is pinned here
    info = quantize(net, y, fixed_fix_points={y: pin}).info
    assert info["output"]["conv3_node"] == [[8, pin]]
    assert info["param"]["w1"] == [[8, fp_w + 2]]
    assert info["onnx"]["convs"]["conv3_node"]["shift_cut"] == 0
    with pytest.raises(UserError, match="w1.*pins"):
        quantize(net, y, fixed_fix_points={y: pin, "w1": fp_w})


def test_unknown_pin_and_bad_feeds_are_user_errors():
    net = Net([1, 2, 4, 4])
    y = net.conv("x", 2, 2)
    with pytest.raises(UserError, match="'nope', which is not a quantized tensor"):
        quantize(net, y, fixed_fix_points={"nope": 3})
    with pytest.raises(UserError, match="not one feed"):
        quantize_onnx(net.model(y), net.feeds(1)[0])
    with pytest.raises(UserError, match="no calibration feeds"):
        quantize_onnx(net.model(y), [])


def test_average_pools_become_sum_times_the_dpu_factor():
    net = Net([1, 2, 6, 6])
    a = net.op("AveragePool", ["x"], kernel_shape=[3, 3], strides=[3, 3])
    m = net.op("ReduceMean", [a], axes=[2, 3], keepdims=1)
    result = quantize(net, m)
    model = result.model
    approx = result.info["onnx"]["approximations"]
    assert approx["averagepool1_node"]["multiplier"] == 7 and approx["averagepool1_node"]["shift"] == 6
    # a 2x2 mean divides by 4 exactly (mean.py scales only non-powers of two)
    assert approx["reducemean2_node"]["multiplier"] == 1 and approx["reducemean2_node"]["shift"] == 2
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert float(inits["averagepool1_node/dpu_factor"]) == 7 / 64
    assert np.all(inits["averagepool1_node/window_ones"] == 1.0) and inits["averagepool1_node/window_ones"].shape == (2, 1, 3, 3)
    # what ORT computes for the pool: the 3x3 sum of the dequantized input times 7/64, quantized
    feed = net.feeds(1)[0]
    got = ort_run(model, feed, ["x_dequantized", "averagepool1_quantized"])
    x = got["x_dequantized"].astype(np.float64)
    sums = x.reshape(1, 2, 2, 3, 2, 3).sum(axis=(3, 5))
    fp = result.info["output"]["averagepool1_node"][0][1]
    expected = np.clip(np.round(sums * 7 / 64 * 2.0**fp), -128, 127)
    assert np.array_equal(got["averagepool1_quantized"], expected.astype(np.int8))


def test_leaky_relu_and_hard_sigmoid_take_the_dpu_forms():
    net = Net([1, 2, 4, 4])
    lk = net.op("LeakyRelu", [net.conv("x", 2, 2)], alpha=0.01)
    hs = net.op("HardSigmoid", [lk], alpha=1 / 6, beta=0.5)
    result = quantize(net, hs)
    model = result.model
    leaky = nodes_of(model, "LeakyRelu")[0]
    assert helper.get_attribute_value(leaky.attribute[0]) == pytest.approx(26 / 256, abs=0)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert Fraction(float(inits["hardsigmoid5_node/dpu_factor"])) == Fraction(2731, 16384)
    assert [n.op_type for n in model.graph.node if n.name.startswith("hardsigmoid5_node/")] == ["Add", "Clip", "Mul"]
    assert result.info["output"]["hardsigmoid5_node"][0][1] >= 7  # FixPosChecker.output_must_larger_than_7
    assert result.info["output"]["leakyrelu4_node"][0][1] >= 0  # input_must_larger_than_0
    assert result.info["onnx"]["approximations"]["leakyrelu4_node"]["alpha"] == pytest.approx(0.01)


def test_unsupported_op_is_a_user_error_naming_the_node():
    net = Net([1, 2, 4, 4])
    s = net.op("Sigmoid", [net.conv("x", 2, 2)])
    with pytest.raises(UserError, match=r"node sigmoid4_node has op type Sigmoid"):
        quantize(net, s)
    net = Net([1, 2, 4, 4])
    s = net.op("HardSigmoid", [net.conv("x", 2, 2)], alpha=0.2, beta=0.5)  # Keras' form, not relu6(x + 3) / 6
    with pytest.raises(UserError, match=r"node hardsigmoid4_node: HardSigmoid with alpha=0.2"):
        quantize(net, s)


def test_quant_info_has_vai_q_layout_and_is_written_atomically(tmp_path):
    net, y = every_op_net()
    info = quantize(net, y).info
    # export_quant_config -> normalized_quant_config: param/output/input + the flags vai_q writes
    assert list(info)[:7] == ["param", "output", "input", "fast_finetuned", "bias_corrected", "version", "graph_md5"]
    assert all(v == [[8, v[0][1]]] and isinstance(v[0][1], int) for v in [*info["param"].values(), *info["output"].values()])
    path = tmp_path / "out" / "quant_info.json"
    write_quant_info(info, path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(info))
    assert [p.name for p in path.parent.iterdir()] == ["quant_info.json"]
