"""Rewrite passes on a :class:`DeployViC`: small classes, each doing one thing, applied in order.

Targets differ in what they can run (a DPU has no Tile, a FINN build wants scales folded), so
each lowering is a pass a target lists in its recipe. Every pass here is exact up to float
rounding, and each is tested alone against the model before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


#: The exact standard-operator rewrite every target starts from.
STANDARD_PASSES: tuple[Pass, ...] = (FoldLayerScale(), FoldTemporalScale(), FoldNeckBatchNorm(), TileAsConcat())


def apply_passes(model: DeployViC, passes: Sequence[Pass]) -> DeployViC:
    """Apply ``passes`` in order."""
    for p in passes:
        model = p.apply(model)
    return model
