"""The DPU hardware variants: BatchNorm + ReLU models whose exported graphs run wholly on the DPU.

The variant changes the math (it is distilled, not exact), but every pass that lowers it for the
DPU is exact and is tested here against the variant itself; the exported streaming graphs must
pass each DPU rule set with every op on the DPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidconv_deploy import build_model
from vidconv_deploy.check import check_model
from vidconv_deploy.export.deploy_model import to_deploy
from vidconv_deploy.export.onnx_export import MethodModule, export_graph
from vidconv_deploy.export.passes import FoldBatchNorms, SplitConv, SplitTemporalChannels, apply_passes, dpu_passes
from vidconv_deploy.models.config import make_config

TINY = {"dims": (16, 32, 48, 64), "depths": (1, 1, 2, 1), "neck_dim": 32}


def randomise(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and scales, so that folding them is really tested."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen))
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.randn(n, generator=gen))
                module.bias.copy_(torch.randn(n, generator=gen))
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "gamma_tem")):
                p.copy_(torch.randn(p.shape, generator=gen))
    return model.eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_variant_names_set_batchnorm_and_relu_and_keep_parameter_names():
    faithful, variant = build_model("vic-nano"), build_model("vic-nano-dpu")
    assert (variant.cfg.norm, variant.cfg.act) == ("batch", "relu")
    assert not any(isinstance(m, (nn.LayerNorm, nn.GELU)) for m in variant.modules())
    # Every faithful tensor has a same-named, same-shaped tensor in the variant (LayerNorm -> BN affine).
    theirs = {k: v.shape for k, v in variant.state_dict().items()}
    assert all(theirs[k] == v.shape for k, v in faithful.state_dict().items())


@pytest.mark.parametrize("rewrite", [FoldBatchNorms(), SplitTemporalChannels(64)])
def test_each_dpu_pass_alone_is_exact(rewrite):
    model = randomise(build_model("vic-nano-dpu", num_classes=5, **TINY))
    clip = torch.randn(1, 9, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = to_deploy(model)
        after = rewrite.apply(to_deploy(model))
        assert rel(after(clip), before(clip)) < 1e-5
        assert rel(after(clip), model(clip)) < 1e-5
    if isinstance(rewrite, FoldBatchNorms):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in after.modules() if m is not after.neck[1])
    else:  # limit 64 at dilation 4 (stage 3, 48 channels) -> groups of 16; stage 4 (d=2, 64 ch) -> groups of 32
        assert [b.temporal.conv.sizes for b in after.stage3] == [[16, 16, 16]] * 2
        assert [b.temporal.conv.sizes for b in after.stage4] == [[32, 32]]


@pytest.mark.parametrize("arch", ["vic-t", "vic-s", "vic-b"])
def test_dilation_rule_holds_for_every_paper_arch_at_224_on_b4096(arch):
    """UG1414: dilation * channels <= 256 * 16 on B4096; ViC-T stage 3 has 14 * 384 = 5376 before the split."""
    cfg = make_config(f"{arch}-dpu", depths=(1, 1, 1, 1))
    model = randomise(build_model(f"{arch}-dpu", depths=(1, 1, 1, 1)))
    deploy = SplitTemporalChannels(256 * 16).apply(to_deploy(model))
    for stage, dim in ((deploy.stage3, cfg.dims[2]), (deploy.stage4, cfg.dims[3])):
        conv = stage[0].temporal.conv
        parts = conv.parts if isinstance(conv, SplitConv) else [conv]
        assert sum(p.in_channels for p in parts) == dim
        assert all(max(p.dilation) * p.in_channels <= 4096 for p in parts)
    assert isinstance(deploy.stage3[0].temporal.conv, SplitConv)  # 14 * C3 > 4096 for all three


@pytest.fixture(scope="module")
def streaming_graphs():
    model = randomise(build_model("vic-nano-dpu", num_classes=5, **TINY))
    deploy = apply_passes(to_deploy(model), dpu_passes(channel_parallel=16))
    early = export_graph(MethodModule(deploy, deploy.early), torch.randn(deploy.frame_shape()), "frame", "features")
    later = export_graph(MethodModule(deploy, deploy.later), torch.randn(deploy.collage_shape()), "collage", "logits")
    return early.model, later.model


@pytest.mark.parametrize("target", ["dpu-kv260", "dpu-zcu104", "dpu-zcu102", "dpu-vck190"])
def test_streaming_graphs_run_wholly_on_the_dpu(streaming_graphs, target):
    for graph in streaming_graphs:
        result = check_model(graph, target)
        assert result.compliant, [f.to_dict() for f in result.findings]
        devices = result.partition["devices"]
        assert set(devices) == {"DPU"} and devices["DPU"]["subgraphs"] == 1
    assert {n.op_type for n in streaming_graphs[0].graph.node} == {"Conv", "Relu", "Add"}
