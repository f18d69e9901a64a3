"""``vidconv-make-data``: write the synthetic motion dataset (real .mp4 files) for the vic-nano demo.

Classes in time-reversed pairs: only the order of the frames tells a class from its partner.
--difficulty easy (the default): ten classes (move right/left, down/up, rotate clockwise/counter-
clockwise, grow/shrink, appear/disappear), one shape, 48-64 frames. --difficulty hard: sixteen
(moves slow and fast, in four directions), 56-80 frames with the action at a random time,
distractor shapes, camera pan and shake, occlusion, blur and noise.
The folder gets ``train.txt``, ``val.txt``, ``test.txt`` (MMAction2 lists), ``classes.txt`` and
``dataset.json``; sample it with the SSv2 protocol, which ``dataset.json`` names.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from vidconv_deploy.cli.common import run_main
from vidconv_deploy.data.synthetic import DIFFICULTIES, SPLITS, SyntheticSpec, check_out_dir, generate
from vidconv_deploy.errors import UserError

DEFAULTS = SyntheticSpec()
EXIT_CODES = """exit codes:
  0    the dataset is written
  2    bad input (refused before anything is written) or a tool error: one line on stderr
  130  interrupted: run the same command again (it recognises the unfinished dataset)"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vidconv-make-data", description=__doc__.replace("``", ""), epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--difficulty", choices=tuple(DIFFICULTIES), default=DEFAULTS.difficulty,
                        help=f"easy (generator version 2) or hard (version 3) (default {DEFAULTS.difficulty})")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"random seed (default {DEFAULTS.seed})")
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, default=DEFAULTS.count(split), metavar="N",
                            help=f"{split} videos (default {DEFAULTS.count(split)})")
    parser.add_argument("--size", type=int, default=DEFAULTS.size, help=f"frame size in pixels (default {DEFAULTS.size})")
    parser.add_argument("--fps", type=int, default=DEFAULTS.fps, help=f"frame rate (default {DEFAULTS.fps})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes rendering and encoding (default: one per CPU core; the output does not depend on it)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder that holds no previous dataset")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse counts that make no dataset, in flag words, before any folder is touched."""
    for flag in ("seed", *SPLITS):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} {getattr(args, flag)} is negative: give --{flag} 0 or more")
    if not sum(getattr(args, split) for split in SPLITS):
        raise UserError("--train 0 --val 0 --test 0 would write an empty dataset: give at least one of them 1 or more")
    if args.size < 32 or args.size % 2:
        raise UserError(f"--size {args.size} is not supported: use an even size of at least 32 (yuv420p halves it)")
    if args.fps < 1:
        raise UserError(f"--fps {args.fps} is not a frame rate: give --fps 1 or more, e.g. --fps 12")
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs} runs nothing: give --jobs 1 or more")


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    check_args(args)
    spec = SyntheticSpec(seed=args.seed, train=args.train, val=args.val, test=args.test, size=args.size, fps=args.fps,
                         difficulty=args.difficulty)
    check_out_dir(args.out, args.force)  # refuse a wrong folder before the progress bar starts
    console = Console(stderr=True)
    total = sum(spec.count(s) for s in SPLITS)
    columns = (TextColumn("writing videos"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("videos", total=total)
        try:
            result = generate(args.out, spec, force=args.force, jobs=args.jobs,
                              on_video=lambda: progress.advance(task))
        except OSError as err:  # e.g. the disk filled up: videos are written atomically, a rerun finds no half-written one
            raise UserError(f"cannot write the dataset into {args.out} ({err.strerror or err}): "
                            f"free some space or choose another --out, then run again") from None
    table = Table(title=f"synthetic motion dataset ({spec.difficulty}) in {result.out}")
    for column in ("split", "videos", "list"):
        table.add_column(column)
    for split in SPLITS:
        table.add_row(split, str(result.counts[split]), str(result.out / f"{split}.txt"))
    console.print(table)
    console.print(f"{total} videos ({spec.size}x{spec.size}, {spec.min_frames}-{spec.max_frames} frames at "
                  f"{spec.fps} fps, {result.codec}) in {result.seconds:.1f} s; sample with the SSv2 protocol")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vidconv-make-data", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
