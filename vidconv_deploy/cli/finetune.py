"""``vidconv-finetune``: distil a deploy variant (``vic-t-dpu``) from a VidConv checkpoint, or QAT its FINN variant.

The student starts from the teacher's weights (LayerNorm -> BatchNorm, GELU -> ReLU) and learns to
match the teacher's logits (KL at temperature 2) and pooled features (MSE), plus cross-entropy
where the clips have labels. ``--qat`` makes the student the Brevitas FINN variant at ``--bits``
instead (from the teacher, or from ``--init``, e.g. the distilled ``vic-nano-dpu``), calibrates its
quantizers on the clips and trains it through them (straight-through estimators) on the logits'
KL plus cross-entropy; the result is a FINN checkpoint for ``vidconv-export --target finn-<board>``.
Runs on the CPU for small models, shows progress, and resumes from the state file written after
every epoch (``--resume``). With a dataset folder that has a test split, the student's accuracy
and its top-1 agreement with the teacher go into its model card.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import yaml
from rich.console import Console

from vidconv_deploy.atomic import write_text
from vidconv_deploy.checkpoints import load_model, save_checkpoint
from vidconv_deploy.cli.common import run_main
from vidconv_deploy.cli.train import batches
from vidconv_deploy.data.dataset import TrainClips, protocol_for
from vidconv_deploy.data.sources import NO_LABEL, open_split, scan_folder
from vidconv_deploy.errors import UserError
from vidconv_deploy.evaluate.classifiers import TorchClassifier
from vidconv_deploy.evaluate.sharded import score_split
from vidconv_deploy.models.config import split_arch
from vidconv_deploy.models.variants import init_variant
from vidconv_deploy.models.vidconv import VidConv
from vidconv_deploy.train.loop import TrainConfig, fit
from vidconv_deploy.train.losses import DistillLoss


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vidconv-finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="faithful checkpoint (.safetensors or authors' .pth)")
    parser.add_argument("--student", help="deploy variant to distil, e.g. vic-nano-dpu or vic-t-dpu (not with --qat)")
    parser.add_argument("--qat", action="store_true", help="quantization-aware training of the FINN variant instead")
    parser.add_argument("--bits", default="w4a4", help="--qat: weight/activation bits wXaY (default w4a4)")
    parser.add_argument("--init", type=Path, help="--qat: float checkpoint the FINN student starts from (default: the teacher)")
    parser.add_argument("--clips", type=Path, required=True, help="dataset folder (train list) or a folder of videos")
    parser.add_argument("--epochs", type=int, default=4, help="epochs (default 4)")
    parser.add_argument("--batch", type=int, default=16, help="clips per step (default 16)")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of clip sampling and order (default 0)")
    parser.add_argument("--out", type=Path, help="student weights file (default: models/<student>.safetensors, "
                                                 "models/<arch>-finn-<bits>.safetensors with --qat)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT.state.pt if a run was interrupted")
    return parser.parse_args(argv)


def training_clips(folder: Path, frames: int, image_size: tuple[int, int], seed: int) -> TrainClips:
    """Random training clips of a dataset folder's train split, or of every video in a plain folder."""
    if (folder / "train.txt").is_file():
        source = open_split(folder, "train")
    else:
        source = scan_folder(folder)
    return TrainClips(source.items, protocol_for(source, frames, source.protocol or "kinetics"), image_size, seed=seed)


def dpu_student(args: argparse.Namespace, teacher: VidConv) -> VidConv:
    """The deploy variant ``--student`` initialised from the teacher's weights."""
    base, settings = split_arch(args.student or "")
    if not settings or base != teacher.cfg.arch:
        raise UserError(f"--student {args.student} is not a deploy variant of the teacher ({teacher.cfg.arch}): "
                        f"use --student {teacher.cfg.arch}-dpu, or --qat for the FINN variant")
    student, _ = init_variant(teacher, args.student.removeprefix(f"{base}-"))
    return student


def finn_student(args: argparse.Namespace, teacher: VidConv) -> torch.nn.Module:
    """The FINN variant at ``--bits`` from ``--init`` (or the teacher), its quantizers calibrated on the clips."""
    from vidconv_deploy.data.calibration import calibration_clips
    from vidconv_deploy.finn.model import Bits, calibrate, from_float

    bits = Bits.parse(args.bits)
    source = load_model(args.init)[0].eval() if args.init else teacher
    cfg = source.cfg
    clips, _, _ = calibration_clips(args.clips, cfg.frames, cfg.image_size)
    student = from_float(source, bits)
    calibrate(student, [torch.from_numpy(c)[None] for c in clips], reestimate_bn=cfg.norm == "layer")
    return student


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    teacher, _ = load_model(args.teacher)
    teacher.eval().requires_grad_(False)
    if args.qat:
        from vidconv_deploy.finn.checkpoint import save_finn_checkpoint

        student = finn_student(args, teacher)
        name, save = f"{split_arch(student.cfg.arch)[0]}-finn-{student.bits}", save_finn_checkpoint
        recipe = f"QAT of the FINN variant ({student.bits}): KL(T=2) on logits + CE, straight-through estimators"
    else:
        student = dpu_student(args, teacher)
        name, save = student.cfg.arch, save_checkpoint
        recipe = "KL(T=2) on logits + MSE on pooled features + 0.5 CE"
    out = args.out or Path("models") / f"{name}.safetensors"
    cfg = student.cfg
    dataset = training_clips(args.clips, cfg.frames, cfg.image_size, args.seed)
    if not len(dataset):
        raise UserError(f"no usable videos in {args.clips} ({dataset.skips.counts()}): give --clips a folder of videos")
    config = TrainConfig(epochs=args.epochs, steps_per_epoch=math.ceil(len(dataset) / args.batch), lr=args.lr,
                         warmup_epochs=0.25, weight_decay=0.0 if args.qat else 0.05)
    # QAT: logits only (the FINN student has no float features to match), full-weight cross-entropy.
    criterion = DistillLoss(label_weight=1.0) if args.qat else DistillLoss()

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dataset.set_epoch(epoch)
        return batches(dataset, args.batch)

    def loss(model: torch.nn.Module, clips: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = labels if bool((labels != NO_LABEL).all()) else None
        if args.qat:
            with torch.no_grad():
                target = teacher(clips)
            return criterion(model(clips).value, target, labels=known)
        with torch.no_grad():
            t_logits, t_features = teacher.forward_with_features(clips)
        s_logits, s_features = model.forward_with_features(clips)
        return criterion(s_logits, t_logits, s_features, t_features, known)

    start = time.perf_counter()
    state = fit(student, config, epoch_batches, loss, out.with_suffix(".state.pt") if args.resume else None,
                description=f"{'QAT of' if args.qat else 'distilling'} {name} from {teacher.cfg.arch}")
    minutes = (time.perf_counter() - start) / 60
    save(student, out)
    made_with = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
                         if v is not None and v is not False and k != "resume")
    card = {"name": name, "weights": out.name, "config": cfg.to_dict(),
            "distilled_from": {"teacher": str(args.teacher), "arch": teacher.cfg.arch,
                               "student_init": str(args.init or args.teacher) if args.qat else str(args.teacher)},
            "data": {"folder": str(args.clips), "skipped_videos": dataset.skips.to_dict()},
            "training": {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": args.seed,
                         "loss": recipe, "minutes": round(minutes, 1), "machine": f"{torch.get_num_threads()} CPU threads",
                         "history": state.history},
            "made_with": f"vidconv-finetune {made_with}"}
    if args.qat:
        card["bits"] = str(student.bits)
    if (args.clips / "test.txt").is_file():
        source = open_split(args.clips, "test")
        scores, _ = score_split(source.items, lambda: {"student": TorchClassifier(student), "teacher": TorchClassifier(teacher)},
                                protocol_for(source, cfg.frames, None), cfg.image_size)
        card["accuracy"] = {"test": {name: {"top1": round(s.topk(1), 2), "top5": round(s.topk(5), 2), "videos": len(s.labels)}
                                     for name, s in scores.items()}}
        card["accuracy"]["test"]["top1_agreement_with_teacher"] = round(scores["student"].agreement(scores["teacher"]), 2)
    write_text(out.with_suffix(".yaml"), yaml.safe_dump(card, sort_keys=False))
    Console().print(f"{name} {'QAT' if args.qat else 'distilled'} from {teacher.cfg.arch} in {minutes:.1f} min -> {out}"
                    + (f"; test top-1 {card['accuracy']['test']['student']['top1']:.1f}% (teacher "
                       f"{card['accuracy']['test']['teacher']['top1']:.1f}%)" if "accuracy" in card else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vidconv-finetune", _main, argv)
