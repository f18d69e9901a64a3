"""``vidconv-finetune``: distil a hardware variant (``vic-t-dpu``) from a VidConv checkpoint, or QAT its FINN or DPU variant.

The student starts from the teacher's weights (LayerNorm -> BatchNorm, GELU -> ReLU) and learns to
match the teacher's logits (KL at temperature 2) and pooled features (MSE), plus cross-entropy
where the clips have labels. ``--qat`` makes the student the Brevitas FINN variant at ``--bits``
instead (from the teacher, or from ``--init``, e.g. the distilled ``vic-nano-dpu``), calibrates its
quantizers on the clips and trains it through them (straight-through estimators) on the logits'
KL plus cross-entropy; the result is a FINN checkpoint for ``vidconv-export --target finn-<board>``.
``--qat --qat-target dpu-<board>`` instead trains the DPU variant (``--init``, e.g. vic-nano-dpu) through
the DPU export's own INT8 graphs: power-of-two fix positions calibrated on the clips as the export
calibrates them, then frozen, weights and activations rounded as vai_q_pytorch rounds them; its
checkpoint carries the positions, and ``vidconv-export --target dpu-<board> --checkpoint`` of it
quantizes at them, so the exported integer graphs compute what the trained model computed, bit for bit.
Runs on the CPU for small models and shows progress. With a dataset folder that has a test
split, the student's accuracy and its top-1 agreement with the teacher go into its model card.
The result goes under ``runs/`` unless ``--out`` names a path (the shipped ``models/`` only then).

The state of the run is saved to ``OUT.state.pt`` after every epoch: a killed run continues with
``--resume``, which refuses a state whose settings (teacher, student, bits, init, clips,
hyper-parameters) differ from the flags given. Without ``--resume`` the state of an unfinished
run is an error (continue it or delete it); a finished run's state is replaced, with a note.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from pathlib import Path

import torch
import yaml
from rich.console import Console

from vidconv_deploy.atomic import write_text
from vidconv_deploy.checkpoints import load_model, save_checkpoint
from vidconv_deploy.cli.common import run_main
from vidconv_deploy.cli.training_flags import (EXIT_CODES, RUNS, add_runtime_flags, check_out, check_training_flags,
                                               merge_skips, run_training)
from vidconv_deploy.data.dataset import EvalClips, TrainClips, protocol_for
from vidconv_deploy.data.loader import clip_batches
from vidconv_deploy.data.sources import NO_LABEL, VideoSource, list_digest, open_split, scan_folder
from vidconv_deploy.errors import UserError
from vidconv_deploy.evaluate.classifiers import TorchClassifier
from vidconv_deploy.evaluate.sharded import score_split
from vidconv_deploy.models.config import split_arch
from vidconv_deploy.models.variants import init_variant
from vidconv_deploy.models.vidconv import VidConv
from vidconv_deploy.train.loop import Settings, TrainConfig, fit, open_state
from vidconv_deploy.train.losses import DistillLoss
from vidconv_deploy.train.runtime import Runtime, on_device

if TYPE_CHECKING:
    from vidconv_deploy.targets.registry import Target

#: --bits of the FINN variant when not given.
DEFAULT_BITS = "w4a4"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vidconv-finetune", description=__doc__.replace("``", ""), epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="faithful checkpoint (.safetensors or authors' .pth)")
    parser.add_argument("--student", help="hardware variant to distil, e.g. vic-nano-dpu or vic-t-dpu (not with --qat)")
    parser.add_argument("--qat", action="store_true", help="quantization-aware training of the FINN variant instead")
    parser.add_argument("--qat-target", default="finn", metavar="TARGET",
                        help="--qat: finn (the Brevitas FINN variant, default) or a DPU target, e.g. dpu-kv260 (INT8 "
                             "at the export's power-of-two positions; the board's rules decide the graphs)")
    parser.add_argument("--bits", help="--qat with FINN: weight/activation bits wXaY (default w4a4)")
    parser.add_argument("--init", type=Path, help="--qat: float checkpoint the student starts from (default: the "
                                                  "teacher; for a DPU target, a BatchNorm variant such as vic-nano-dpu)")
    parser.add_argument("--clips", type=Path, required=True, help="dataset folder (train list) or a folder of videos")
    parser.add_argument("--epochs", type=int, default=4, help="epochs (default 4)")
    parser.add_argument("--batch", type=int, default=16, help="clips per step (default 16)")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of clip sampling and order (default 0)")
    parser.add_argument("--out", type=Path, help=f"student weights file, .safetensors (default: {RUNS}/<student>.safetensors, "
                                                 f"{RUNS}/<arch>-finn-<bits>.safetensors with --qat, "
                                                 f"{RUNS}/<arch>-qat-<target>.safetensors with a DPU --qat-target)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT.state.pt; it must have been started with the same --teacher, "
                             "--student, --qat, --qat-target, --bits, --init, --clips, --epochs, --batch, --lr, --seed, --amp and "
                             "--sync-bn (a difference is an error)")
    add_runtime_flags(parser)
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse flags that cannot make a student, before the teacher is loaded or any clip decoded (--out: once its default is known)."""
    check_training_flags(args.epochs, args.batch, args.lr, args.seed)
    if args.qat_target != "finn" and not args.qat:
        raise UserError(f"--qat-target {args.qat_target} only applies to --qat: add --qat, or drop --qat-target")
    if args.bits and not (args.qat and args.qat_target == "finn"):
        raise UserError(f"--bits {args.bits} only applies to --qat of the FINN variant (DPU INT8 is 8-bit): drop --bits"
                        + ("" if args.qat else ", or add --qat"))
    if args.qat and args.qat_target != "finn":
        dpu_qat_target(args.qat_target)
    elif args.qat:
        from vidconv_deploy.finn.model import Bits

        args.bits = args.bits or DEFAULT_BITS
        Bits.parse(args.bits)
        if args.student:
            raise UserError(f"--student {args.student} does not apply to --qat (its student is the FINN variant): "
                            f"drop --student, or drop --qat to distil {args.student}")
    else:
        if not args.student:
            raise UserError("no student: give --student, e.g. --student vic-nano-dpu, or --qat for the FINN variant")
        if args.init:
            raise UserError(f"--init {args.init} only applies to --qat: drop --init, or add --qat")


def dpu_qat_target(name: str) -> Target:
    """The DPU target a ``--qat-target`` names (its rules decide the graphs QAT trains); UserError otherwise."""
    from vidconv_deploy.targets.registry import get_target, target_names

    dpu = [t for t in target_names() if t.startswith("dpu-")]
    if name not in dpu:
        raise UserError(f"--qat-target {name} is not finn or a DPU target: use finn or one of {', '.join(dpu)}")
    return get_target(name)


def dpu_student_for_qat(origin: VidConv, target_name: str, clips: Path) -> tuple[torch.nn.Module, Callable[[Any, Path], None]]:
    """The DPU QAT model of ``origin`` (identity form, positions calibrated on the clips as the DPU export
    calibrates) and how to save it."""
    from vidconv_deploy.data.calibration import calibration_clips
    from vidconv_deploy.quant.qat_dpu import DpuQatModel, calibrated_positions, identity_form, save_qat_checkpoint

    target = dpu_qat_target(target_name)
    passes = target.passes()
    calibration, _, _ = calibration_clips(clips, origin.cfg.frames, origin.cfg.image_size,
                                          int(target.calibration.get("clips", 16)))
    model = identity_form(origin)
    student = DpuQatModel(model, passes, calibrated_positions(model, passes, calibration))
    return student, lambda qat, out: save_qat_checkpoint(qat, out, target_name)


def clip_source(folder: Path) -> VideoSource:
    """The videos to train on: a dataset folder's train split, or every video in a plain folder."""
    return open_split(folder, "train") if (folder / "train.txt").is_file() else scan_folder(folder)


def training_clips(source: VideoSource, frames: int, image_size: tuple[int, int], seed: int) -> TrainClips:
    """Random training clips of ``source``, sampled as its dataset declares (Kinetics for a plain folder)."""
    return TrainClips(source.items, protocol_for(source, frames, source.protocol or "kinetics"), image_size, seed=seed)


def settings_of(args: argparse.Namespace, source: VideoSource) -> Settings:
    """What defines a finetune run, by flag: a resumed run must have all of it unchanged."""
    return {"--teacher": str(args.teacher.resolve()), "--student": args.student or "", "--qat": args.qat,
            "--bits": args.bits if args.qat else "",
            **({"--qat-target": args.qat_target} if args.qat_target != "finn" else {}), "--init": str(args.init.resolve()) if args.init else "",
            "--clips": str(args.clips.resolve()), "--clips videos": list_digest(source, args.clips),
            "--epochs": args.epochs, "--batch": args.batch, "--lr": args.lr, "--seed": args.seed, "--amp": args.amp,
            "--sync-bn": args.sync_bn}


def dpu_student(args: argparse.Namespace, teacher: VidConv) -> VidConv:
    """The hardware variant ``--student`` initialised from the teacher's weights."""
    base, settings = split_arch(args.student or "")
    if not settings or base != teacher.cfg.arch:
        raise UserError(f"--student {args.student} is not a hardware variant of the teacher ({teacher.cfg.arch}): "
                        f"use --student {teacher.cfg.arch}-dpu, or --qat for the FINN variant")
    student, _ = init_variant(teacher, args.student.removeprefix(f"{base}-"))
    return student


def finn_student(source: VidConv, bits: str, clips: Path) -> torch.nn.Module:
    """The FINN variant of ``source`` at ``bits``, its quantizers calibrated on the clips."""
    from vidconv_deploy.data.calibration import calibration_clips
    from vidconv_deploy.finn.model import calibrate, from_float

    cfg = source.cfg
    calibration, _, _ = calibration_clips(clips, cfg.frames, cfg.image_size)
    student = from_float(source, bits)
    calibrate(student, [torch.from_numpy(c)[None] for c in calibration], reestimate_bn=cfg.norm == "layer")
    return student


def usable_test_videos(folder: Path, frames: int, image_size: tuple[int, int]) -> EvalClips | None:
    """The usable test videos of a dataset folder (checked before training: none is an error), or None without a test list."""
    if not (folder / "test.txt").is_file():
        return None
    source = open_split(folder, "test")
    videos = EvalClips(source.items, protocol_for(source, frames, None), image_size)
    if not len(videos):
        raise UserError(f"no usable videos in the test split of {folder} ({videos.skips.counts()}): "
                        f"give --clips a dataset folder whose test videos are readable, or one without a test list")
    return videos


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    check_args(args)
    return run_training(args, _finetune)


def _finetune(args: argparse.Namespace, runtime: Runtime) -> int:
    """Distil (or QAT), then rank 0 scores the test split and writes the student and its card, in each process."""
    world = runtime.world
    teacher, _ = load_model(args.teacher)
    teacher.eval().requires_grad_(False)
    dpu_qat = args.qat and args.qat_target != "finn"
    if dpu_qat:
        origin = load_model(args.init)[0].eval() if args.init else teacher
        name = f"{origin.cfg.arch}-qat-{args.qat_target}"
        recipe = (f"QAT at {args.qat_target}'s INT8 (power-of-two positions calibrated, then frozen): KL(T=2) on logits "
                  f"+ CE, straight-through estimators")
    elif args.qat:
        from vidconv_deploy.finn.model import Bits

        bits = Bits.parse(args.bits)
        origin = load_model(args.init)[0].eval() if args.init else teacher
        name = f"{split_arch(origin.cfg.arch)[0]}-finn-{bits}"
        recipe = f"QAT of the FINN variant ({bits}): KL(T=2) on logits + CE, straight-through estimators"
    else:
        origin = dpu_student(args, teacher)
        name = origin.cfg.arch
        recipe = "KL(T=2) on logits + MSE on pooled features + 0.5 CE"
    out = args.out or RUNS / f"{name}.safetensors"
    check_out(out)
    cfg = origin.cfg
    source = clip_source(args.clips)
    settings = settings_of(args, source)
    state_path = out.with_suffix(".state.pt")
    resume = open_state(state_path, args.resume, settings)
    dataset = training_clips(source, cfg.frames, cfg.image_size, args.seed)
    if not len(dataset):
        raise UserError(f"no usable videos in {args.clips} ({dataset.skips.counts()}): give --clips a folder of videos")
    tests = usable_test_videos(args.clips, cfg.frames, cfg.image_size)
    if dpu_qat:
        student, save = dpu_student_for_qat(origin, args.qat_target, args.clips)
    elif args.qat:
        from vidconv_deploy.finn.checkpoint import save_finn_checkpoint

        student, save = finn_student(origin, args.bits, args.clips), save_finn_checkpoint
    else:
        student, save = origin, save_checkpoint
    config = TrainConfig(epochs=args.epochs, steps_per_epoch=math.ceil(len(dataset) / args.batch), lr=args.lr,
                         warmup_epochs=0.25, weight_decay=0.0 if args.qat else 0.05)
    # QAT: logits only (the FINN student has no float features to match), full-weight cross-entropy.
    criterion = DistillLoss(label_weight=1.0) if args.qat else DistillLoss()

    loader = clip_batches(dataset, runtime.batch_per_process(args.batch), world.rank, world.size, args.workers,
                          pin_memory=runtime.device.type == "cuda")
    teacher.to(runtime.device, memory_format=torch.channels_last)

    def loss(forward: Callable[[torch.Tensor], Any], clips: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = labels if bool((labels != NO_LABEL).all()) else None
        if args.qat:
            with torch.no_grad():
                target = teacher(clips)
            logits = forward(clips)
            return criterion(logits if dpu_qat else logits.value, target, labels=known)
        with torch.no_grad():
            t_logits, t_features = teacher.forward_with_features(clips)
        s_logits, s_features = forward(clips)
        return criterion(s_logits, t_logits, s_features, t_features, known)

    start = time.perf_counter()
    state = fit(student, config, loader, loss, state_path, settings=settings, resume=resume, runtime=runtime,
                method="forward" if args.qat else "forward_with_features",
                description=f"{'QAT of' if args.qat else 'distilling'} {name} from {teacher.cfg.arch}")
    minutes = (time.perf_counter() - start) / 60
    merge_skips(dataset.skips)
    if not world.main:
        return 0
    made_with = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
                         if v is not None and v is not False and k != "resume"
                         and not (k == "qat_target" and v == "finn"))
    card = {"name": name, "weights": out.name, "config": cfg.to_dict(),
            "distilled_from": {"teacher": str(args.teacher), "arch": teacher.cfg.arch,
                               "student_init": str(args.init or args.teacher) if args.qat else str(args.teacher)},
            "data": {"folder": str(args.clips), "skipped_videos": dataset.skips.to_dict()},
            "training": {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": args.seed,
                         "amp": args.amp, "loss": recipe, "minutes": round(minutes, 1), "machine": runtime.describe(),
                         "history": state.history},
            "made_with": f"vidconv-finetune {made_with}"}
    if dpu_qat:
        card["qat"] = {"target": args.qat_target, "positions": "calibrated on the clips as the DPU export calibrates, "
                       "then frozen; stored in the checkpoint's header, which vidconv-export --checkpoint pins"}
    elif args.qat:
        card["bits"] = str(student.bits)
    if tests is not None:  # scored before anything is written: a failure leaves no weights without a card
        scores, _ = score_split([item for item, _ in tests.videos],
                                lambda: {"student": TorchClassifier(on_device(student, runtime.device)),
                                         "teacher": TorchClassifier(on_device(teacher, runtime.device))},
                                tests.protocol, tests.image_size)
        if not len(scores["student"].labels):
            raise UserError(f"no video of the test split of {args.clips} could be decoded: "
                            f"give --clips a dataset folder whose test videos are readable")
        card["accuracy"] = {"test": {name: {"top1": round(s.topk(1), 2), "top5": round(s.topk(5), 2), "videos": len(s.labels)}
                                     for name, s in scores.items()}}
        card["accuracy"]["test"]["top1_agreement_with_teacher"] = round(scores["student"].agreement(scores["teacher"]), 2)
    save(student.cpu(), out)
    write_text(out.with_suffix(".yaml"), yaml.safe_dump(card, sort_keys=False))
    Console().print(f"{name} {'QAT' if args.qat else 'distilled'} from {teacher.cfg.arch} in {minutes:.1f} min -> {out}"
                    + (f"; test top-1 {card['accuracy']['test']['student']['top1']:.1f}% (teacher "
                       f"{card['accuracy']['test']['teacher']['top1']:.1f}%)" if "accuracy" in card else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vidconv-finetune", _main, argv)
