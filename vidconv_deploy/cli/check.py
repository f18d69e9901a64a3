"""``vidconv-check MODEL.onnx --target T``: does this ONNX model map onto the target hardware?

Exit codes: 0 compliant, 1 rule violations, 2 unreadable input or unknown target.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from vidconv_deploy.atomic import write_text
from vidconv_deploy.check import check_model, list_targets
from vidconv_deploy.check.report import junit_xml, print_table
from vidconv_deploy.cli.common import run_main

PROG = "vidconv-check"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Check an ONNX model against a hardware target's op rules and predict its DPU/CPU partition.")
    p.add_argument("model", type=Path, help="the .onnx model")
    p.add_argument("--target", required=True, help=f"one of: {', '.join(list_targets())}")
    p.add_argument("--json", action="store_true", help="print the result as JSON (for CI)")
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report to FILE")
    return p


def _body(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    result = check_model(args.model, args.target)
    if args.junit:
        write_text(args.junit, junit_xml(result))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_table(result, args.model.name, Console())
    return 0 if result.compliant else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
