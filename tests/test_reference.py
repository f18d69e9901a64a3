"""The integer reference: bit-exact with ONNX Runtime's fake-quant run, DPU rounding ties, float32 limits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from test_quantizer import Net, every_op_net, ort_run, quantize

from vidconv_deploy import parallel
from vidconv_deploy.dpu.dump_compare import TieRecorder
from vidconv_deploy.fixpoint import kernels
from vidconv_deploy.errors import UserError
from vidconv_deploy.reference import (
    compare_with_onnxruntime,
    integer_checks,
    layer_report,
    rounding_differences,
    run_reference,
    save_sqnr_plot,
)
from vidconv_deploy.reference.compare import SUMS_BLOCK, layer_table, tensor_sums
from vidconv_deploy.reference.executor import Executor


def assert_bit_exact(model: onnx.ModelProto, feeds) -> None:
    report = compare_with_onnxruntime(model, feeds)
    assert report.rows
    assert report.not_exact_in_float32 == [], [r.note for r in report.not_exact_in_float32]
    assert report.bit_exact, [(r.tensor, r.differing, r.max_lsb) for r in report.rows if r.differing]
    assert all(d == 0.0 for d in report.outputs_max_abs_diff.values())


def out_size(size: int, k: int, stride: int, dilation: int, pad: int) -> int:
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


@st.composite
def random_nets(draw):
    """conv (any kernel/stride/dilation/groups/pads) + activation -> 1x1 branch + Add (two positions) ->
    Concat (channels or width) -> a pool -> maybe Mul by a constant."""
    cin = draw(st.integers(1, 3))
    size = draw(st.integers(6, 11))
    k, stride, dilation = draw(st.sampled_from([1, 2, 3, 5])), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    cout = cin * draw(st.integers(1, 2)) if depthwise else draw(st.integers(1, 6))
    pad = draw(st.integers(0, dilation * (k - 1)))
    side = out_size(size, k, stride, dilation, pad)
    assume(side >= 3)
    net = Net([1, cin, size, size], seed=draw(st.integers(0, 1000)))
    acts = ["none", "Relu", "Relu6", "LeakyRelu"]

    def act(t: str, which: str) -> str:
        if which == "Relu6":
            return net.op("Clip", [t, net.const(np.float32(0.0)), net.const(np.float32(6.0))])
        return t if which == "none" else net.op(which, [t])

    a = act(net.conv("x", cin, cout, k, stride, dilation, group=cin if depthwise else 1, pad=pad), draw(st.sampled_from(acts)))
    b = act(net.conv(a, cout, cout, k=1, pad=0), draw(st.sampled_from(acts)))
    s = net.op("Add", [a, b])
    s = net.op("Concat", [s, a], axis=draw(st.sampled_from([1, 3])))
    pool = draw(st.sampled_from(["none", "max", "max3", "avg2", "avg3", "gap", "mean"]))
    if pool == "max":
        s = net.op("MaxPool", [s], kernel_shape=[2, 2], strides=[2, 2])
    elif pool == "max3":
        s = net.op("MaxPool", [s], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    elif pool in ("avg2", "avg3"):
        kk = int(pool[-1])
        s = net.op("AveragePool", [s], kernel_shape=[kk, kk], strides=[draw(st.integers(1, 2))] * 2,
                   pads=[kk // 2] * 4 if draw(st.booleans()) else [0] * 4, count_include_pad=1)
    elif pool == "gap":
        s = net.op("GlobalAveragePool", [s])
    elif pool == "mean":
        s = net.op("ReduceMean", [s], axes=[2, 3], keepdims=0)
    if draw(st.booleans()):
        s = net.op("Mul", [s, net.const(np.float32(draw(st.sampled_from([0.3, 1.7, -0.55]))))])
    return net, s


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_nets())
def test_reference_is_bit_exact_with_onnxruntime_on_random_graphs(case):
    net, out = case
    result = quantize(net, out)
    assert_bit_exact(result.model, net.feeds(2, seed=11, scale=1.5))


def test_every_op_graph_is_bit_exact():
    net, y = every_op_net()
    assert_bit_exact(quantize(net, y).model, net.feeds(3, seed=4))


def test_vic_temporal_branch_depthwise_dilated_conv_and_spatial_tile_concat():
    # ViC's temporal mixing on a 2x2 collage of 5x5 frames: a 2x2 depthwise conv dilated by the frame size,
    # tiled back over the collage with Concat along W then H, added to the 7x7 spatial depthwise conv
    net = Net([1, 4, 10, 10], seed=3)
    spatial = net.conv("x", 4, 4, k=7, group=4, pad=3)
    temporal = net.conv("x", 4, 4, k=2, dilation=5, group=4, pad=0)  # one output pixel per frame position
    row = net.op("Concat", [temporal, temporal], axis=3)
    tile = net.op("Concat", [row, row], axis=2)
    y = net.op("Relu", [net.conv(net.op("Add", [spatial, tile]), 4, 8, k=1, pad=0)])
    result = quantize(net, y)
    assert "concat7_node" in result.info["output"] and "conv6_node" in result.info["output"]
    assert_bit_exact(result.model, net.feeds(3, seed=8, scale=2.0))


def test_split_reshape_transpose_and_matmul_head_are_bit_exact():
    # Split into channel groups (the DPU recipe splits wide temporal convs), convs, Concat back, then a
    # Reshape/Transpose/Flatten head and a MatMul with constant weights (a bias-free nn.Linear)
    net = Net([1, 6, 6, 6], seed=12)
    a = net.op("Relu", [net.conv("x", 6, 6)])
    parts = [f"split_{i}" for i in range(2)]
    net.nodes.append(helper.make_node("Split", [a, net.const(np.array([2, 4], np.int64))], parts, name="split_node", axis=1))
    b = net.op("Concat", [net.conv(parts[0], 2, 2, k=3, dilation=2, group=2), net.conv(parts[1], 4, 4, k=1, pad=0)], axis=1)
    t = net.op("Transpose", [net.op("Reshape", [b, net.const(np.array([1, 6, 36], np.int64))])], perm=[0, 2, 1])
    pooled = net.op("ReduceMean", [t], axes=[1], keepdims=0)  # mean over 36 positions: DPU factor 57/2048
    y = net.op("MatMul", [pooled, net.const((net.rng.standard_normal((6, 3)) / 2).astype(np.float32))])
    result = quantize(net, y)
    assert result.info["onnx"]["approximations"]["reducemean16_node"]["formula"] == "sum * 57 / 2**11"
    # Split/Reshape/Transpose move bytes (no position of their own); both convs only feed the Concat: they share its
    assert list(result.info["output"]) == ["x", "relu4_node", "concat12_node", "reducemean16_node", "matmul18_node"]
    assert_bit_exact(result.model, net.feeds(3, seed=6))


def test_relu_on_the_graph_input_is_quantized_after_the_relu():
    # group_up puts a ReLU whose parent is the input into the input's group: vai_q quantizes relu(x), not x
    net = Net([1, 3, 6, 6], seed=2)
    r = net.op("Relu", ["x"])
    y = net.conv(net.op("MaxPool", [r], kernel_shape=[2, 2], strides=[2, 2]), 3, 4)
    result = quantize(net, y)
    assert list(result.info["output"]) == ["relu1_node", "maxpool2_node", "conv5_node"]
    assert_bit_exact(result.model, net.feeds(2, seed=3))


def qdq_model(nodes, inits, x_shape, out: str | list[str], out_elem=TensorProto.FLOAT) -> onnx.ModelProto:
    outs = [out] if isinstance(out, str) else out
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(o, out_elem, None) for o in outs],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def tie_model() -> onnx.ModelProto:
    """x at fix point 1 (no ties), times a weight of 1, requantized to fix point 0: x = k + 0.5 are ties."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s1", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s1", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "s0", "zp"], ["w"]),
        helper.make_node("Conv", ["xd", "w"], ["acc"], kernel_shape=[1, 1]),
        helper.make_node("QuantizeLinear", ["acc", "s0", "zp"], ["y_quantized"]),
        helper.make_node("DequantizeLinear", ["y_quantized", "s0", "zp"], ["y"]),
    ]
    inits = {"s1": np.float32(0.5), "s0": np.float32(1.0), "zp": np.int8(0), "wq": np.ones((1, 1, 1, 1), np.int8)}
    return qdq_model(nodes, inits, [1, 1, 1, 6], "y")


TIES = {"x": np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], np.float32).reshape(1, 1, 1, 6)}


def test_dpu_rounding_differences_find_a_constructed_tie():
    model = tie_model()
    ort_codes = run_reference(model, TIES, rounding="onnxruntime").tensors["y"]
    dpu_codes = run_reference(model, TIES, rounding="dpu").tensors["y"]
    assert ort_codes.values.ravel().tolist() == [0, 2, 2, 0, -2, -2]  # half to even
    assert dpu_codes.values.ravel().tolist() == [1, 2, 3, 0, -1, -2]  # DPU_ROUND: half up
    assert ort_codes.fix_point == 0
    report = rounding_differences(model, TIES)
    assert [(r.tensor, r.elements, r.differing, r.max_lsb) for r in report.rows] == [("y", 6, 3, 1)]
    assert_bit_exact(model, TIES)
    assert ort_run(model, TIES, ["y_quantized"])["y_quantized"].ravel().tolist() == [0, 2, 2, 0, -2, -2]


def test_relu_folding_and_in_place_requantize_leave_shared_tensors_intact():
    # A ReLU read by one QuantizeLinear folds into it; one read twice, or a graph output, does not. A conv
    # accumulator read once is requantized in place; one that is a graph output, read again or renamed by an
    # Identity is not overwritten: every output and code must still equal ONNX Runtime's.
    gen = np.random.default_rng(5)
    channels = 4

    def q_dq(t: str, scale: str, out: str) -> list[onnx.NodeProto]:
        return [helper.make_node("QuantizeLinear", [t, scale, "zp"], [out + "_quantized"]),
                helper.make_node("DequantizeLinear", [out + "_quantized", scale, "zp"], [out])]

    nodes = [*q_dq("x", "s3", "xd"), helper.make_node("DequantizeLinear", ["wq", "s3", "zp"], ["w"]),
             helper.make_node("Conv", ["xd", "w"], ["acc"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["acc"], ["shared_relu"]),
             *q_dq("shared_relu", "s0", "ya"), *q_dq("shared_relu", "s1", "yb"),
             helper.make_node("Identity", ["acc"], ["renamed"]), *q_dq("renamed", "s0", "yi"),
             helper.make_node("Conv", ["xd", "w"], ["acc2"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["acc2"], ["folded_relu"]), *q_dq("folded_relu", "s0", "y2"),
             *q_dq("acc", "s1", "yacc"),
             helper.make_node("Conv", ["xd", "w"], ["acc3"], kernel_shape=[1, 1]), *q_dq("acc3", "s0", "y3"), *q_dq("acc3", "s1", "y4")]
    inits = {"s3": np.float32(2.0**-3), "s1": np.float32(0.5), "s0": np.float32(1.0), "zp": np.int8(0),
             "wq": gen.integers(-128, 128, (channels, channels, 1, 1)).astype(np.int8)}
    outputs = ["acc", "ya", "yb", "yi", "y2", "yacc", "y3", "y4"]
    model = qdq_model(nodes, inits, [1, channels, 3, 3], outputs)
    executor = Executor(model)
    assert [n.input[0] for n in executor.nodes if n.op_type == "Relu"] == ["acc"]
    assert [n.input[0] for n in executor.nodes if n.output[0] == "y2_quantized"] == ["acc2"]
    feeds = [{"x": (gen.standard_normal((1, channels, 3, 3)) * 8).astype(np.float32)} for _ in range(2)]
    assert_bit_exact(model, feeds)
    expected = ort_run(model, feeds[0], outputs)
    got = executor.run(feeds[0]).outputs
    assert all(np.array_equal(got[o], expected[o]) for o in outputs)


def test_a_folded_constant_is_never_requantized_in_place():
    # A conv of constants is folded once when the executor is built; the QuantizeLinear that reads it at run time
    # must not overwrite the folded value, or the second run would quantize what the first left behind.
    nodes = [helper.make_node("DequantizeLinear", ["cq", "s0", "zp"], ["c"]),
             helper.make_node("DequantizeLinear", ["wq", "s0", "zp"], ["w"]),
             helper.make_node("Conv", ["c", "w"], ["acc"], kernel_shape=[1, 1]),
             helper.make_node("QuantizeLinear", ["acc", "s2", "zp"], ["y_quantized"]),
             helper.make_node("DequantizeLinear", ["y_quantized", "s2", "zp"], ["yd"])]
    gen = np.random.default_rng(2)
    inits = {"s0": np.float32(1.0), "s2": np.float32(4.0), "zp": np.int8(0),
             "cq": gen.integers(-128, 128, (1, 3, 2, 2)).astype(np.int8), "wq": gen.integers(-128, 128, (2, 3, 1, 1)).astype(np.int8)}
    model = qdq_model(nodes, inits, [1, 2, 2, 2], "yd")
    executor = Executor(model)
    assert "acc" in executor.constants
    feed = {"x": np.zeros((1, 2, 2, 2), np.float32)}  # the graph's input, unread: every value is a constant
    first, second = (executor.run(feed).tensors["yd"].values.copy() for _ in range(2))
    assert np.array_equal(first, second)
    assert np.array_equal(first, ort_run(model, feed, ["y_quantized"])["y_quantized"])


def test_ties_after_a_folded_relu_are_the_relus_outputs_ties():
    # The ReLU before the requantization folds into it, so the tie recorder sees its input: -0.5, -1.5 and -2.5 are
    # ties of the accumulator but the ReLU makes them 0, which is no tie.
    model = tie_model()
    nodes = list(model.graph.node)
    relu = helper.make_node("Relu", ["acc"], ["acc_relu"])
    nodes[4].input[0] = "acc_relu"
    del model.graph.node[:]
    model.graph.node.extend([*nodes[:4], relu, *nodes[4:]])
    recorder = TieRecorder(model)
    assert [n.op_type for n in recorder.nodes].count("Relu") == 0
    codes = recorder.run(TIES, rounding="dpu").tensors["y"].values.ravel().tolist()
    assert codes == [1, 2, 3, 0, 0, 0]
    assert recorder.ties["y"].ravel().tolist() == [True, True, True, False, False, False]


def test_float32_inexact_accumulator_is_reported_not_mismatched():
    # 1100 products of 127 * 127 sum to 17,741,900 > 2**24: ORT's float32 Conv cannot be exact here
    channels = 1100
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s0", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s0", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "s0", "zp"], ["w"]),
        helper.make_node("Conv", ["xd", "w"], ["acc"], kernel_shape=[1, 1]),
        helper.make_node("QuantizeLinear", ["acc", "s18", "zp"], ["y_quantized"]),
        helper.make_node("DequantizeLinear", ["y_quantized", "s18", "zp"], ["y"]),
    ]
    inits = {"s0": np.float32(1.0), "s18": np.float32(2.0**18), "zp": np.int8(0),
             "wq": np.full((1, channels, 1, 1), 127, np.int8)}
    model = qdq_model(nodes, inits, [1, channels, 1, 1], "y")
    feed = {"x": np.full((1, channels, 1, 1), 127.0, np.float32)}
    run = run_reference(model, feed)
    y = run.tensors["y"]
    assert y.values.item() == round(127 * 127 * channels / 2**18)  # 67.68 -> 68, computed exactly (float64 path)
    assert not y.float32_exact and "fake-quant float32 not exact here" in y.note
    report = compare_with_onnxruntime(model, feed)
    assert [r.tensor for r in report.not_exact_in_float32] == ["y"]
    assert report.bit_exact  # only float32-exact tensors count


def test_unsupported_op_and_non_power_of_two_scale_are_user_errors():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
             helper.make_node("Sigmoid", ["xd"], ["y"], name="the_sigmoid")]
    model = qdq_model(nodes, {"s": np.float32(0.25), "zp": np.int8(0)}, [1, 2], "y")
    with pytest.raises(UserError, match="node the_sigmoid has op type Sigmoid"):
        run_reference(model, {"x": np.zeros((1, 2), np.float32)})
    model = qdq_model(nodes[:2], {"s": np.float32(0.3), "zp": np.int8(0)}, [1, 2], "xd")
    with pytest.raises(UserError, match="not a power of two"):
        run_reference(model, {"x": np.zeros((1, 2), np.float32)})


def test_layer_report_against_float_and_png(tmp_path):
    net, y = every_op_net()
    model = net.model(y)
    result = quantize(net, y, feeds=net.feeds(4))
    stats = layer_report(model, result.model, net.feeds(2, seed=9))
    assert [s.tensor for s in stats] == [e["dequantized"] for e in result.info["onnx"]["tensors"].values() if e["op"] != "Const"]
    by_name = {s.float_tensor: s for s in stats}
    # the input is quantized once: error at most half an LSB, SQNR of 8-bit rounding (~40 dB on N(0,1))
    assert by_name["x"].max_lsb_error <= 0.5 and by_name["x"].sqnr_db > 30
    assert all(s.cosine > 0.9 and s.sqnr_db > 10 for s in stats)
    console = Console(width=200, record=True)
    console.print(layer_table(stats))
    text = console.export_text()
    assert "relu4" in text and "SQNR dB" in text
    path = tmp_path / "sqnr.png"
    save_sqnr_plot(stats, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_large_ops_on_the_callers_threads_give_the_same_codes(monkeypatch):
    # One feed alone (the caller has 2 torch threads) runs large convolutions and passes on 2 intra-op threads;
    # every code must equal the single-threaded run's. Thread here at any size, and record that it did.
    net, y = every_op_net()
    model = quantize(net, y, feeds=net.feeds(4)).model
    feeds = net.feeds(2, seed=3)
    widths: list[int] = []
    conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d", lambda *a, **k: widths.append(torch.get_num_threads()) or conv2d(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(kernels, "THREADED_MIN_MACS", 1 << 62)
        monkeypatch.setattr(kernels, "THREADED_MIN_ELEMENTS", 1 << 62)
        single = [run_reference(model, f, rounding="dpu") for f in feeds]
        assert widths and set(widths) == {1}
        widths.clear()
        monkeypatch.setattr(kernels, "THREADED_MIN_MACS", 0)
        monkeypatch.setattr(kernels, "THREADED_MIN_ELEMENTS", 0)
        threaded = [run_reference(model, f, rounding="dpu") for f in feeds]
    finally:
        torch.set_num_threads(before)
    assert widths and set(widths) == {2}
    for a, b in zip(single, threaded, strict=True):
        assert a.tensors.keys() == b.tensors.keys()
        assert all(np.array_equal(a.tensors[k].values, b.tensors[k].values) for k in a.tensors)
        assert all(np.array_equal(a.outputs[k], b.outputs[k]) for k in a.outputs)


@pytest.mark.parametrize("size", [0, 5, 2 * SUMS_BLOCK + 3])
def test_tensor_sums_block_by_block_equal_whole_tensor_float64(size):
    gen = np.random.default_rng(size)
    f = (gen.standard_normal(size) * 3).astype(np.float32)
    codes = np.clip(np.round(f * 8), -128, 127).astype(np.int8)
    f64, q = f.astype(np.float64), codes.astype(np.float64) / 8
    err = q - f64
    signal, noise, dot, qq, n, lsb = tensor_sums(f, codes, 3)
    np.testing.assert_allclose([signal, noise, dot, qq], [f64 @ f64, err @ err, q @ f64, q @ q], rtol=1e-12)
    assert n == size and lsb == (float(np.max(np.abs(err))) * 8 if size else 0.0)  # a power of two: exact


def test_integer_checks_in_one_pass_equal_the_three_checks(monkeypatch):
    # One pass (two reference runs per feed, feeds on the core pool) must report what the three
    # separate checks report, row for row: the tie model gives a DPU rounding difference to carry.
    monkeypatch.setattr(parallel, "usable_cores", lambda: 2)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_ELEMENTS", 0)  # small graphs: pool them anyway
    net, y = every_op_net()
    model = net.model(y)
    result = quantize(net, y, feeds=net.feeds(4))
    feeds = net.feeds(3, seed=5)
    checks = integer_checks(model, result.model, feeds)
    assert checks.exact.to_dict() == compare_with_onnxruntime(result.model, feeds).to_dict()
    assert checks.dpu_rounding.to_dict() == rounding_differences(result.model, feeds).to_dict()
    assert checks.layers == layer_report(model, result.model, feeds)
    ties = tie_model()
    tie_checks = integer_checks(ties, ties, TIES)
    assert tie_checks.dpu_rounding.rows and tie_checks.dpu_rounding.to_dict() == rounding_differences(ties, TIES).to_dict()


def test_vic_nano_dpu_early_graph_is_bit_exact():
    from vidconv_deploy import build_model
    from vidconv_deploy.export.deploy_model import to_deploy
    from vidconv_deploy.export.onnx_export import MethodModule, export_graph
    from vidconv_deploy.export.passes import apply_passes, dpu_passes

    deploy = apply_passes(to_deploy(build_model("vic-nano-dpu", num_classes=4).eval()), dpu_passes(16))
    early = export_graph(MethodModule(deploy, deploy.early), torch.randn(deploy.frame_shape()), "frame", "features")
    gen = np.random.default_rng(2)
    feeds = [{"frame": gen.standard_normal(deploy.frame_shape()).astype(np.float32)} for _ in range(3)]
    from vidconv_deploy.quant import quantize_onnx

    result = quantize_onnx(early.model, feeds[:2])
    assert_bit_exact(result.model, feeds[2:])


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("mode", ["half_up", "half_even"])
def test_requantize_of_float_stored_accumulators_is_the_integer_shift(mode, relu, in_place):
    # Float-stored accumulators (exact integers below 2**24) must requantize exactly as the DPU's integer
    # (acc + 2**(shift-1)) >> shift does (fixpoint.shift_round on int64), ties and saturation included; a folded
    # ReLU saturates at code 0; in place it overwrites the accumulator, else it leaves it as it was.
    from vidconv_deploy.fixpoint import arithmetic as fixpoint
    from vidconv_deploy.reference.executor import Fx, _requantize

    gen = torch.Generator().manual_seed(0)
    acc = torch.randint(-(1 << 20), 1 << 20, (20000,), generator=gen, dtype=torch.int64)
    acc[:8] = torch.tensor([6, -6, 10, -10, 2, -2, (1 << 20) - 1, -(1 << 20)])  # ties at shift 2 and 3, extremes
    lowest = 0.0 if relu else fixpoint.QMIN
    for shift in range(-2, 12):
        x = Fx(acc.to(torch.float32), 14, float(1 << 20))
        got = _requantize(x, 14 - shift, mode, lowest, in_place)
        expected = fixpoint.saturate(fixpoint.shift_round(acc, shift, mode)).clamp(min=lowest).to(torch.float32)
        assert torch.equal(got, expected), shift
        assert in_place or torch.equal(x.v, acc.to(torch.float32))
