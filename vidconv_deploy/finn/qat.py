"""Quantization-aware fine-tuning of the FINN variant, distilled from a float teacher (runs on CPU).

The FINN variant changes the math (BatchNorm, ReLU, integer weights and activations), so it learns
to reproduce its float teacher's logits: KL divergence between temperature-softened distributions
(Hinton et al. 2015, scaled by T^2), plus cross-entropy when the clips come with labels. Brevitas
trains through its quantizers with straight-through estimators; calibrate the student first
(:func:`vidconv_deploy.finn.model.calibrate`) so every activation scale starts from data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from vidconv_deploy.finn.model import value

#: Distillation temperature.
TEMPERATURE = 2.0


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                      temperature: float = TEMPERATURE) -> torch.Tensor:
    """KL(teacher || student) on softened logits, times T^2, plus cross-entropy on ``labels`` if given."""
    t = temperature
    loss = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t
    if labels is not None:
        loss = loss + F.cross_entropy(student, labels)
    return loss


def _split(item: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch is clips, or (clips, labels)."""
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def qat_finetune(student: nn.Module, teacher: nn.Module, clips_iter: Iterable[Any], steps: int, lr: float = 1e-4,
                 progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``student`` (a FinnViC) for ``steps`` batches from ``clips_iter`` against ``teacher``.

    ``clips_iter`` yields clips ``(B, L, 3, H, W)`` or ``(clips, labels)``; a re-iterable one (a list,
    a DataLoader) is cycled when shorter than ``steps``. Returns the first and last losses and the number of steps taken; the student is
    left in eval mode.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    teacher.eval()
    student.train()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses: list[float] = []
    columns = (TextColumn("QAT"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task("qat", total=steps, loss="-")
        while len(losses) < steps:
            before = len(losses)
            for item in clips_iter:
                clips, labels = _split(item)
                with torch.no_grad():
                    target = teacher(clips)
                loss = distillation_loss(value(student(clips)), target, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.update(task, advance=1, loss=f"{losses[-1]:.4f}")
                if len(losses) == steps:
                    break
            if len(losses) == before:
                raise ValueError(f"clips_iter ran out after {before} batches: pass a list or DataLoader "
                                 f"(re-iterable) or fewer steps")
    student.eval()
    return {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1], "losses": losses}
