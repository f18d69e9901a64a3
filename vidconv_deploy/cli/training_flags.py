"""What vidconv-train and vidconv-finetune share on the command line: where runs go, the exit codes they
document, where they compute (device, mixed precision, loader workers, torchrun's processes), and the
checks that refuse flags which would train nothing or write to the wrong place."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

from vidconv_deploy.atomic import cannot_create_in, nearest_existing
from vidconv_deploy.data.dataset import SkipReport
from vidconv_deploy.errors import UserError
from vidconv_deploy.train.runtime import Runtime, all_gather, process_group, start_runtime

EXIT_CODES = """exit codes:
  0    trained: the weights and the model card are written
  2    bad input (refused before anything is written) or a tool error: one line on stderr
  130  interrupted: the finished epochs stay in OUT.state.pt, rerun with --resume"""
#: Where runs go unless --out says otherwise: never the shipped models/ folder.
RUNS = Path("runs")


def check_training_flags(epochs: int, batch: int, lr: float, seed: int) -> None:
    """Refuse flags that would train nothing, crash mid-run or diverge, before any work (one line, the fix)."""
    if epochs < 1:
        raise UserError(f"--epochs {epochs} would write an untrained model: give --epochs 1 or more")
    if batch < 1:
        raise UserError(f"--batch {batch} holds no clips: give --batch 1 or more, e.g. --batch 16")
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr {lr} is not a learning rate: give a positive number, e.g. --lr 0.002")
    if seed < 0:
        raise UserError(f"--seed {seed} is negative: give --seed 0 or more")


def check_out(out: Path) -> None:
    """Refuse an ``--out`` whose weights, card or state would land on a wrong or unwritable path, before any work.

    The card and the state replace the suffix, so a path without ``.safetensors`` could make the
    card overwrite the weights (``--out model.yaml``).
    """
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a file path, e.g. --out {out / 'model.safetensors'}")
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out} does not end in .safetensors: write e.g. --out {out.with_suffix('.safetensors')}")
    folder = nearest_existing(out.parent)
    if not folder.is_dir():
        raise UserError(f"--out {out} is under {folder}, which is a file: choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK) or cannot_create_in(folder) is not None:
        raise UserError(f"cannot write into {folder}: choose a writable --out")


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--amp``, ``--workers``, ``--sync-bn``: where and how a run computes, in one or several processes."""
    group = parser.add_argument_group("where it computes (several GPUs or nodes: start it with torchrun, see the README's "
                                      "'Training at scale'; --batch is then split over the processes)")
    group.add_argument("--device", default="auto", help="auto (a CUDA GPU if PyTorch sees one, else the CPU), cpu or cuda "
                                                        "(default auto)")
    group.add_argument("--amp", action="store_true",
                       help="mixed precision: the forward pass in bfloat16 (float16 with loss scaling on GPUs older than "
                            "Ampere); it changes the numbers, so a resumed run must repeat it")
    group.add_argument("--workers", type=int, default=0,
                       help="processes decoding videos beside each training process (default 0: the training process "
                            "decodes); a GPU needs several, e.g. --workers 8")
    group.add_argument("--sync-bn", action="store_true",
                       help="BatchNorm statistics over the whole batch of every GPU of the run instead of each GPU's "
                            "share (CUDA; the hardware variants have BatchNorm)")


def run_training(args: argparse.Namespace, body: Callable[[argparse.Namespace, Runtime], int]) -> int:
    """``body(args, runtime)`` in the runtime the flags ask for, in each process torchrun started (one without it).

    The runtime flags and the split of ``--batch`` over the processes are refused before any work;
    the process group is joined for the body and left after it.
    """
    if args.workers < 0:
        raise UserError(f"--workers {args.workers} is negative: give 0 (decode in the training process) or more")
    runtime = start_runtime(args.device, args.amp, args.sync_bn)
    runtime.batch_per_process(args.batch)
    with process_group(runtime):
        return body(args, runtime)


def merge_skips(skips: SkipReport) -> None:
    """Add the videos the other processes of the run found bad to ``skips``, for rank 0's model card.

    A collective: every process of the run calls it (nothing to add in a run of one).
    """
    for files in all_gather(skips.files):
        for reason, names in files.items():
            for name in names:
                if name not in skips:
                    skips.add(name, reason, "found by another process of the run")
