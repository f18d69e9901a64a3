"""One training loop for training, distillation and QAT: progress bar, schedule, resumable state.

The state (weights, optimizer, schedule, epoch, history, RNG) is saved atomically after every epoch
and loaded with ``weights_only=True``, so a run that is killed resumes where it stopped and a state
file from elsewhere can never run code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from vidconv_deploy.atomic import atomic_path
from vidconv_deploy.errors import UserError
from vidconv_deploy.train.optim import adamw, warmup_cosine

Batch = tuple[torch.Tensor, torch.Tensor]
#: ``loss_fn(model, clips, labels) -> scalar loss``: what one step minimises.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation settings of one run (paper section 4.2, scaled down)."""

    epochs: int
    steps_per_epoch: int
    lr: float = 1e-3
    weight_decay: float = 0.05
    backbone_lr_factor: float = 1.0
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0


@dataclasses.dataclass
class TrainState:
    """Where a run stands: epochs done and each epoch's figures (loss, and whatever the callback adds)."""

    epoch: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


def _save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, state: TrainState) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "epoch": state.epoch, "history": state.history, "rng": torch.get_rng_state()}, tmp)


def _load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> TrainState:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
    except Exception as err:  # any unreadable or foreign file: one line, the fix
        raise UserError(f"cannot resume from {path}: {str(err).splitlines()[0][:200]}; delete it to start afresh") from None
    return TrainState(epoch=int(saved["epoch"]), history=list(saved["history"]))


def progress_bar() -> Progress:
    """The bar every long loop shows (on stderr, so stdout stays clean for JSON)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)


def fit(
    model: nn.Module,
    cfg: TrainConfig,
    batches: Callable[[int], Iterable[Batch]],
    loss_fn: LossFn,
    state_path: Path | None = None,
    on_epoch_end: Callable[[int, nn.Module], dict[str, float]] | None = None,
    description: str = "training",
) -> TrainState:
    """Train ``model`` for ``cfg.epochs`` epochs; ``batches(epoch)`` yields that epoch's (clips, labels).

    With ``state_path`` the run resumes from that file when it exists and rewrites it after each
    epoch. ``on_epoch_end(epoch, model)`` may return figures (e.g. validation accuracy) for the history.
    """
    # Channels-last weights make PyTorch's CPU convs (the depthwise ones above all) 2-4x faster here.
    model.to(memory_format=torch.channels_last)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_factor)
    total = cfg.epochs * cfg.steps_per_epoch
    scheduler = warmup_cosine(optimizer, max(1, round(cfg.warmup_epochs * cfg.steps_per_epoch)), total)
    state = TrainState()
    if state_path is not None and state_path.exists():
        state = _load_state(state_path, model, optimizer, scheduler)
    with progress_bar() as progress:
        task = progress.add_task(description, total=total, completed=state.epoch * cfg.steps_per_epoch, info="")
        for epoch in range(state.epoch, cfg.epochs):
            model.train()
            losses: list[float] = []
            for step, (clips, labels) in enumerate(batches(epoch)):
                if step == cfg.steps_per_epoch:
                    break
                loss = loss_fn(model, clips, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                progress.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {sum(losses) / len(losses):.3f}")
            record = {"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses))}
            if on_epoch_end is not None:
                model.eval()
                record.update(on_epoch_end(epoch, model))
            state.history.append(record)
            state.epoch = epoch + 1
            if state_path is not None:
                _save_state(state_path, model, optimizer, scheduler, state)
    model.eval()
    return state
