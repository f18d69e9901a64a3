"""What vidconv-train and vidconv-finetune share on the command line: where runs go, the exit codes they
document, and the checks that refuse flags which would train nothing or write to the wrong place."""

from __future__ import annotations

import math
import os
from pathlib import Path

from vidconv_deploy.atomic import cannot_create_in, nearest_existing
from vidconv_deploy.errors import UserError

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
