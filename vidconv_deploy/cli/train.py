"""``vidconv-train``: train a VidConv on a video dataset folder, as the paper does, scaled down.

AdamW, warm-up then cosine decay, drop path (paper section 4.2); no left-right flip, because the
synthetic dataset's classes include left and right motion. After training it scores the test
split with normal, reversed and shuffled frame order (paper Table 10) and writes the weights
(safetensors with the config) and a model card (YAML) beside them. ``--resume`` continues a
killed run from the state file written after every epoch.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from rich.console import Console

from vidconv_deploy.atomic import write_text
from vidconv_deploy.checkpoints import save_checkpoint
from vidconv_deploy.cli.common import run_main
from vidconv_deploy.data.dataset import TrainClips, eval_clips, train_clips
from vidconv_deploy.data.sources import open_split
from vidconv_deploy.evaluate.classifiers import TorchClassifier
from vidconv_deploy.evaluate.run import ORDERS, score_videos
from vidconv_deploy.models.config import arch_names
from vidconv_deploy.models.vidconv import VidConv, build_model
from vidconv_deploy.train.loop import TrainConfig, fit


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vidconv-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder with train/val/test lists (vidconv-make-data)")
    parser.add_argument("--arch", default="vic-nano", help=f"architecture: {', '.join(arch_names())} (default vic-nano)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs (default 12)")
    parser.add_argument("--batch", type=int, default=16, help="clips per step (default 16)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    parser.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, clip sampling and order (default 0)")
    parser.add_argument("--out", type=Path, default=Path("models/vic-nano.safetensors"),
                        help="weights file; the model card goes beside it as .yaml (default models/vic-nano.safetensors)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT.state.pt if a run was interrupted")
    return parser.parse_args(argv)


def batches(dataset: TrainClips, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stack the dataset's clips into ``(B, L, 3, H, W)`` batches (the last one may be short)."""
    clips: list[torch.Tensor] = []
    labels: list[int] = []
    for clip, label in dataset:
        clips.append(clip)
        labels.append(label)
        if len(clips) == batch:
            yield torch.stack(clips), torch.tensor(labels)
            clips, labels = [], []
    if clips:
        yield torch.stack(clips), torch.tensor(labels)


def accuracy(model: VidConv, data: Path, split: str, order: str = "normal") -> dict[str, float]:
    """Top-1/top-5 of ``model`` on a split (all test views per video), with frames in ``order``."""
    cfg = model.cfg
    videos = eval_clips(data, cfg.frames, cfg.image_size, split=split)
    scores = score_videos({"model": TorchClassifier(model)}, videos, total=len(videos), order=order,
                          description=f"{split} ({order})")["model"]
    return {"top1": round(scores.topk(1), 2), "top5": round(scores.topk(5), 2), "videos": int(len(scores.labels))}


def model_card(args: argparse.Namespace, model: VidConv, classes: Sequence[str], history: list[dict[str, float]],
               minutes: float, test: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The YAML model card: config, data, training recipe, accuracy, and the command that made it."""
    return {
        "name": model.cfg.arch,
        "weights": args.out.name,
        "config": model.cfg.to_dict(),
        "data": {"folder": str(args.data), "classes": list(classes), "sampling": "dataset.json protocol"},
        "training": {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "weight_decay": args.weight_decay,
                     "drop_path": args.drop_path, "seed": args.seed, "optimizer": "AdamW, warm-up 1 epoch, cosine",
                     "minutes": round(minutes, 1), "machine": f"{torch.get_num_threads()} CPU threads",
                     "history": history},
        "accuracy": {"test": test},
        "made_with": "vidconv-train " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                 if k != "resume"),
    }


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    classes = open_split(args.data, "train").classes
    torch.manual_seed(args.seed)
    model = build_model(args.arch, num_classes=len(classes), drop_path_rate=args.drop_path)
    cfg = model.cfg
    dataset = train_clips(args.data, cfg.frames, cfg.image_size, seed=args.seed)
    steps = math.ceil(len(dataset) / args.batch)
    config = TrainConfig(epochs=args.epochs, steps_per_epoch=steps, lr=args.lr, weight_decay=args.weight_decay)

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dataset.set_epoch(epoch)
        return batches(dataset, args.batch)

    def loss(m: torch.nn.Module, clips: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(m(clips), labels)

    start = time.perf_counter()
    state = fit(model, config, epoch_batches, loss, state_path=args.out.with_suffix(".state.pt") if args.resume else None,
                on_epoch_end=lambda epoch, m: {f"val_{k}": v for k, v in accuracy(m, args.data, "val").items()},
                description=f"training {cfg.arch}")
    minutes = (time.perf_counter() - start) / 60
    test = {order: accuracy(model, args.data, "test", order) for order in ORDERS}
    save_checkpoint(model, args.out)
    card = model_card(args, model, classes, state.history, minutes, test)
    card["data"]["skipped_videos"] = dataset.skips.to_dict()
    write_text(args.out.with_suffix(".yaml"), yaml.safe_dump(card, sort_keys=False))
    Console().print(f"{cfg.arch}: test top-1 {test['normal']['top1']:.1f}% (reversed {test['reverse']['top1']:.1f}%, "
                    f"shuffled {test['shuffle']['top1']:.1f}%) after {minutes:.1f} min -> {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vidconv-train", _main, argv)
