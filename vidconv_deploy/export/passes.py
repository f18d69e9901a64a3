"""Rewrite passes on a :class:`DeployViC`: small classes, each doing one thing, applied in order.

Targets differ in what they can run (a DPU has no Tile, a FINN build wants scales folded), so
each lowering is a pass a target lists in its recipe. Every pass here is exact up to float
rounding, and each is tested alone against the model before it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from vidconv_deploy.export.deploy_model import ChannelScale, DeployBlock, DeployViC, TemporalBranch, TileConcat


class Pass:
    """A rewrite of a DeployViC in place; ``apply`` returns the model so passes chain."""

    name = "pass"

    def apply(self, model: DeployViC) -> DeployViC:
        raise NotImplementedError


def _blocks(model: DeployViC) -> Iterable[DeployBlock]:
    return (m for m in model.modules() if isinstance(m, DeployBlock))


def _branches(model: DeployViC) -> Iterable[TemporalBranch]:
    return (m for m in model.modules() if isinstance(m, TemporalBranch))


@torch.no_grad()
def _scale_conv_outputs(conv: nn.Conv2d, scale: torch.Tensor) -> None:
    """Multiply a conv's output channels by ``scale`` by scaling its weights and bias."""
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    if conv.bias is not None:
        conv.bias.mul_(scale.view(-1))


def _fold_channel_scale(owner: nn.Module, attribute: str, conv: nn.Conv2d) -> None:
    """Fold ``owner.<attribute>`` (a ChannelScale applied after ``conv``) into ``conv`` and drop it."""
    scale = getattr(owner, attribute)
    if isinstance(scale, ChannelScale):
        _scale_conv_outputs(conv, scale.scale)
        setattr(owner, attribute, nn.Identity())


class FoldLayerScale(Pass):
    """Fold each block's layer scale gamma into its second 1x1 conv."""

    name = "fold-layer-scale"

    def apply(self, model: DeployViC) -> DeployViC:
        for block in _blocks(model):
            _fold_channel_scale(block, "layer_scale", block.pw2)
        return model


class FoldTemporalScale(Pass):
    """Fold the temporal alpha (gamma_tem) into the dilated depthwise conv."""

    name = "fold-temporal-scale"

    def apply(self, model: DeployViC) -> DeployViC:
        for branch in _branches(model):
            _fold_channel_scale(branch, "scale", branch.conv)
        return model


class FoldNeckBatchNorm(Pass):
    """Fold the neck's BatchNorm (running statistics) into the neck conv, which gains a bias."""

    name = "fold-neck-batchnorm"

    @torch.no_grad()
    def apply(self, model: DeployViC) -> DeployViC:
        if not isinstance(model.neck, nn.Sequential) or not isinstance(model.neck[1], nn.BatchNorm2d):
            return model
        conv, bn = model.neck[0], model.neck[1]
        std = torch.sqrt(bn.running_var + bn.eps)
        scale = bn.weight / std
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, dilation=conv.dilation, bias=True)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bias)
        model.neck = nn.Sequential(fused, model.neck[2])
        return model


class TileAsConcat(Pass):
    """Lower the temporal tile from ONNX Tile (a board-CPU op on DPUs) to Concat."""

    name = "tile-as-concat"

    def apply(self, model: DeployViC) -> DeployViC:
        for branch in _branches(model):
            branch.tile = TileConcat(model.cfg.grid)
        return model


def _batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference BatchNorm as ``x * scale + shift`` per channel (running statistics)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def _fold_into_conv_output(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one conv with a bias."""
    scale, shift = _batchnorm_affine(bn)
    fused = copy.deepcopy(conv)
    if fused.bias is None:
        fused.bias = nn.Parameter(torch.zeros(conv.out_channels))
    fused.bias.copy_(fused.bias * scale + shift)
    fused.weight.mul_(scale.view(-1, 1, 1, 1))
    return fused


@torch.no_grad()
def _fold_into_conv_input(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """``conv(bn(x))`` as one conv; exact only for an unpadded, ungrouped conv (1x1, or 2x2 stride 2)."""
    assert conv.groups == 1 and all(p == 0 for p in conv.padding), "input folding needs an unpadded dense conv"
    scale, shift = _batchnorm_affine(bn)
    fused = copy.deepcopy(conv)
    if fused.bias is None:
        fused.bias = nn.Parameter(torch.zeros(conv.out_channels))
    fused.bias.add_((conv.weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3)))
    fused.weight.mul_(scale.view(1, -1, 1, 1))
    return fused


class FoldBatchNorms(Pass):
    """Fold a hardware variant's BatchNorms into the neighbouring convs (the DPU has no standalone BN).

    The stem's BN follows its conv; a downsample's BN and a block's BN precede an unpadded conv
    (2x2 stride 2, and the block's first 1x1), so each folds exactly into one conv.
    """

    name = "fold-batchnorms"

    def apply(self, model: DeployViC) -> DeployViC:
        if isinstance(model.stem[1], nn.BatchNorm2d):
            model.stem = nn.Sequential(_fold_into_conv_output(model.stem[0], model.stem[1]))
        for name in ("down2", "down3", "down4"):
            down = getattr(model, name)
            if isinstance(down[0], nn.BatchNorm2d):
                setattr(model, name, nn.Sequential(_fold_into_conv_input(down[0], down[1])))
        for block in _blocks(model):
            if isinstance(block.norm, nn.BatchNorm2d):
                block.pw1 = _fold_into_conv_input(block.norm, block.pw1)
                block.norm = nn.Identity()
        return model


class SplitConv(nn.Module):
    """A depthwise conv computed as channel groups (Split -> convs -> Concat): the same numbers."""

    def __init__(self, conv: nn.Conv2d, max_channels: int) -> None:
        super().__init__()
        self.sizes = [min(max_channels, conv.out_channels - start) for start in range(0, conv.out_channels, max_channels)]
        self.parts = nn.ModuleList()
        start = 0
        for size in self.sizes:
            part = nn.Conv2d(size, size, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=size,
                             bias=conv.bias is not None)
            with torch.no_grad():
                part.weight.copy_(conv.weight[start:start + size])
                if conv.bias is not None:
                    part.bias.copy_(conv.bias[start:start + size])
            self.parts.append(part)
            start += size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(chunk) for part, chunk in zip(self.parts, torch.split(x, self.sizes, dim=1))], dim=1)


class SplitTemporalChannels(Pass):
    """Split each temporal depthwise conv into channel groups that satisfy the DPU's dilation rule.

    UG1414 (DPUCZDX8G) requires ``dilation * input_channels <= 256 * channel_parallel`` for
    (depthwise) convs; ViC-T's stage-3 temporal conv has dilation 14 and 384 channels (5376 > 4096
    on B4096). Splitting a depthwise conv by channels changes no number, and every group of at
    most ``limit // dilation`` channels passes the rule; the Concat along channels stays on the DPU.
    """

    name = "split-temporal-channels"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def apply(self, model: DeployViC) -> DeployViC:
        for branch in _branches(model):
            conv = branch.conv
            if isinstance(conv, nn.Conv2d):
                max_channels = self.limit // max(conv.dilation)
                if conv.in_channels > max_channels:
                    branch.conv = SplitConv(conv, max_channels)
        return model


#: The exact standard-operator rewrite every target starts from.
STANDARD_PASSES: tuple[Pass, ...] = (FoldLayerScale(), FoldTemporalScale(), FoldNeckBatchNorm(), TileAsConcat())


#: Every pass a recipe (``export/*.yaml``) can list, by name; each factory takes the target's rule-set data
#: (the DPU's channel parallelism sets the temporal split: UG1414's dilation x channels <= 256 x channel_parallel).
PASSES: dict[str, Callable[[Mapping[str, Any]], Pass]] = {
    FoldLayerScale.name: lambda rules: FoldLayerScale(),
    FoldTemporalScale.name: lambda rules: FoldTemporalScale(),
    FoldNeckBatchNorm.name: lambda rules: FoldNeckBatchNorm(),
    TileAsConcat.name: lambda rules: TileAsConcat(),
    FoldBatchNorms.name: lambda rules: FoldBatchNorms(),
    SplitTemporalChannels.name: lambda rules: SplitTemporalChannels(256 * int(rules["channel_parallel"])),
}


def passes_by_name(names: Sequence[str], rules: Mapping[str, Any]) -> tuple[Pass, ...]:
    """The passes a recipe lists, in its order, configured from the target's rules."""
    return tuple(PASSES[name](rules) for name in names)


def dpu_passes(channel_parallel: int) -> tuple[Pass, ...]:
    """The DPU recipe: the standard rewrite, BatchNorms folded, temporal convs split to the dilation rule."""
    return (*STANDARD_PASSES, FoldBatchNorms(), SplitTemporalChannels(256 * channel_parallel))


def apply_passes(model: DeployViC, passes: Sequence[Pass]) -> DeployViC:
    """Apply ``passes`` in order."""
    for p in passes:
        model = p.apply(model)
    return model
