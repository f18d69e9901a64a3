"""A ConvNeXt/ViC-style block must come out non-compliant on the DPU, for the right reasons."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from check_graphs import G

from vidconv_deploy.check import check_model


def vic_block(decomposed: bool) -> onnx.ModelProto:
    """Temporal dwconv (3x3, dilation 14, C=384) -> NHWC -> LayerNorm -> MLP with GELU -> NCHW -> Tile."""
    g = G([1, 384, 16, 16], opset=17 if decomposed else 20)
    y = g.conv("x", 384, 384, (3, 3), group=384, dilations=[14, 14], pads=[14] * 4)
    t = g.op("Transpose", [y], perm=[0, 2, 3, 1])
    if decomposed:
        norm = g.layernorm_decomposed(t, 384)
    else:
        norm = g.op("LayerNormalization", [t, g.const(np.ones(384, np.float32)), g.const(np.zeros(384, np.float32))], axis=-1)
    h = g.op("MatMul", [norm, g.const(np.ones((384, 16), np.float32))])
    h = g.gelu_decomposed(h) if decomposed else g.op("Gelu", [h])
    h = g.op("MatMul", [h, g.const(np.ones((16, 384), np.float32))])
    back = g.op("Transpose", [h], perm=[0, 3, 1, 2])
    out = g.op("Tile", [g.op("Add", ["x", back]), g.const(np.array([1, 1, 2, 1], np.int64))])
    return g.model(out)


@pytest.mark.parametrize("decomposed", [True, False], ids=["legacy-export", "single-ops"])
def test_vic_block_is_not_compliant_on_kv260(decomposed: bool) -> None:
    result = check_model(vic_block(decomposed), "dpu-kv260")
    assert not result.compliant
    got = sorted((f.severity, f.op_type, f.rule) for f in result.findings)
    ln, gelu = ("LayerNorm", "GELU") if decomposed else ("LayerNormalization", "Gelu")
    assert got == sorted([
        ("error", "Conv", "dpu.dwconv.dilation-channels"),
        ("error", ln, "dpu.unsupported-op"),
        ("error", gelu, "dpu.unsupported-op"),
        ("warning", "Transpose", "dpu.cpu-op"),
        ("warning", "Transpose", "dpu.cpu-op"),
        ("warning", "Tile", "dpu.cpu-op"),
    ])
    by_rule = {f.rule: f for f in result.findings if f.severity == "error" and f.op_type == "Conv"}
    assert "groups of <= 292 channels" in by_rule["dpu.dwconv.dilation-channels"].fix
    texts = {f.op_type: f for f in result.findings}
    assert "BatchNorm folded into the next conv" in texts[ln].fix
    assert "ReLU" in texts[gelu].fix
    assert not any("Erf" in f.op_type or "Erf" in f.message for f in result.findings)


def test_vic_block_partition() -> None:
    """The dwconv falls to the CPU with the Transpose; LayerNorm and GELU run nowhere; the MatMuls
    and the residual Add are DPU islands between them: 8 subgraphs for one block."""
    part = check_model(vic_block(True), "dpu-kv260").partition
    assert part["devices"] == {
        "CPU": {"ops": 4, "subgraphs": 3},
        "DPU": {"ops": 3, "subgraphs": 3},
        "unsupported": {"ops": 2, "subgraphs": 2},
    }
    assert [(s["device"], s["ops"]) for s in part["subgraphs"]] == [
        ("CPU", ["conv3", "transpose4"]),
        ("unsupported", ["reducemean5..add17"]),
        ("DPU", ["matmul19"]),
        ("unsupported", ["div21..mul27"]),
        ("DPU", ["matmul29"]),
        ("CPU", ["transpose30"]),
        ("DPU", ["add31"]),
        ("CPU", ["tile33"]),
    ]
