"""``vidconv-export``: build, rewrite, export, check, quantize and compile a VidConv for a target."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vidconv_deploy.cli.common import run_main


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="vidconv-export", description=__doc__)
    parser.parse_args(argv)
    parser.print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vidconv-export", _main, argv)
