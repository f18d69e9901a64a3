"""``vidconv-train``: train a VidConv on a video dataset folder, as the paper does, scaled down.

AdamW, warm-up then cosine decay, drop path (paper section 4.2); no left-right flip, because the
synthetic dataset's classes include left and right motion. After training it scores the test
split with normal, reversed and shuffled frame order (paper Table 10) and writes the weights
(safetensors with the config) and a model card (YAML) beside them, by default under ``runs/``:
the shipped ``models/`` folder is written only when ``--out`` names it.

The state of the run (weights, optimizer, epochs done, settings) is saved to ``OUT.state.pt``
after every epoch, so a killed run continues with ``--resume``, which refuses a state whose
settings (data, architecture, hyper-parameters) differ from the flags given: the model card
always describes the weights. Without ``--resume`` the state of an unfinished run is an error
(continue it or delete it); a finished run's state is replaced, with a note.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from rich.console import Console

from vidconv_deploy.atomic import write_text
from vidconv_deploy.checkpoints import save_checkpoint
from vidconv_deploy.cli.common import run_main
from vidconv_deploy.cli.training_flags import (EXIT_CODES, RUNS, add_runtime_flags, check_out, check_training_flags,
                                               merge_skips, run_training)
from vidconv_deploy.data.dataset import EvalClips, TrainClips, protocol_for
from vidconv_deploy.data.loader import clip_batches
from vidconv_deploy.data.sources import list_digest, open_split
from vidconv_deploy.errors import UserError
from vidconv_deploy.evaluate.classifiers import TorchClassifier
from vidconv_deploy.evaluate.run import ORDERS, score_videos
from vidconv_deploy.models.config import arch_names
from vidconv_deploy.models.vidconv import VidConv, build_model
from vidconv_deploy.train.loop import Settings, TrainConfig, fit, open_state
from vidconv_deploy.train.runtime import Runtime, all_sum, on_device


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vidconv-train", description=__doc__.replace("``", ""), epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder with train/val/test lists (vidconv-make-data)")
    parser.add_argument("--arch", default="vic-nano", help=f"architecture: {', '.join(arch_names())} (default vic-nano)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs (default 12)")
    parser.add_argument("--batch", type=int, default=16, help="clips per step (default 16)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    parser.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate, 0 to below 1 (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, clip sampling and order (default 0)")
    parser.add_argument("--out", type=Path,
                        help=f"weights file (.safetensors); the model card goes beside it as .yaml and the state as "
                             f".state.pt (default {RUNS}/<arch>.safetensors)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT.state.pt; it must have been started with the same --data, --arch, "
                             "--epochs, --batch, --lr, --weight-decay, --drop-path, --seed, --amp and --sync-bn "
                             "(a difference is an error)")
    add_runtime_flags(parser)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RUNS / f"{args.arch}.safetensors"
    return args


def require_videos(clips: TrainClips | EvalClips, split: str, data: Path) -> None:
    """An empty split (every listed video unusable, in every process's share) is an error: training or scoring nothing is no result."""
    if not all_sum([len(clips)])[0]:
        raise UserError(f"no usable videos in the {split} split of {data} ({clips.skips.counts()}): "
                        f"give --data a dataset folder whose {split} videos are readable (vidconv-make-data writes one)")


def settings_of(args: argparse.Namespace, train_digest: str) -> Settings:
    """What defines a training run, by flag: a resumed run must have all of it unchanged."""
    return {"--data": str(args.data.resolve()), "--data train list": train_digest, "--arch": args.arch,
            "--epochs": args.epochs, "--batch": args.batch, "--lr": args.lr, "--weight-decay": args.weight_decay,
            "--drop-path": args.drop_path, "--seed": args.seed, "--amp": args.amp, "--sync-bn": args.sync_bn}


def accuracy(model: torch.nn.Module, videos: EvalClips, split: str, order: str = "normal") -> dict[str, float]:
    """Top-1/top-5 of ``model`` on a split's videos (all test views per video), with frames in ``order``.

    In a run of several processes each scores its share of the videos and the hits are summed.
    """
    scores = score_videos({"model": TorchClassifier(model)}, videos, total=len(videos), order=order,
                          description=f"{split} ({order})")["model"]
    scored = len(scores.labels)
    # topk is a percentage of this share: back to whole hits, exact, before the shares are summed
    top1, top5, total = all_sum([round(scores.topk(k) * scored / 100) if scored else 0 for k in (1, 5)] + [scored])
    if not total:  # every video failed while decoding: a figure of nothing is no figure
        raise UserError(f"no video of the {split} split could be decoded ({videos.skips.counts()}): "
                        f"give --data a dataset folder whose {split} videos are readable")
    return {"top1": round(100.0 * (top1 / total), 2), "top5": round(100.0 * (top5 / total), 2), "videos": int(total)}


def model_card(args: argparse.Namespace, model: VidConv, classes: Sequence[str], history: list[dict[str, float]],
               minutes: float, test: dict[str, dict[str, float]], runtime: Runtime) -> dict[str, Any]:
    """The YAML model card: config, data, training recipe, accuracy, and the command that made it."""
    return {
        "name": model.cfg.arch,
        "weights": args.out.name,
        "config": model.cfg.to_dict(),
        "data": {"folder": str(args.data), "classes": list(classes), "sampling": "dataset.json protocol"},
        "training": {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "weight_decay": args.weight_decay,
                     "drop_path": args.drop_path, "seed": args.seed, "optimizer": "AdamW, warm-up 1 epoch, cosine",
                     "amp": args.amp, "minutes": round(minutes, 1), "machine": runtime.describe(),
                     "history": history},
        "accuracy": {"test": test},
        "made_with": "vidconv-train " + " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                                                 for k, v in vars(args).items() if k != "resume" and v is not False),
    }


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    check_training_flags(args.epochs, args.batch, args.lr, args.seed)
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise UserError(f"--weight-decay {args.weight_decay} is not a decay: give 0 or more, e.g. --weight-decay 0.05")
    if not 0 <= args.drop_path < 1:
        raise UserError(f"--drop-path {args.drop_path} is not a rate: give a number from 0 to below 1, e.g. --drop-path 0.1")
    if args.arch not in arch_names():
        raise UserError(f"--arch {args.arch} is not an architecture: choose one of {', '.join(arch_names())}")
    check_out(args.out)
    return run_training(args, _train)


def _train(args: argparse.Namespace, runtime: Runtime) -> int:
    """Train, score and (rank 0) write, in each process of the run."""
    world = runtime.world
    sources = {split: open_split(args.data, split) for split in ("train", "val", "test")}  # every list, before any work
    settings = settings_of(args, list_digest(sources["train"], args.data))
    state_path = args.out.with_suffix(".state.pt")
    resume = open_state(state_path, args.resume, settings)
    classes = sources["train"].classes
    torch.manual_seed(args.seed)
    model = build_model(args.arch, num_classes=len(classes), drop_path_rate=args.drop_path)
    cfg = model.cfg
    dataset = TrainClips(sources["train"].items, protocol_for(sources["train"], cfg.frames, None), cfg.image_size,
                         seed=args.seed)
    require_videos(dataset, "train", args.data)
    evaluation = {split: EvalClips(world.share(sources[split].items), protocol_for(sources[split], cfg.frames, None),
                                   cfg.image_size)
                  for split in ("val", "test")}
    for split, videos in evaluation.items():
        require_videos(videos, split, args.data)
    steps = math.ceil(len(dataset) / args.batch)
    config = TrainConfig(epochs=args.epochs, steps_per_epoch=steps, lr=args.lr, weight_decay=args.weight_decay)
    loader = clip_batches(dataset, runtime.batch_per_process(args.batch), world.rank, world.size, args.workers,
                          pin_memory=runtime.device.type == "cuda")

    def loss(forward: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(forward(clips), labels)

    def validate(epoch: int, m: torch.nn.Module) -> dict[str, float]:
        return {f"val_{k}": v for k, v in accuracy(on_device(m, runtime.device), evaluation["val"], "val").items()}

    start = time.perf_counter()
    state = fit(model, config, loader, loss, state_path=state_path, settings=settings, resume=resume,
                on_epoch_end=validate, description=f"training {cfg.arch}", runtime=runtime)
    minutes = (time.perf_counter() - start) / 60
    test = {order: accuracy(on_device(model, runtime.device), evaluation["test"], "test", order) for order in ORDERS}
    merge_skips(dataset.skips)
    if not world.main:
        return 0
    save_checkpoint(model.cpu(), args.out)
    card = model_card(args, model, classes, state.history, minutes, test, runtime)
    card["data"]["skipped_videos"] = dataset.skips.to_dict()
    write_text(args.out.with_suffix(".yaml"), yaml.safe_dump(card, sort_keys=False))
    Console().print(f"{cfg.arch}: test top-1 {test['normal']['top1']:.1f}% (reversed {test['reverse']['top1']:.1f}%, "
                    f"shuffled {test['shuffle']['top1']:.1f}%) after {minutes:.1f} min -> {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vidconv-train", _main, argv)
