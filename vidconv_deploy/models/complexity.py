"""Parameters and multiply-accumulates (MACs) per part of a VidConv, as the paper counts them.

MACs are those of the convolutions and linear layers for one clip (one view); the paper calls
these FLOPs (fvcore/mmcv convention). Shapes come from a forward pass on PyTorch's ``meta``
device, so even ViC-B at 16 frames costs no real compute and no memory.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
from torch import nn

from vidconv_deploy.models.config import ViCConfig
from vidconv_deploy.models.vidconv import VidConv

#: Reporting order of the parts.
PARTS = ("stem", "stage1", "stage2", "stage3", "stage4", "neck", "head")


@dataclasses.dataclass(frozen=True)
class PartCost:
    """Parameters and MACs of one part of the network."""

    name: str
    params: int
    macs: int


def part_of(qualified_name: str) -> str:
    """Which reported part a module or parameter belongs to (a downsample belongs to the stage it feeds)."""
    pieces = qualified_name.split(".")
    if pieces[0] == "backbone":
        index = int(pieces[2])
        if pieces[1] == "downsample_layers":
            return "stem" if index == 0 else f"stage{index + 1}"
        return f"stage{index + 1}"
    return pieces[0]


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    return output.numel() * module.in_features  # nn.Linear


def measure(cfg: ViCConfig) -> list[PartCost]:
    """Parameters and MACs of each part in :data:`PARTS` for one clip of ``cfg`` (parts absent get 0)."""
    with torch.device("meta"):
        model = VidConv(cfg).eval()
    params: dict[str, int] = OrderedDict((p, 0) for p in PARTS)
    for name, tensor in model.named_parameters():
        params[part_of(name)] += tensor.numel()
    macs: dict[str, int] = OrderedDict((p, 0) for p in PARTS)
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            part = part_of(name)

            def hook(mod: nn.Module, _inp: object, out: torch.Tensor, part: str = part) -> None:
                macs[part] += _layer_macs(mod, out)

            hooks.append(module.register_forward_hook(hook))
    clip = torch.empty((1, cfg.frames, 3, *cfg.image_size), device="meta")
    with torch.no_grad():
        model(clip)
    for handle in hooks:
        handle.remove()
    return [PartCost(p, params[p], macs[p]) for p in PARTS]
