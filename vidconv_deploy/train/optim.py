"""AdamW and its learning-rate schedule as the paper trains ViC (section 4.2), scaled to any run length.

The paper: AdamW, lr 1e-3 decaying by cosine to 5e-6, linear warm-up over the first epoch, and the
backbone's learning rate multiplied by l_b (0.25 for ViC-T) because the head and the temporal convs
start from scratch. As in ConvNeXt, norms, biases and the per-channel scales get no weight decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Parameters that are per-channel scales or shifts: decaying them towards zero only hurts.
NO_DECAY_SUFFIXES = ("bias", "gamma", "gamma_tem")


def param_groups(model: nn.Module, weight_decay: float, backbone_lr_factor: float) -> list[dict]:
    """Split parameters by (backbone or not) x (decayed or not); each group carries its lr factor."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim > 1 and not name.endswith(NO_DECAY_SUFFIXES)
        backbone = name.startswith("backbone.") and "dwconv_tem" not in name and "gamma_tem" not in name
        groups.setdefault((backbone, decay), []).append(param)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0,
         "lr_factor": backbone_lr_factor if backbone else 1.0}
        for (backbone, decay), params in sorted(groups.items())
    ]


def adamw(model: nn.Module, lr: float, weight_decay: float = 0.05, backbone_lr_factor: float = 1.0) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; each group's lr is ``lr * lr_factor``."""
    groups = param_groups(model, weight_decay, backbone_lr_factor)
    for group in groups:
        group["lr"] = lr * group["lr_factor"]
    return torch.optim.AdamW(groups, lr=lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_ratio: float = 5e-3) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to each group's lr, then cosine decay to ``min_ratio`` of it (paper: 1e-3 -> 5e-6)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
