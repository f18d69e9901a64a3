"""VidConv rewritten into modules that export to plain, static ONNX operators.

Everything is NCHW: the blocks' Linear layers become 1x1 convs, the channels-last LayerNorm
becomes a LayerNorm over the channel axis written with ReduceMean/Sub/Pow/Sqrt/Div (no Transpose
pairs), and every shape is a Python constant from the config (no Shape/Gather in the graph).
Hardware variants (``norm="batch"``, ``act="relu"``) keep their BatchNorms and ReLUs here; the
DPU passes fold the BatchNorms into neighbouring convs.
:func:`to_deploy` is exact: the result computes what the VidConv computes, up to float rounding.
The ``passes`` module then folds scales and picks per-target lowerings.

Modules are named after the paper (stem, stage1..stage4, down2..down4, neck, head) so exported
node names read as ``/stage3/blocks.0/temporal/conv/Conv`` in Netron.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vidconv_deploy.models.collage import frames_to_collage
from vidconv_deploy.models.config import ViCConfig
from vidconv_deploy.models.layers import ConvNeXtBlock, LayerNorm2d, TemporalBlock
from vidconv_deploy.models.vidconv import VidConv


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of NCHW, in elementwise ops only (exports without Transpose)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().view(1, -1, 1, 1))
        self.bias = nn.Parameter(bias.detach().clone().view(1, -1, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        var = centred.pow(2).mean(dim=1, keepdim=True)
        return centred / torch.sqrt(var + self.eps) * self.weight + self.bias


class ChannelScale(nn.Module):
    """Per-channel multiply (layer scale gamma, temporal alpha) before a pass folds it into a conv."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class TileRepeat(nn.Module):
    """Tile a frame-sized map over the collage with ``repeat`` (exports as ONNX Tile)."""

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, 1, self.grid[0], self.grid[1])


class TileConcat(nn.Module):
    """Tile a frame-sized map over the collage with Concat along W then H (no ONNX Tile)."""

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row = torch.cat([x] * self.grid[1], dim=3)
        return torch.cat([row] * self.grid[0], dim=2)


def conv1x1_from_linear(linear: nn.Linear) -> nn.Conv2d:
    """The 1x1 conv on NCHW that computes what ``linear`` computes on channels-last."""
    conv = nn.Conv2d(linear.in_features, linear.out_features, kernel_size=1)
    conv.weight.data.copy_(linear.weight.data[:, :, None, None])
    conv.bias.data.copy_(linear.bias.data)
    return conv


class TemporalBranch(nn.Module):
    """Dilated depthwise conv (kernel = grid, dilation = frame size), alpha, tiled over the collage."""

    def __init__(self, block: TemporalBlock) -> None:
        super().__init__()
        self.conv = copy.deepcopy(block.dwconv_tem)
        self.scale: nn.Module = ChannelScale(block.gamma_tem)
        self.tile: nn.Module = TileRepeat(block.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tile(self.scale(self.conv(x)))


def _norm(norm: nn.Module) -> nn.Module:
    """A channel norm on NCHW: LayerNorm in elementwise ops, or a copy of a variant's BatchNorm."""
    if isinstance(norm, nn.BatchNorm2d):
        return copy.deepcopy(norm)
    assert isinstance(norm, (LayerNorm2d, nn.LayerNorm))
    return ChannelLayerNorm(norm.weight, norm.bias, norm.eps)


class DeployBlock(nn.Module):
    """A ConvNeXt or VidConv block on NCHW: dw 7x7 (+ temporal) -> LN -> 1x1 -> GELU -> 1x1 -> gamma -> +x."""

    def __init__(self, block: ConvNeXtBlock) -> None:
        super().__init__()
        self.spatial = copy.deepcopy(block.dwconv)
        self.temporal = TemporalBranch(block) if isinstance(block, TemporalBlock) else None
        self.norm: nn.Module = _norm(block.norm)
        self.pw1 = conv1x1_from_linear(block.pwconv1)
        self.act: nn.Module = copy.deepcopy(block.act)
        self.pw2 = conv1x1_from_linear(block.pwconv2)
        self.layer_scale: nn.Module = ChannelScale(block.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.spatial(x)
        if self.temporal is not None:
            y = y + self.temporal(x)
        y = self.pw2(self.act(self.pw1(self.norm(y))))
        return x + self.layer_scale(y)


class DeployViC(nn.Module):
    """The rewritten VidConv, with the early net, collage and later net callable separately.

    ``forward`` takes one clip ``(1, L, 3, H, W)`` (the whole-clip graph); :meth:`early` one frame
    ``(N, 3, H, W)``; :meth:`later` one collage. Eval mode only: dropout and drop path are gone.
    """

    def __init__(self, model: VidConv) -> None:
        super().__init__()
        cfg: ViCConfig = model.cfg
        self.cfg = cfg
        bb = model.backbone
        self.stem = nn.Sequential(copy.deepcopy(bb.downsample_layers[0][0]), _norm(bb.downsample_layers[0][1]))
        downs = [nn.Sequential(_norm(d[0]), copy.deepcopy(d[1])) for d in list(bb.downsample_layers)[1:]]
        stages = [nn.Sequential(*[DeployBlock(b) for b in stage]) for stage in bb.stages]
        self.stage1, self.down2, self.stage2, self.down3 = stages[0], downs[0], stages[1], downs[1]
        self.stage3, self.down4, self.stage4 = stages[2], downs[2], stages[3]
        self.neck: nn.Module = nn.Identity()
        if model.neck is not None:
            neck = model.neck
            self.neck = nn.Sequential(copy.deepcopy(neck.conv), copy.deepcopy(neck.bn), copy.deepcopy(neck.act))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = copy.deepcopy(model.head)
        self.eval()

    def early(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame early net: ``(N, 3, H, W)`` -> ``(N, C3, H/16, W/16)``."""
        return self.down3(self.stage2(self.down2(self.stage1(self.stem(frames)))))

    def later(self, collage: torch.Tensor) -> torch.Tensor:
        """Later net, neck and head on one collage -> logits ``(1, classes)``."""
        x = self.neck(self.stage4(self.down4(self.stage3(collage))))
        return self.head(torch.flatten(self.pool(x), 1))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        frames = clip.reshape(cfg.frames, 3, *cfg.image_size)
        return self.later(frames_to_collage(self.early(frames), cfg.grid))

    def frame_shape(self) -> tuple[int, ...]:
        return (1, 3, *self.cfg.image_size)

    def collage_shape(self) -> tuple[int, ...]:
        (rows, cols), (h, w) = self.cfg.grid, self.cfg.stage3_frame_size
        return (1, self.cfg.dims[2], rows * h, cols * w)


def to_deploy(model: VidConv) -> DeployViC:
    """The exact NCHW rewrite of ``model`` (a copy; ``model`` is untouched), in eval mode."""
    return DeployViC(model)
