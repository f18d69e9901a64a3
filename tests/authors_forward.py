"""A second, independent implementation of the authors' VidConv forward pass, from the written facts.

It works directly on an authors'-layout state dict (``backbone.*``, ``cls_head.*``) with
functional ops and explicit loops for the collage and the tiling, sharing no code with
``vidconv_deploy.models``. Facts (shared REFERENCE-IMPL): per-frame early net through downsample 2;
collage row-major; temporal dwconv (kernel = grid, dilation = per-frame size, no padding), times
gamma_tem, tiled, added to the 7x7 dwconv output before the LayerNorm; no final norm; neck conv
(no bias) + BatchNorm + GELU; average pool; average over segments; fc_cls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _ln_channels_first(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    return weight[:, None, None] * ((x - mean) / torch.sqrt(var + 1e-6)) + bias[:, None, None]


def _block(sd: dict, p: str, x: torch.Tensor, grid=None, dilation=None) -> torch.Tensor:
    channels = x.shape[1]
    mixed = F.conv2d(x, sd[p + "dwconv.weight"], sd[p + "dwconv.bias"], padding=3, groups=channels)
    if grid is not None:
        tem = F.conv2d(x, sd[p + "dwconv_tem.weight"], sd[p + "dwconv_tem.bias"], dilation=dilation, groups=channels)
        tem = tem * sd[p + "gamma_tem"].view(-1, 1, 1)
        rows, cols = grid
        h, w = tem.shape[2:]
        tiled = torch.empty_like(mixed)
        for r in range(rows):
            for c in range(cols):
                tiled[:, :, r * h:(r + 1) * h, c * w:(c + 1) * w] = tem
        mixed = mixed + tiled
    y = mixed.permute(0, 2, 3, 1)
    y = F.layer_norm(y, (channels,), sd[p + "norm.weight"], sd[p + "norm.bias"], eps=1e-6)
    y = F.linear(F.gelu(F.linear(y, sd[p + "pwconv1.weight"], sd[p + "pwconv1.bias"])),
                 sd[p + "pwconv2.weight"], sd[p + "pwconv2.bias"])
    y = sd[p + "gamma"] * y
    return x + y.permute(0, 3, 1, 2)


def _stage(sd: dict, s: int, x: torch.Tensor, **temporal) -> torch.Tensor:
    j = 0
    while f"backbone.stages.{s}.{j}.dwconv.weight" in sd:
        x = _block(sd, f"backbone.stages.{s}.{j}.", x, **temporal)
        j += 1
    return x


def _downsample(sd: dict, i: int, x: torch.Tensor) -> torch.Tensor:
    p = f"backbone.downsample_layers.{i}."
    x = _ln_channels_first(x, sd[p + "0.weight"], sd[p + "0.bias"])
    return F.conv2d(x, sd[p + "1.weight"], sd[p + "1.bias"], stride=2)


def authors_forward(sd: dict, clips: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Logits for ``clips`` of shape (B, segs*rows*cols, 3, H, W) under the authors' state dict ``sd``."""
    rows, cols = grid
    frames_per_clip = rows * cols
    batch, total, _, height, width = clips.shape
    segs = total // frames_per_clip
    x = clips.reshape(-1, 3, height, width)
    # early net, per frame
    x = F.conv2d(x, sd["backbone.downsample_layers.0.0.weight"], sd["backbone.downsample_layers.0.0.bias"], stride=4)
    x = _ln_channels_first(x, sd["backbone.downsample_layers.0.1.weight"], sd["backbone.downsample_layers.0.1.bias"])
    x = _stage(sd, 0, x)
    x = _downsample(sd, 1, x)
    x = _stage(sd, 1, x)
    x = _downsample(sd, 2, x)
    # collage: frame t of each clip at row t // cols, column t % cols
    n, c, h, w = x.shape
    collage = torch.empty(n // frames_per_clip, c, rows * h, cols * w)
    for clip in range(n // frames_per_clip):
        for t in range(frames_per_clip):
            r, col = divmod(t, cols)
            collage[clip, :, r * h:(r + 1) * h, col * w:(col + 1) * w] = x[clip * frames_per_clip + t]
    # later net on the collage
    x = _stage(sd, 2, collage, grid=grid, dilation=(height // 16, width // 16))
    x = _downsample(sd, 3, x)
    x = _stage(sd, 3, x, grid=grid, dilation=(height // 32, width // 32))
    if "cls_head.temp_conv.0.conv.weight" in sd:
        x = F.conv2d(x, sd["cls_head.temp_conv.0.conv.weight"], None, dilation=(height // 32, width // 32))
        bn = "cls_head.temp_conv.0.bn."
        x = (x - sd[bn + "running_mean"].view(-1, 1, 1)) / torch.sqrt(sd[bn + "running_var"].view(-1, 1, 1) + 1e-5)
        x = x * sd[bn + "weight"].view(-1, 1, 1) + sd[bn + "bias"].view(-1, 1, 1)
        x = F.gelu(x)
    features = x.mean(dim=(2, 3)).reshape(batch, segs, -1).mean(dim=1)
    return F.linear(features, sd["cls_head.fc_cls.weight"], sd["cls_head.fc_cls.bias"])
