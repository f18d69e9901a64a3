"""The building blocks of VidConv: ConvNeXt's block and the VidConv (temporal) block.

Parameter names follow Facebook's ConvNeXt and the authors' code (``dwconv``, ``norm``, ``pwconv1``,
``pwconv2``, ``gamma``, ``dwconv_tem``, ``gamma_tem``) so their checkpoints map one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidconv_deploy.models.collage import tile_to_collage


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt's ``channels_first`` LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def norm2d(kind: str, dim: int) -> nn.Module:
    """The NCHW channel norm of a config: ConvNeXt's LayerNorm, or BatchNorm in the hardware variants."""
    return LayerNorm2d(dim, eps=1e-6) if kind == "layer" else nn.BatchNorm2d(dim)


def activation(kind: str) -> nn.Module:
    """GELU (the paper's) or ReLU (the hardware variants': the DPU fuses it into the conv)."""
    return nn.GELU() if kind == "gelu" else nn.ReLU()


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p`` (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> LayerNorm -> Linear 4C -> GELU -> Linear C -> gamma -> residual (ConvNeXt, Liu et al. 2022).

    ``norm="batch"``/``act="relu"`` give the hardware variant's block with the same parameter names,
    so a faithful checkpoint initialises it tensor for tensor.
    """

    def __init__(
        self, dim: int, drop_path: float = 0.0, layer_scale_init: float = 1e-6, norm: str = "layer", act: str = "gelu"
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6) if norm == "layer" else nn.BatchNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = activation(act)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path)

    def mixed(self, x: torch.Tensor) -> torch.Tensor:
        """The token mixer's output (NCHW) that the norm and MLP act on."""
        return self.dwconv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mixed(x)
        if isinstance(self.norm, nn.BatchNorm2d):
            y = self.norm(y).permute(0, 2, 3, 1)
        else:
            y = self.norm(y.permute(0, 2, 3, 1))
        y = self.pwconv2(self.act(self.pwconv1(y)))
        y = (self.gamma * y).permute(0, 3, 1, 2)
        return x + self.drop_path(y)


class TemporalBlock(ConvNeXtBlock):
    """The VidConv block (paper Fig. 3a): a ConvNeXt block whose mixer adds a temporal term.

    On a collage of ``grid`` frames each of size ``frame_size``, a depthwise conv with kernel ``grid``
    and dilation ``frame_size`` and no padding sees, for every pixel position, the same pixel in
    every frame. Its per-frame-sized output T, scaled by ``gamma_tem`` (alpha in Eq. 1), is tiled
    back over the collage and added to the spatial 7x7 output, inside the residual branch and
    before the LayerNorm (as in the authors' code).
    """

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        frame_size: tuple[int, int],
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-6,
        temporal_scale_init: float = 1e-2,
        norm: str = "layer",
        act: str = "gelu",
    ) -> None:
        super().__init__(dim, drop_path, layer_scale_init, norm, act)
        self.grid = grid
        self.dwconv_tem = nn.Conv2d(dim, dim, kernel_size=grid, dilation=frame_size, groups=dim)
        self.gamma_tem = nn.Parameter(torch.full((dim,), temporal_scale_init))

    def mixed(self, x: torch.Tensor) -> torch.Tensor:
        temporal = self.dwconv_tem(x) * self.gamma_tem[:, None, None]
        return self.dwconv(x) + tile_to_collage(temporal, self.grid)
