"""``vidconv-eval``: top-1/top-5 of every form of a bundle's model on a video split.

For a DPU bundle that is the float graph, the exact rewrite, the fake-quant INT8 streaming graphs
in ONNX Runtime and the integer reference with DPU rounding, each with its top-1 agreement with
the float graph. ``--ray ADDRESS`` (or ``local``) shards the videos over a Ray cluster and gives
the same numbers as one process. ``--order`` runs the frame-order test (paper Table 10).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vidconv_deploy.atomic import write_text
from vidconv_deploy.cli.common import run_main
from vidconv_deploy.errors import UserError
from vidconv_deploy.evaluate.bundle_scores import check_limit, evaluate_bundle
from vidconv_deploy.bundle import read_manifest
from vidconv_deploy.evaluate.run import ORDERS
from vidconv_deploy.report import Report

EXIT_CODES = """exit codes:
  0    scored: eval.json and the report are written in the bundle
  2    bad input (refused before anything is written) or a tool error: one line on stderr
  130  interrupted: nothing is written"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vidconv-eval", description=__doc__.replace("``", ""), epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder written by vidconv-export")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (annotation lists, vidconv-make-data)")
    parser.add_argument("--split", default="test", help="split to score (default test)")
    parser.add_argument("--target", help="expected target of the bundle (an error if the bundle was made for another)")
    parser.add_argument("--order", choices=[*ORDERS, "all"], default="normal", help="frame order (paper Table 10)")
    parser.add_argument("--ray", metavar="ADDRESS", help="shard over a Ray cluster at ADDRESS, or 'local'")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slower) integer reference")
    parser.add_argument("--teacher", type=Path, help="also score the faithful checkpoint a hardware variant was distilled from")
    parser.add_argument("--limit", type=int, help="score only the first N videos of the split")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    return parser.parse_args(argv)


def write_report(result: dict[str, Any], bundle: Path) -> None:
    """``eval.md``/``eval.html`` in the bundle: the tables, and the bundle's per-layer SQNR plots if it has them."""
    report = Report(f"Accuracy of {bundle.name} on {result['data']} ({result['split']})")
    for order, rows in result["orders"].items():
        report.section(f"{order} frame order").accuracy_table(rows)
    plots = sorted((bundle / "report_files").glob("sqnr_*.png"))
    if plots:
        report.section("Per-layer error, INT8 vs float (from the export)")
        for plot in plots:
            report.image(f"report_files/{plot.name}", plot.stem.replace("_", " "))
    skipped = result["skipped"]
    report.section("Skipped videos").text(f"{skipped['skipped']} skipped: {skipped['counts'] or 'none'}.")
    report.write(bundle, "eval")


def print_table(result: dict[str, Any]) -> None:
    for order, rows in result["orders"].items():
        table = Table(title=f"{result['bundle']} on {result['data']} {result['split']} ({order} frame order)")
        for column in ("model", "videos", "top-1 %", "top-5 %", "top-1 agreement with float %"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for row in rows:
            table.add_row(row["model"], str(row["videos"]), f"{row['top1']:.2f}", f"{row['top5']:.2f}",
                          f"{row['agreement_with_float']:.2f}")
        Console().print(table)
    if result["skipped"]["skipped"]:
        Console(stderr=True).print(f"skipped videos: {result['skipped']['counts']}")


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    check_limit(args.limit)
    if args.workers < 1:
        raise UserError(f"--workers {args.workers} runs nothing: give --workers 1 or more")
    manifest = read_manifest(args.bundle)
    if args.target and args.target != manifest["target"]:
        raise UserError(f"{args.bundle} was exported for {manifest['target']!r}, not {args.target!r}: "
                        f"export it with vidconv-export --target {args.target}")
    orders = ORDERS if args.order == "all" else (args.order,)
    result = evaluate_bundle(args.bundle, args.data, args.split, orders, args.ray, args.workers, not args.no_reference,
                             args.limit, args.teacher)
    write_text(args.bundle / "eval.json", json.dumps(result, indent=2) + "\n")
    write_report(result, args.bundle)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vidconv-eval", _main, argv)
