"""One verdict and one exit policy for every command.

Every command ends in one of three ways, and only these: 0 when everything that was asked holds,
1 when a verdict failed (a rewrite that is not exact, a graph that does not comply, an integer
reference that is not bit-exact, a design that does not fit its board), 2 when the input was bad or
a tool failed. CI pipelines branch on these codes, so they must mean the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: All that was asked holds.
EXIT_OK = 0
#: A verdict failed (the bundle, when one was written, says which and why).
EXIT_FAILED = 1
#: Bad input or a tool error; nothing was written.
EXIT_ERROR = 2

EXIT_CODES_HELP = "exit codes: 0 all that was asked holds; 1 a verdict failed; 2 bad input or a tool error"


@dataclasses.dataclass
class Check:
    """One named verdict: whether it holds, why, and whether a failure was accepted by a flag."""

    holds: bool
    detail: str = ""
    accepted: bool = False
    #: The step that reached it (a --start-from run keeps the verdicts of the steps it does not rerun).
    step: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"holds": self.holds, "detail": self.detail, **({"accepted": True} if self.accepted else {}),
                **({"step": self.step} if self.step else {})}


@dataclasses.dataclass
class Verdict:
    """The verdicts of one run, in the order they were reached; the exit code follows from them alone."""

    checks: dict[str, Check] = dataclasses.field(default_factory=dict)
    #: The step now running (set by the step runner), recorded with each verdict.
    current_step: str | None = None

    def record(self, name: str, holds: bool, detail: str = "", accepted: bool = False) -> bool:
        """Record ``name``; ``accepted`` marks a failure the user chose to accept (e.g. ``--allow-unfit``)."""
        self.checks[name] = Check(bool(holds), detail, accepted=accepted and not holds, step=self.current_step)
        return bool(holds)

    @property
    def failed(self) -> list[str]:
        """Names of the verdicts that failed and were not accepted."""
        return [name for name, check in self.checks.items() if not check.holds and not check.accepted]

    @property
    def holds(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.holds else EXIT_FAILED

    def summary(self) -> str:
        """One line for people: every verdict, failed ones first with their reasons."""
        if not self.checks:
            return "nothing was checked"
        parts = [f"{name} FAILED ({self.checks[name].detail})" for name in self.failed]
        parts += [f"{name} {'holds' if c.holds else 'failed, accepted'}" for name, c in self.checks.items()
                  if name not in self.failed]
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"holds": self.holds, "exit_code": self.exit_code, "failed": self.failed,
                "checks": {name: check.to_dict() for name, check in self.checks.items()}}
