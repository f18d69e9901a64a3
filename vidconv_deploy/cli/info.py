"""``vidconv-info``: parameters and multiply-accumulates of a VidConv configuration, per part and in total."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from vidconv_deploy.cli.common import run_main
from vidconv_deploy.errors import UserError
from vidconv_deploy.models.complexity import PartCost, measure
from vidconv_deploy.models.config import ARCHS, ViCConfig, make_config, parse_grid

#: Why our ViC-B parameter count differs from the paper's, printed with every ViC-B report.
VIC_B_NOTE = (
    "paper Table 2 lists ViC-B as 107.4M parameters, but Table 1's configuration (dims 128-1024, "
    "depths 3-3-27-3, C3 2304) gives 109.9M with the paper's 139.2G MACs; the 2.5M gap is not "
    "explained by any neck width or class count the paper gives, so this is what the configuration builds"
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vidconv-info",
        description="Parameters and multiply-accumulates (the paper's 'FLOPs') of a VidConv model, per stage.",
        epilog="exit codes:\n  0    the report is printed\n  2    bad input: one line on stderr",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("arch", help=f"architecture: {', '.join(ARCHS)}")
    parser.add_argument("--frames", type=int, default=9, help="frames per clip (a square number unless --grid)")
    parser.add_argument("--grid", type=str, default=None, help="collage grid ROWSxCOLS, e.g. 2x3 for 6 frames")
    parser.add_argument("--classes", type=int, default=400, help="number of classes (400 Kinetics, 174 SSv2)")
    parser.add_argument("--image-size", type=int, default=224, help="frame size in pixels, a multiple of 32")
    parser.add_argument("--no-neck", action="store_true", help="drop the dilated neck conv (paper ablations)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def check_shape(frames: int, grid: tuple[int, int] | None, classes: int) -> None:
    """Counts the config would refuse with its own (Python-argument) wording, or with a traceback (negative frames)."""
    if frames < 1:
        raise UserError(f"--frames {frames} is not a frame count: give --frames 1 or more, e.g. --frames 9")
    if grid is not None and grid[0] * grid[1] != frames:
        raise UserError(f"--grid {grid[0]}x{grid[1]} holds {grid[0] * grid[1]} frames, not --frames {frames}: "
                        f"give --frames {grid[0] * grid[1]}")
    if classes < 1:
        raise UserError(f"--classes {classes} is not a class count: give --classes 1 or more, e.g. --classes 400")


def report(cfg: ViCConfig, parts: list[PartCost]) -> dict[str, object]:
    """The info report as a JSON-ready dict: totals, per-part figures, the derived dilations and the config."""
    result: dict[str, object] = {
        "arch": cfg.arch,
        "params": sum(p.params for p in parts),
        "macs": sum(p.macs for p in parts),
        "parts": [{"name": p.name, "params": p.params, "macs": p.macs} for p in parts],
        "temporal_dilation": {"stage3": list(cfg.temporal_dilation(2)), "stage4": list(cfg.temporal_dilation(3))},
        "neck_dilation": list(cfg.stage4_frame_size) if cfg.neck else None,
        "config": cfg.to_dict(),
    }
    if cfg.arch == "vic-b":
        result["note"] = VIC_B_NOTE
    return result


def print_table(cfg: ViCConfig, parts: list[PartCost], console: Console) -> None:
    (rows, cols), (height, width) = cfg.grid, cfg.image_size
    title = (
        f"{cfg.arch}: {cfg.frames} frames in a {rows}x{cols} collage, {height}x{width}, "
        f"{cfg.num_classes} classes" + ("" if cfg.neck else ", no neck")
    )
    table = Table(title=title)
    table.add_column("part")
    table.add_column("params (M)", justify="right")
    table.add_column("MACs (G) per clip", justify="right")
    for part in parts:
        if part.params or part.macs:
            table.add_row(part.name, f"{part.params / 1e6:.3f}", f"{part.macs / 1e9:.3f}")
    params, macs = sum(p.params for p in parts), sum(p.macs for p in parts)
    table.add_row("total", f"{params / 1e6:.3f}", f"{macs / 1e9:.3f}", style="bold")
    console.print(table)
    line = f"temporal dilation: stage 3 {cfg.temporal_dilation(2)}, stage 4 {cfg.temporal_dilation(3)}"
    if cfg.neck:
        line += f"; neck kernel {cfg.grid}, dilation {cfg.stage4_frame_size}"
    console.print(line)
    if cfg.arch == "vic-b":
        console.print(f"note: {VIC_B_NOTE}")


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    grid = parse_grid(args.grid)
    check_shape(args.frames, grid, args.classes)
    cfg = make_config(
        args.arch, num_classes=args.classes, frames=args.frames, image_size=args.image_size,
        neck=not args.no_neck, grid=grid,
    )
    parts = measure(cfg)
    if args.json:
        print(json.dumps(report(cfg, parts), indent=2))
    else:
        print_table(cfg, parts, Console())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vidconv-info", _main, argv)
