"""What a check returns: findings (one per rule a node breaks) and the predicted partition."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Finding:
    """One rule one node breaks: what, why (``source``), and what would fix it.

    ``severity`` is ``error`` (the model is not deployable as is) or ``warning`` (it runs, but the
    op leaves the accelerator and splits the graph).
    """

    node: str
    op_type: str
    rule: str
    message: str
    fix: str
    source: str
    severity: str = "error"


@dataclass
class CheckResult:
    """The verdict for one model on one target."""

    target: str
    findings: list[Finding]
    partition: dict[str, Any]
    ops: list[dict[str, str]] = field(default_factory=list)  # every counted op: name, op_type, device

    @property
    def compliant(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "compliant": self.compliant,
            "findings": [asdict(f) for f in self.findings],
            "partition": self.partition,
        }
