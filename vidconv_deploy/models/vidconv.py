"""VidConv (ViC): ConvNeXt for video, read top to bottom as the architecture.

Early net (per frame): stem, stage 1, downsample, stage 2, downsample -> H/16 x W/16 maps.
Collage: the L = rows*cols frame maps tiled row-major into one (rows*H/16) x (cols*W/16) map.
Later net (on the collage): stage 3 of VidConv blocks, downsample, stage 4 of VidConv blocks;
no final backbone norm. Neck: conv with kernel = grid and dilation = per-frame size, no padding,
no bias, BatchNorm, GELU (collage -> one frame-sized map). Head: average pool, average over the
clip's segments, dropout, linear. This is the authors' forward pass (see shared REFERENCE-IMPL).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vidconv_deploy.errors import UserError
from vidconv_deploy.models.collage import frames_to_collage
from vidconv_deploy.models.config import ViCConfig, make_config
from vidconv_deploy.models.layers import ConvNeXtBlock, TemporalBlock, activation, norm2d

#: Stages (0-based) that run per frame before the collage; the rest run on the collage.
EARLY_STAGES = (0, 1)


class VidConvBackbone(nn.Module):
    """Stem, four stages and their downsamples, with Facebook ConvNeXt's module names."""

    def __init__(self, cfg: ViCConfig) -> None:
        super().__init__()
        dims, depths = cfg.dims, cfg.depths
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), norm2d(cfg.norm, dims[0]))]
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(norm2d(cfg.norm, dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            )
        total = sum(depths)
        rates = [cfg.drop_path_rate * k / max(total - 1, 1) for k in range(total)]  # linear 0 -> rate
        self.stages = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            first = sum(depths[:i])
            if i in EARLY_STAGES:
                blocks = [
                    ConvNeXtBlock(dim, rates[first + j], cfg.layer_scale_init, cfg.norm, cfg.act) for j in range(depth)
                ]
            else:
                blocks = [
                    TemporalBlock(
                        dim, cfg.grid, cfg.temporal_dilation(i), rates[first + j],
                        cfg.layer_scale_init, cfg.temporal_scale_init, cfg.norm, cfg.act,
                    )
                    for j in range(depth)
                ]
            self.stages.append(nn.Sequential(*blocks))

    def forward_early(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` frames -> ``(N, C3, H/16, W/16)``: stem, stages 1-2 and downsample 2, per frame."""
        x = frames
        for i in EARLY_STAGES:
            x = self.stages[i](self.downsample_layers[i](x))
        return self.downsample_layers[2](x)

    def forward_later(self, collage: torch.Tensor) -> torch.Tensor:
        """Collage ``(B, C3, rows*H/16, cols*W/16)`` -> ``(B, C4, rows*H/32, cols*W/32)``: stages 3-4."""
        x = self.stages[2](collage)
        return self.stages[3](self.downsample_layers[3](x))


class Neck(nn.Module):
    """Conv (kernel = grid, dilation = per-frame size, no padding, no bias) + BatchNorm + GELU (ReLU in hardware variants)."""

    def __init__(self, cfg: ViCConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            cfg.dims[3], cfg.neck_dim, kernel_size=cfg.grid, dilation=cfg.stage4_frame_size, bias=False
        )
        self.bn = nn.BatchNorm2d(cfg.neck_dim)
        self.act = activation(cfg.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class VidConv(nn.Module):
    """A VidConv video classifier. Input ``(B, L, 3, H, W)`` or MMAction2's ``(B, segs*L, 3, H, W)``."""

    def __init__(self, cfg: ViCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = VidConvBackbone(cfg)
        self.neck = Neck(cfg) if cfg.neck else None
        feature_dim = cfg.neck_dim if cfg.neck else cfg.dims[3]
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(feature_dim, cfg.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ConvNeXt's init (truncated normal 0.02, zero bias) and TSNHead's for the classifier (normal 0.01)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def split_segments(self, clips: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Check the input and flatten it to frames ``(B*segs*L, 3, H, W)``; return them and segs."""
        cfg = self.cfg
        expected = f"(batch, {cfg.frames}*segments, 3, {cfg.image_size[0]}, {cfg.image_size[1]})"
        if clips.ndim != 5 or clips.shape[2] != 3 or tuple(clips.shape[3:]) != cfg.image_size:
            raise UserError(f"input of shape {tuple(clips.shape)} does not fit this model: expected {expected}")
        if clips.shape[1] % cfg.frames:
            raise UserError(f"{clips.shape[1]} frames is not a multiple of the clip length {cfg.frames}: expected {expected}")
        return clips.reshape(-1, *clips.shape[2:]), clips.shape[1] // cfg.frames

    def forward_features(self, collage: torch.Tensor) -> torch.Tensor:
        """Later net + neck + spatial average pool: collage -> ``(B, feature_dim)``."""
        x = self.backbone.forward_later(collage)
        if self.neck is not None:
            x = self.neck(x)
        return x.mean(dim=(2, 3))

    def forward_with_features(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the pooled clip features the head sees (distillation matches both)."""
        frames, segs = self.split_segments(clips)
        collage = frames_to_collage(self.backbone.forward_early(frames), self.cfg.grid)
        features = self.forward_features(collage)
        # TSNHead's consensus: average the segments' features, then classify. The classifier is
        # affine, so this equals averaging the segments' scores.
        features = features.reshape(clips.shape[0], segs, -1).mean(dim=1)
        return self.head(self.dropout(features)), features

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(clips)[0]


def build_model(
    arch: str,
    num_classes: int = 400,
    frames: int = 9,
    image_size: int | tuple[int, int] | None = None,
    neck: bool = True,
    grid: tuple[int, int] | None = None,
    **overrides: Any,
) -> VidConv:
    """Build a VidConv from an architecture name (``vic-nano``, ``vic-t``, ``vic-s``, ``vic-b``, or a ``-dpu`` variant).

    ``frames`` must be a square number unless ``grid`` (rows, cols) is given. ``overrides`` set
    any other :class:`ViCConfig` field, e.g. ``drop_path_rate=0.25`` or tiny ``dims``/``depths`` for tests.
    """
    return VidConv(make_config(arch, num_classes, frames, image_size, neck, grid, **overrides))
