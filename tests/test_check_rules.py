"""Every DPU rule: a minimal graph that passes it and one that breaks it (exact rule, message, fix)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from check_graphs import G

from vidconv_deploy.check import check_model
from vidconv_deploy.cli.check import main


def conv_graph(cin: int, cout: int = 16, k=(3, 3), hw=(8, 8), **attrs) -> onnx.ModelProto:
    g = G([1, cin, *hw])
    return g.model(g.conv("x", cin, cout, k, **attrs))


def dwconv_graph(c: int, k=(3, 3), hw=(16, 16), **attrs) -> onnx.ModelProto:
    g = G([1, c, *hw])
    return g.model(g.conv("x", c, c, k, group=c, **attrs))


def act_graph(op_type: str, after_conv: bool = True, **attrs) -> onnx.ModelProto:
    g = G([1, 8, 8, 8])
    x = g.conv("x", 8, 8, pads=[1, 1, 1, 1]) if after_conv else "x"
    return g.model(g.op(op_type, [x], **attrs))


def add_graph(const: bool) -> onnx.ModelProto:
    g = G([1, 8, 8, 8])
    a = g.conv("x", 8, 8, (1, 1))
    b = g.const(np.ones((1, 8, 8, 8), np.float32)) if const else g.conv("x", 8, 8, (1, 1))
    return g.model(g.op("Add", [a, b]))


def pool_graph(k, hw=(8, 8), **attrs) -> onnx.ModelProto:
    g = G([1, 8, *hw])
    return g.model(g.op("MaxPool", [g.conv("x", 8, 8, (1, 1))], kernel_shape=list(k), **attrs))


def concat_graph(axis: int) -> onnx.ModelProto:
    g = G([1, 8, 4, 4])
    return g.model(g.op("Concat", ["x", "x"], axis=axis))


def resize_graph(mode: str, ctm: str, scale: float) -> onnx.ModelProto:
    g = G([1, 8, 4, 4])
    scales = g.const(np.array([1, 1, scale, scale], np.float32))
    return g.model(g.op("Resize", [g.conv("x", 8, 8, (1, 1)), "", scales], mode=mode, coordinate_transformation_mode=ctm))


def matmul_graph(const_weight: bool) -> onnx.ModelProto:
    g = G([1, 16, 32])
    w = g.const(np.ones((32, 8), np.float32)) if const_weight else g.op("Transpose", ["x"], perm=[0, 2, 1])
    return g.model(g.op("MatMul", ["x", w]))


def conv3d_graph() -> onnx.ModelProto:
    g = G([1, 8, 4, 8, 8])
    return g.model(g.conv("x", 8, 8, (3, 3, 3)))


def conv1d_graph() -> onnx.ModelProto:
    g = G([1, 8, 16])
    return g.model(g.conv("x", 8, 8, (3,)))


def pool3d_graph() -> onnx.ModelProto:
    g = G([1, 8, 4, 8, 8])
    return g.model(g.op("MaxPool", [g.conv("x", 8, 8, (1, 1, 1))], kernel_shape=[2, 2, 2]))


def reshape_graph(after_conv: bool) -> onnx.ModelProto:
    g = G([1, 8, 4, 4])
    x = g.conv("x", 8, 8, (1, 1)) if after_conv else "x"
    return g.model(g.op("Reshape", [x, g.const(np.array([1, -1], np.int64))]))


def single_op(op_type: str, **attrs) -> onnx.ModelProto:
    g = G([1, 8, 4, 4])
    return g.model(g.op(op_type, [g.conv("x", 8, 8, (1, 1))], **attrs))


# rule -> (target, passing graph, violating graph, substring of the violation's message, of its fix)
CASES: dict[str, tuple[str, Callable[[], onnx.ModelProto], Callable[[], onnx.ModelProto], str, str]] = {
    "dpu.conv.kernel": ("dpu-kv260", lambda: conv_graph(8, k=(16, 16), hw=(16, 16)), lambda: conv_graph(8, k=(17, 17), hw=(20, 20)), "kernel 17x17 outside 1..16", "within 1..16"),
    "dpu.conv.stride": ("dpu-kv260", lambda: conv_graph(8, strides=[8, 8], hw=(16, 16)), lambda: conv_graph(8, strides=[9, 9], hw=(20, 20)), "stride 9x9 outside 1..8", "within 1..8"),
    "dpu.conv.pad": ("dpu-kv260", lambda: conv_graph(8, pads=[2, 2, 2, 2]), lambda: conv_graph(8, pads=[3, 3, 3, 3]), "exceed (kernel - 1) * dilation = (2, 2)", "separate Pad"),
    "dpu.conv.dilation-channels": ("dpu-kv260", lambda: conv_graph(2048, dilations=[2, 2], pads=[2] * 4), lambda: conv_graph(2064, dilations=[2, 2], pads=[2] * 4), "dilation 2 x 2064 input channels = 4128 > 256 * 16 = 4096", "groups of <= 2048 channels"),
    "dpu.conv.bank-depth": ("dpu-kv260", lambda: conv_graph(2048, k=(3, 3)), lambda: conv_graph(2048, k=(5, 5)), "5*5*ceil(2048/16)*ceil(16/16) = 3200 > 2048", "at most 1296 input channels"),
    "dpu.conv.in-channels": ("dpu-kv260", lambda: conv_graph(4096, k=(1, 1)), lambda: conv_graph(4112, k=(1, 1)), "4112 input channels > 256 * 16 = 4096", "<= 4096"),
    "dpu.conv.out-channels": ("dpu-kv260", lambda: conv_graph(8, 4096, k=(1, 1)), lambda: conv_graph(8, 4112, k=(1, 1)), "4112 output channels > 256 * 16 = 4096", "<= 4096"),
    "dpu.conv.group": ("dpu-kv260", lambda: conv_graph(8, 8), lambda: conv_graph(8, 8, group=2), "grouped conv (group=2, 8->8 channels)", "into 2 convs + Concat"),
    "dpu.conv.1d": ("dpu-kv260", lambda: conv_graph(8, k=(1, 3)), conv1d_graph, "1-D conv (kernel [3]) has no DPU kernel and no board CPU kernel", "1 x k kernel"),
    "dpu.conv.3d": ("dpu-kv260", lambda: conv_graph(8), conv3d_graph, "3-D conv (kernel [3, 3, 3]) does not run on DPUCZDX8G_ISA1_B4096", "dpu-vck190"),
    "dpu.const-weight": ("dpu-kv260", lambda: matmul_graph(True), lambda: matmul_graph(False), "MatMul multiplies two feature maps", "constant weight"),
    "dpu.dwconv.kernel": ("dpu-kv260", lambda: dwconv_graph(8, k=(1, 256), hw=(1, 300)), lambda: dwconv_graph(8, k=(1, 257), hw=(1, 300)), "depthwise kernel 1x257 outside 1..256", "within 1..256"),
    "dpu.dwconv.stride": ("dpu-kv260", lambda: dwconv_graph(8, k=(1, 1), hw=(1, 300), strides=[1, 256]), lambda: dwconv_graph(8, k=(1, 1), hw=(1, 300), strides=[1, 257]), "depthwise stride 1x257 outside 1..256", "within 1..256"),
    "dpu.dwconv.pad": ("dpu-kv260", lambda: dwconv_graph(8, pads=[15, 15, 1, 1]), lambda: dwconv_graph(8, pads=[16, 0, 0, 0]), "pads (top, left, bottom, right) [16, 0, 0, 0] outside left/top 0..15", "pad_left/pad_top <= 15"),
    "dpu.dwconv.dilation-square": ("dpu-kv260", lambda: dwconv_graph(8, dilations=[2, 2], pads=[2] * 4), lambda: dwconv_graph(8, dilations=[2, 1], pads=[2, 1, 2, 1]), "depthwise dilation 2x1 differs", "same dilation on both axes"),
    "dpu.dwconv.dilation-channels": ("dpu-kv260", lambda: dwconv_graph(292, dilations=[14, 14], pads=[14] * 4), lambda: dwconv_graph(384, dilations=[14, 14], pads=[14] * 4), "depthwise dilation 14 x 384 channels = 5376 > 256 * 16 = 4096", "groups of <= 292 channels"),
    "dpu.dwconv.bank-depth": ("dpu-kv260", lambda: dwconv_graph(8, k=(32, 32), hw=(32, 32)), lambda: dwconv_graph(8, k=(64, 64), hw=(64, 64)), "64*64*ceil(16/16) = 4096 > 2048", "smaller depthwise kernel"),
    "dpu.activation.fusable": ("dpu-kv260", lambda: act_graph("Relu"), lambda: act_graph("Relu", after_conv=False), "relu not directly after a DPU conv/add cannot be fused", "put the relu directly after a conv"),
    "dpu.leaky-relu.alpha": ("dpu-kv260", lambda: act_graph("LeakyRelu", alpha=26 / 256), lambda: act_graph("LeakyRelu", alpha=0.01), "LeakyReLU alpha 0.01 != 26/256 = 0.1015625", "negative_slope = 0.1015625"),
    "dpu.eltwise.type": ("dpu-kv260", lambda: add_graph(False), lambda: add_graph(True), "Add of a feature map and a non per-channel constant", "element-wise add or multiply"),
    "dpu.pool.kernel": ("dpu-kv260", lambda: pool_graph((1, 256), hw=(1, 300)), lambda: pool_graph((1, 257), hw=(1, 300)), "pool kernel 1x257 outside 1..256", "within 1..256"),
    "dpu.pool.stride": ("dpu-kv260", lambda: pool_graph((1, 1), hw=(1, 300), strides=[1, 256]), lambda: pool_graph((1, 1), hw=(1, 300), strides=[1, 257]), "pool stride 1x257 outside 1..256", "within 1..256"),
    "dpu.pool.pad": ("dpu-kv260", lambda: pool_graph((3, 3), pads=[1, 1, 1, 1]), lambda: pool_graph((3, 17), hw=(8, 40), pads=[0, 16, 0, 0]), "[0, 16, 0, 0] outside left/top 0..15", "pad_left/pad_top <= 15"),
    "dpu.pool.rank": ("dpu-kv260", lambda: pool_graph((2, 2)), pool3d_graph, "3-D MaxPool (kernel [2, 2, 2]) has no DPU kernel and no board CPU kernel", "2-D pool per frame"),
    "dpu.concat.axis": ("dpu-kv260", lambda: concat_graph(1), lambda: concat_graph(2), "along axis 2 of a 4-D tensor", "along channels (axis 1)"),
    "dpu.resize.mode": ("dpu-kv260", lambda: resize_graph("linear", "half_pixel", 2.0), lambda: resize_graph("linear", "align_corners", 2.0), "resize with align_corners has no DPU path", "2/4"),
    "dpu.reshape.placement": ("dpu-kv260", lambda: reshape_graph(True), lambda: reshape_graph(False), "Reshape input does not come from the DPU", "feed the Reshape from a DPU op"),
    "dpu.cpu-op": ("dpu-kv260", lambda: single_op("Relu"), lambda: single_op("Transpose", perm=[0, 2, 3, 1]), "Transpose is not a DPU op; it runs on the board CPU (transpose)", "move Transpose out"),
    "dpu.unsupported-op": ("dpu-kv260", lambda: single_op("Relu"), lambda: single_op("LRN", size=5), "LRN has no DPU engine and no board CPU kernel", "replace LRN"),
}


def test_every_dpu_rule_has_a_case() -> None:
    from vidconv_deploy.check.ruleset import load_ruleset

    assert set(load_ruleset("dpu-kv260").data["rules"]) == set(CASES)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_passes_and_fails(rule: str) -> None:
    target, passing, violating, message, fix = CASES[rule]
    assert [f for f in check_model(passing(), target).findings if f.rule == rule] == []
    hits = [f for f in check_model(violating(), target).findings if f.rule == rule]
    assert len(hits) == 1, hits
    assert message in hits[0].message
    assert fix in hits[0].fix
    assert hits[0].source


def test_conv3d_runs_on_vck190() -> None:
    result = check_model(conv3d_graph(), "dpu-vck190")
    assert result.findings == [] and result.partition["devices"] == {"DPU": {"ops": 1, "subgraphs": 1}}


def test_vek280_has_twice_the_channel_parallelism() -> None:
    """C20B14 has channel_parallel 32: the ViC dwconv (14 x 384 = 5376 <= 8192) fits there."""
    model = dwconv_graph(384, dilations=[14, 14], pads=[14] * 4)
    assert check_model(model, "dpu-vek280").findings == []
    assert [f.rule for f in check_model(model, "dpu-vck190").findings] == ["dpu.dwconv.dilation-channels"]


def test_gemm_after_flatten_is_a_kxk_conv() -> None:
    """VGG's 7x7x512 -> 4096 FC is a 7x7 conv over 512 channels, not a 25088-channel 1x1 conv."""
    g = G([1, 512, 7, 7])
    flat = g.op("Flatten", [g.conv("x", 512, 512, (1, 1))])
    model = g.model(g.op("Gemm", [flat, g.big_const([4096, 25088])], transB=1))
    assert check_model(model, "dpu-kv260").findings == []


@pytest.mark.parametrize(
    ("layer", "shape", "op_type", "message"),
    [
        (lambda: torch.nn.Conv1d(8, 8, 3), [1, 8, 16], "Conv", "1-D conv (kernel [3]) has no DPU kernel and no board CPU kernel: "
                                                               "both convolve 2-D feature maps only"),
        (lambda: torch.nn.MaxPool1d(2), [1, 8, 16], "MaxPool", "1-D MaxPool (kernel [2]) has no DPU kernel and no board CPU kernel: "
                                                               "both pool 2-D feature maps only"),
        (lambda: torch.nn.MaxPool3d(2), [1, 8, 4, 8, 8], "MaxPool", "3-D MaxPool (kernel [2, 2, 2]) has no DPU kernel and no board "
                                                                    "CPU kernel: both pool 2-D feature maps only"),
        (lambda: torch.nn.AvgPool3d(2), [1, 8, 4, 8, 8], "AveragePool", "3-D AveragePool (kernel [2, 2, 2]) has no DPU kernel and no "
                                                                        "board CPU kernel: both pool 2-D feature maps only"),
        (lambda: torch.nn.AdaptiveAvgPool3d(1), [1, 8, 4, 8, 8], "GlobalAveragePool", "3-D GlobalAveragePool (over a 5-D tensor) has no "
                                                                                      "DPU kernel and no board CPU kernel: both pool 2-D feature maps only"),
    ],
    ids=["Conv1d", "MaxPool1d", "MaxPool3d", "AvgPool3d", "AdaptiveAvgPool3d"],
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch: its legacy exporter is deprecated
def test_torch_1d_and_3d_kernels_have_no_dpu_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str], layer, shape: list[int],
                                                    op_type: str, message: str) -> None:
    """The DPU and the board CPU kernels are 2-D: torch's 1-D and 3-D layers were reported as DPU ops."""
    path = tmp_path / "m.onnx"
    torch.onnx.export(layer(), (torch.randn(shape),), str(path), dynamo=False)
    code = main([str(path), "--target", "dpu-kv260", "--json"])
    out, err = capsys.readouterr()
    assert (code, err) == (1, "")
    doc = json.loads(out)
    rule = "dpu.conv.1d" if op_type == "Conv" else "dpu.pool.rank"
    assert [(f["op_type"], f["rule"], f["message"]) for f in doc["findings"]] == [(op_type, rule, message)]
    assert doc["partition"]["devices"] == {"unsupported": {"ops": 1, "subgraphs": 1}}
