"""vidconv-check MODEL.onnx --target T: does this ONNX model map onto the target hardware?

T is any vidconv-export target (vidconv-export --list-targets: its rule set is checked) or a rule
set of its own (finn: FINN's op rules without a board). A dpu-* target is checked for the board's
default DPU, or the one --dpu-arch, --fingerprint or --arch-json names (e.g. --dpu-arch B3136). Exit codes: 0 compliant; 1 rule
violations; 2 an unreadable or invalid model, an unknown target, or a file that cannot be written.
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from vidconv_deploy.atomic import nearest_existing, write_text
from vidconv_deploy.check import check_model, list_targets
from vidconv_deploy.check.dpu_config import DpuChoice
from vidconv_deploy.check.ruleset import RuleSet, load_ruleset
from vidconv_deploy.check.report import junit_xml, print_table
from vidconv_deploy.cli.common import run_main
from vidconv_deploy.dpu.perf_model import model_performance, print_performance
from vidconv_deploy.errors import UserError
from vidconv_deploy.targets.families import add_dpu_arguments, dpu_choice
from vidconv_deploy.targets.registry import get_target, target_names

PROG = "vidconv-check"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="the .onnx model")
    p.add_argument("--target", required=True, help=f"one of: {', '.join(target_choices())}")
    p.add_argument("--json", action="store_true", help="print the result as JSON (for CI)")
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report to FILE")
    p.add_argument("--perf", action="store_true",
                   help="also estimate latency, fps and the slowest layers on the DPU (dpu-* targets; an estimate)")
    add_dpu_arguments(p.add_argument_group("the DPU (dpu-* targets; default: the board's)"))
    return p


def target_choices() -> list[str]:
    """The export targets, then the rule sets that are not also a target's name."""
    targets = target_names()
    return [*targets, *(r for r in list_targets() if r not in targets)]


def rule_set_of(name: str, dpu: DpuChoice | None = None) -> RuleSet:
    """The rule set a ``--target`` name means (an export target's, or a rule set named directly), for the DPU
    ``dpu`` names (None: the board's)."""
    if name in target_names():
        return load_ruleset(get_target(name).ruleset.name, dpu)
    if name in list_targets():
        return load_ruleset(name, dpu)
    close = difflib.get_close_matches(name, target_choices(), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}?" if close else f"choose one of {', '.join(target_choices())}"
    raise UserError(f"unknown target {name!r}: {hint}")


def _body(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.junit is not None:  # a report that cannot be written fails before the check, not after it
        where = nearest_existing(args.junit.parent)
        if args.junit.is_dir():
            raise UserError(f"--junit {args.junit} is a folder: give a file path for the JUnit XML report")
        if not where.is_dir():
            raise UserError(f"--junit {args.junit}: cannot use {where}: it is a file, not a folder: give another path")
    rules = rule_set_of(args.target, dpu_choice(args))
    if args.perf and rules.family != "dpu":
        raise UserError(f"--perf estimates DPU performance and {args.target} is not a DPU target: choose a dpu-* target")
    result = check_model(args.model, rules)
    performance = model_performance(args.model, rules) if args.perf else None
    if args.junit:
        write_text(args.junit, junit_xml(result))
    if args.json:
        print(json.dumps({**result.to_dict(), **({"performance": performance} if performance else {})}, indent=2))
    else:
        print_table(result, args.model.name, Console())
        if performance:
            print_performance(performance, Console())
    return 0 if result.compliant else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
