"""One training loop for training, distillation and QAT: progress bar, schedule, resumable state, on the
CPU or a GPU, in one process or several (torchrun and DistributedDataParallel: see ``runtime``).

The state (weights, optimizer, schedule, loss scale, epoch, history, RNG, and the run's settings) is
saved atomically after every epoch (by rank 0; every process of a run reads it to resume) and
loaded with ``weights_only=True``, so a run that is killed resumes where it stopped and a state
file from elsewhere can never run code. The settings (data folder,
architecture, hyper-parameters) are stored so that a resumed run can prove it continues the same
run: resuming with other settings would train a model that no model card could describe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vidconv_deploy.atomic import atomic_path
from vidconv_deploy.errors import UserError
from vidconv_deploy.progress import progress_bar
from vidconv_deploy.train.optim import adamw, warmup_cosine
from vidconv_deploy.train.runtime import Runtime, all_gather, all_sum, main_process

Batch = tuple[torch.Tensor, torch.Tensor]
#: A process's batch once its share of the epoch ran out (or every video of a step was bad): no clip.
NO_BATCH: Batch = (torch.empty(0), torch.empty(0, dtype=torch.long))
#: ``loss_fn(forward, clips, labels) -> scalar loss``: what one step minimises; ``forward(clips)`` runs the model.
LossFn = Callable[[Callable[[torch.Tensor], Any], torch.Tensor, torch.Tensor], torch.Tensor]
#: What defines a run, as the command line names it: ``{"--lr": 0.002, "--data": "/abs/path", ...}``.
#: Values are str, int, float or bool, which ``torch.load(weights_only=True)`` reads back.
Settings = Mapping[str, str | int | float | bool]


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


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """What a state file says about its run without loading it into a model: epochs done and planned, settings."""

    epoch: int
    epochs: int | None
    settings: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        """Every planned epoch is done: the state holds nothing the run's weights file does not."""
        return self.epochs is not None and self.epoch >= self.epochs


def _save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                scaler: torch.amp.GradScaler, state: TrainState, epochs: int, settings: Settings | None) -> None:
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "epoch": state.epoch, "epochs": epochs, "history": state.history,
             "rng": torch.get_rng_state(), "settings": None if settings is None else dict(settings)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # drop path on a GPU draws from its generator
        saved["cuda_rng"] = torch.cuda.get_rng_state()
    with atomic_path(path) as tmp:
        torch.save(saved, tmp)


def _read(path: Path) -> dict[str, Any]:
    """The state file's contents; an unreadable or foreign file is one line and the fix."""
    try:
        with path.open("rb") as f:
            if f.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive; anything else is not our state
                raise ValueError("it is not a PyTorch file")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or not {"model", "optimizer", "scheduler", "epoch", "history", "rng"} <= set(saved):
            raise ValueError("it is not a training state written by vidconv-deploy")
    except Exception as err:  # torch raises many types for foreign files; each means "not our state"
        raise UserError(f"cannot resume from {path}: {(str(err).strip() or type(err).__name__).splitlines()[0][:200]}; "
                        f"delete it to start afresh") from None
    return saved


def saved_run(path: Path) -> SavedRun | None:
    """The run a state file holds (``None`` when there is no file), read safely, without a model."""
    if not path.exists():
        return None
    saved = _read(path)
    settings, epochs = saved.get("settings"), saved.get("epochs")
    return SavedRun(int(saved["epoch"]), int(epochs) if isinstance(epochs, int) else None,
                    dict(settings) if isinstance(settings, dict) else None)


def _shown(value: object) -> str:
    """A setting as a command line reads: a switch is on or off, an unset option is (none)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "(none)" if value is None or value == "" else str(value)


def check_settings(path: Path, saved: Mapping[str, Any] | None, given: Settings) -> None:
    """Refuse to resume a run under other settings, naming each difference (flag, the state's value, the given one).

    Every setting counts: a changed learning rate, batch or epoch count changes the schedule, and
    other data or another architecture make the resumed weights something no model card describes.
    """
    if saved is None:
        raise UserError(f"cannot resume from {path}: it does not record the settings of its run (written by an older "
                        f"vidconv-deploy); delete it to start afresh")
    differences = [f"{name} {_shown(saved.get(name))} in the state, {_shown(value)} given"
                   for name, value in given.items() if saved.get(name) != value]
    differences += [f"{name} {_shown(value)} in the state, not given" for name, value in saved.items() if name not in given]
    if differences:
        raise UserError(f"cannot resume from {path}: it is a run with other settings ({'; '.join(differences)}): "
                        f"repeat the flags of that run, or delete the file to start afresh")


def open_state(path: Path, resume: bool, settings: Settings) -> bool:
    """The resume policy of the training commands, applied before any work: whether to continue the saved run.

    The state of an interrupted run is never discarded silently: without ``--resume`` an unfinished
    run's state is an error (continue it, or delete it); a finished run's state (kept after its
    weights and card are written) holds nothing more than they do and is replaced, with a note.
    With ``--resume`` the state must come from a run with the same ``settings``; without a state
    file there is nothing to continue and the run starts afresh, with a note.
    """
    run = saved_run(path)
    notes = Console(stderr=True, quiet=not main_process())  # every process of a run reads the state; one speaks
    if run is None:
        if resume:
            notes.print(f"no state at {path}: starting afresh")
        return False
    if not resume:
        if not run.finished:
            done = f"{run.epoch} of {run.epochs}" if run.epochs is not None else str(run.epoch)
            raise UserError(f"{path} holds an unfinished run ({done} epochs done): pass --resume to continue it, "
                            f"or delete the file to start afresh")
        notes.print(f"replacing the state of a finished run in {path}")
        return False
    check_settings(path, run.settings, settings)
    return True


def _load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                scaler: torch.amp.GradScaler, settings: Settings | None, device: torch.device) -> TrainState:
    saved = _read(path)
    if settings is not None:
        check_settings(path, saved.get("settings"), settings)
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):  # an empty dict: the run did not scale its loss
            scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"])
        if device.type == "cuda" and "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
    except Exception as err:  # any unreadable or foreign file: one line, the fix
        raise UserError(f"cannot resume from {path}: {str(err).splitlines()[0][:200]}; delete it to start afresh") from None
    return TrainState(epoch=int(saved["epoch"]), history=list(saved["history"]))


class _Method(nn.Module):
    """One method of a model as a module's forward: DDP averages the gradients only of what runs through its own
    forward, and distillation trains through ``forward_with_features``."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, clips: torch.Tensor) -> Any:
        return getattr(self.model, self.method)(clips)


def _forward(model: nn.Module, method: str, runtime: Runtime) -> Callable[[torch.Tensor], Any]:
    """What the loss calls: ``model.method`` in a world of one, through DistributedDataParallel in a world of several."""
    if runtime.world.size == 1:
        return getattr(model, method)
    device_ids = [runtime.device] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(_Method(model, method), device_ids=device_ids)


def _agree(path: Path, epoch: int) -> None:
    """Every process resumed from the same epoch (each reads the state file: it must see the same one)."""
    epochs = all_gather(epoch)
    if len(set(epochs)) > 1:
        raise UserError(f"the processes of this run see different states in {path} (epochs done: "
                        f"{', '.join(map(str, epochs))}): put --out on a folder every node sees, or delete the file")


def fit(
    model: nn.Module,
    cfg: TrainConfig,
    batches: Callable[[int], Iterable[Batch]],
    loss_fn: LossFn,
    state_path: Path | None = None,
    on_epoch_end: Callable[[int, nn.Module], dict[str, float]] | None = None,
    description: str = "training",
    settings: Settings | None = None,
    resume: bool = True,
    runtime: Runtime = Runtime(),
    method: str = "forward",
) -> TrainState:
    """Train ``model`` for ``cfg.epochs`` epochs; ``batches(epoch)`` yields this process's (clips, labels) of that epoch.

    ``loss_fn(forward, clips, labels)`` gets ``forward``, which runs ``model.<method>`` on the
    runtime's device (under autocast with ``--amp``, through DistributedDataParallel when torchrun
    started several processes). Each process's loss is weighted by its share of the step's clips, so
    the averaged gradient is the mean over every clip of the step; a step in which some process has
    no clip (all of its videos bad) is skipped by every process. The epoch's loss is the mean over
    the steps of each step's loss over all its clips.

    With ``state_path`` the state is rewritten (by rank 0) after each epoch and, if ``resume``, the
    run continues from that file when it exists (``resume=False`` starts afresh and replaces it; see
    :func:`open_state`). ``settings`` are stored in the state and, when resuming, must equal the
    stored ones (:func:`check_settings`). ``on_epoch_end(epoch, model)`` runs in every process and
    may return figures (e.g. validation accuracy) for the history.
    """
    world, device = runtime.world, runtime.device
    if runtime.sync_bn and world.size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Channels-last weights make convs faster: PyTorch's CPU ones (the depthwise above all) 2-4x here, and
    # tensor-core convs on GPUs take channels-last as they are.
    model.to(device, memory_format=torch.channels_last)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_factor)
    total = cfg.epochs * cfg.steps_per_epoch
    scheduler = warmup_cosine(optimizer, max(1, round(cfg.warmup_epochs * cfg.steps_per_epoch)), total)
    scaler = runtime.grad_scaler()
    state = TrainState()
    if resume and state_path is not None and state_path.exists():
        state = _load_state(state_path, model, optimizer, scheduler, scaler, settings, device)
    if state_path is not None and world.size > 1:
        _agree(state_path, state.epoch)
    forward = _forward(model, method, runtime)
    with progress_bar() as progress:
        progress.disable = not world.main  # one bar per run, not one per process
        task = progress.add_task(description, total=total, completed=state.epoch * cfg.steps_per_epoch, info="")
        for epoch in range(state.epoch, cfg.epochs):
            model.train()
            losses: list[float] = []  # this process's, for the bar
            step_losses = 0.0  # this process's part of the sum over steps of each step's loss over all its clips
            steps = 0
            epoch_batches = iter(batches(epoch))
            for _ in range(cfg.steps_per_epoch):  # as many steps in every process, even one whose share ran out
                clips, labels = next(epoch_batches, NO_BATCH)
                counts = [0.0] * world.size
                counts[world.rank] = float(len(labels))
                counts = all_sum(counts)
                progress.update(task, advance=1)
                if min(counts) == 0:
                    continue
                share = len(labels) / sum(counts)  # this process's share of the step's clips
                clips = clips.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with runtime.autocast():
                    loss = loss_fn(forward, clips, labels)
                optimizer.zero_grad(set_to_none=True)
                # DDP averages the processes' gradients: weighting by share * processes makes that the mean over all clips.
                scaler.scale(loss * (share * world.size)).backward()
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                losses.append(loss.item())
                step_losses += losses[-1] * share
                steps += 1
                progress.update(task, info=f"epoch {epoch + 1}/{cfg.epochs} loss {sum(losses) / len(losses):.3f}")
            record = {"epoch": epoch + 1, "loss": all_sum([step_losses])[0] / max(1, steps)}
            if on_epoch_end is not None:
                model.eval()
                record.update(on_epoch_end(epoch, model))
            state.history.append(record)
            state.epoch = epoch + 1
            if state_path is not None and world.main:
                _save_state(state_path, model, optimizer, scheduler, scaler, state, cfg.epochs, settings)
    model.eval()
    return state
