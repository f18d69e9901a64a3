"""What every console script shares: one exit policy, and one line instead of a traceback.

Exit codes (vidconv_deploy.verdict): 0 all that was asked holds, 1 a verdict failed, 2 bad input or
a tool error. A :class:`UserError` carries its own message and fix; a file the system refuses
(a read-only folder, a full disk) names the file and the reason; anything else is a tool error,
reported in one line with how to see the traceback (``VIDCONV_DEBUG=1``), because a traceback is
not something a CI log reader or a user can act on.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence

from vidconv_deploy.errors import UserError
from vidconv_deploy.verdict import EXIT_CODES_HELP, EXIT_ERROR

#: Set to 1 to get the traceback of a tool error on stderr as well.
DEBUG_ENV = "VIDCONV_DEBUG"


def one_line(text: str) -> str:
    """A message on one line (tools' messages can span several)."""
    return " ".join(str(text).split())


def os_error_line(err: OSError) -> str:
    """A file the system refused, in one line: which, why, and what to do."""
    where = f" {err.filename}" if err.filename else ""
    if isinstance(err, IsADirectoryError) and err.filename:
        return f"{err.filename} is a folder: give the path of a file"
    if isinstance(err, NotADirectoryError) and err.filename:
        return f"cannot use {err.filename}: it, or a folder above it, is a file: give a path in a folder"
    return f"cannot use{where}: {one_line(err.strerror or str(err))}: check the path and its permissions"


def run_main(prog: str, body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Run a command's ``body``; every failure becomes ``prog: error: ...`` on one line and its exit code."""
    try:
        return body(argv)
    except UserError as err:
        print(f"{prog}: error: {one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        print(f"{prog}: error: {one_line(os_error_line(err))}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # a tool error: one line, the traceback on request
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        print(f"{prog}: error: {type(err).__name__}: {one_line(str(err)) or 'no message'} (a tool error; rerun with "
              f"{DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return EXIT_ERROR


__all__ = ["EXIT_CODES_HELP", "run_main"]
