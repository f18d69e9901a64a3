"""vidconv-compare BUNDLE DUMP_DIR: where do the board's tensors part ways with the host's?

BUNDLE is a DPU bundle (vidconv-export --target dpu-<board>); DUMP_DIR holds tensors dumped on the
board (XLNX_ENABLE_DUMP=1 or xdputil run, files <engine>.<tensor>.bin) or by vai_q_pytorch
(deploy_check=True: deploy_check_data_int/<Graph>/<node>_fix.bin). Keep each early-graph run of a
clip in a frame_<t> folder; an early dump without one is frame 0. The tensors are walked in the order
the board computes them; the first one that differs by more than the tolerance is named, with an LSB
histogram and its likely cause (layout swapped, fix position differs, saturation, rounding mode).
Exit codes: 0 every dumped tensor within tolerance; 1 a divergence; 2 bad input.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from vidconv_deploy import strict_json
from vidconv_deploy.cli.common import run_main
from vidconv_deploy.dpu.dump_compare import compare_dump

PROG = "vidconv-compare"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="the DPU bundle folder (it has manifest.json and golden/)")
    p.add_argument("dump_dir", type=Path, help="the folder the board's (or deploy_check's) dumped .bin files were copied to")
    p.add_argument("--tolerance", type=int, metavar="LSB", help="allowed |difference| in LSB (default: the golden dir's, 1)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line (for CI)")
    return p


def _body(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    report = compare_dump(args.bundle, args.dump_dir, args.tolerance)
    if args.json:
        print(strict_json.dumps(report.to_dict(), indent=None))
    else:
        console = Console()
        console.print(report.table())
        for name in report.unmatched:
            console.print(f"[dim]not compared: {name} (no tensor of the bundle has this name)[/dim]")
        console.print(report.summary(), style="green" if report.ok else "red")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
