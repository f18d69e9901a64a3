"""One exception type for everything a user can fix.

Every command-line entry point turns a :class:`UserError` into one line on stderr and a non-zero
exit code, so bad input never shows a traceback. Library callers can catch it like any exception.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, with a message that names the problem and the fix.

    ``exit_code`` is what a command-line tool exits with (2: unreadable or invalid input).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded into the requested model."""
