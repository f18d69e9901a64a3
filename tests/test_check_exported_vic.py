"""The checker on real exported ViC graphs: the faithful model fails the DPU rules for the documented reasons."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from vidconv_deploy import build_model
from vidconv_deploy.check import check_model
from vidconv_deploy.export.deploy_model import to_deploy
from vidconv_deploy.export.onnx_export import export_graph
from vidconv_deploy.export.passes import STANDARD_PASSES, apply_passes

# ViC-T widths at 224x224 (stage-3 dilation 14 at C=384, stage-4 dilation 7 at C=768), one block per stage.
VIC_T_ONE_BLOCK = {"depths": (1, 1, 1, 1), "num_classes": 10}


@pytest.fixture(scope="module")
def graphs():
    torch.manual_seed(0)
    model = build_model("vic-t", **VIC_T_ONE_BLOCK).eval()
    clip = torch.randn(1, 9, 3, 224, 224)
    faithful = export_graph(model, clip, "clip", "logits").model
    deploy = export_graph(apply_passes(to_deploy(model), STANDARD_PASSES), clip, "clip", "logits").model
    return faithful, deploy


def test_faithful_vic_is_not_dpu_compliant_for_the_documented_reasons(graphs):
    result = check_model(graphs[0], "dpu-kv260")
    assert not result.compliant
    errors = Counter((f.op_type, f.rule) for f in result.errors)
    # 4 block norms + stem + 3 downsample norms; 4 block GELUs + the neck's
    assert errors[("LayerNormalization", "dpu.unsupported-op")] == 8
    assert errors[("Gelu", "dpu.unsupported-op")] + errors[("GELU", "dpu.unsupported-op")] == 5
    dilated = {f.node: f for f in result.errors if f.rule == "dpu.dwconv.dilation-channels"}
    assert set(dilated) == {"/stages.2/stages.2.0/dwconv_tem/Conv", "/stages.3/stages.3.0/dwconv_tem/Conv"}
    assert "dilation 14 x 384 channels = 5376 > 256 * 16 = 4096" in dilated["/stages.2/stages.2.0/dwconv_tem/Conv"].message
    assert "groups of <= 292 channels" in dilated["/stages.2/stages.2.0/dwconv_tem/Conv"].fix
    neck = [f for f in result.errors if f.rule == "dpu.conv.dilation-channels"]
    assert [f.node for f in neck] == ["/neck/conv/Conv"]  # dilation 7 x 768 input channels
    cpu = Counter(f.op_type for f in result.findings if f.rule == "dpu.cpu-op")
    assert cpu["Tile"] == 2 and cpu["Transpose"] > 0
    assert all(f.fix and f.source for f in result.findings)
    assert result.partition["devices"]["DPU"]["subgraphs"] > 1  # the split Vitis AI users meet after compiling


def test_deploy_graph_keeps_the_hardware_problems_but_loses_tile_and_block_transposes(graphs):
    result = check_model(graphs[1], "dpu-kv260")
    assert not result.compliant
    ops = Counter(f.op_type for f in result.findings)
    assert ops["Tile"] == 0 and ops["Transpose"] == 1  # only the collage rearrangement is left
    assert ops["LayerNorm"] == 8 and ops["GELU"] == 5
    assert sum(f.rule == "dpu.dwconv.dilation-channels" for f in result.findings) == 2


def test_both_graphs_are_standard_static_onnx(graphs):
    for graph in graphs:
        assert check_model(graph, "onnx").compliant
