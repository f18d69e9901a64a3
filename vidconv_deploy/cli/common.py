"""What every console script shares: one-line errors and exit codes instead of tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from vidconv_deploy.errors import UserError


def run_main(prog: str, body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Run a command's ``body`` and turn a :class:`UserError` into ``prog: error: message`` + its exit code."""
    try:
        return body(argv)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
