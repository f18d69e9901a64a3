"""Rule sets as data: load ``hw/rules/<target>.yaml`` and resolve ``extends`` chains.

The hardware facts are YAML that hardware engineers review next to their sources; the code only
evaluates them. A file may ``extends`` another so that facts shared by boards with the same DPU core
are written once (a child's keys override the parent's, dicts merge recursively). Files marked
``abstract`` are building blocks, not selectable targets.

A DPU rule set names its DPU configurations (``dpu.configurations``: name -> fingerprint, with the
source) and the board's default (``board.dpu``); resolving it merges the facts decoded from the chosen
fingerprint (:mod:`.dpu_config`) over its keys, so the same board file serves a B3136 and a B4096.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from vidconv_deploy.check.dpu_config import DpuChoice, dpu_facts
from vidconv_deploy.errors import UserError


@dataclass(frozen=True)
class RuleSet:
    """A resolved target: its name and the merged YAML data."""

    name: str
    data: dict[str, Any]

    @property
    def family(self) -> str:
        return self.data["family"]

    def rule(self, rule_id: str) -> dict[str, Any]:
        """The rule's ``severity``, ``source`` and ``fix`` template."""
        return self.data["rules"][rule_id]


def _rules_dir() -> Any:
    return resources.files("vidconv_deploy") / "rules"


@cache
def _raw(name: str) -> dict[str, Any]:
    path = _rules_dir() / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(name)
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if name in seen:
        raise ValueError(f"rule set {name!r} extends itself via {' -> '.join(seen)}")
    raw = _raw(name)
    parent = raw.get("extends")
    own = {k: v for k, v in raw.items() if k not in ("extends", "abstract")}
    return _merge(_resolve(parent, (*seen, name)), own) if parent else own


def list_targets() -> list[str]:
    """Every selectable target (rule files not marked ``abstract``), sorted."""
    names = [p.name[: -len(".yaml")] for p in _rules_dir().iterdir() if p.name.endswith(".yaml")]
    return sorted(n for n in names if not _raw(n).get("abstract"))


def load_ruleset(target: str, dpu: DpuChoice | None = None) -> RuleSet:
    """The resolved rule set of ``target`` for the DPU ``dpu`` names (None: the board's default).

    An unknown name, a DPU choice for a target without a DPU, or a choice that does not decode is a
    :class:`UserError` naming the fix.
    """
    targets = list_targets()
    if target not in targets:
        close = difflib.get_close_matches(target, targets, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}?" if close else f"choose one of {', '.join(targets)}"
        raise UserError(f"unknown target {target!r}: {hint}")
    data = _resolve(target)
    if "dpu" not in data:
        if dpu is not None:
            raise UserError(f"{dpu}: {target} has no DPU: drop it or choose a dpu-* target")
        return RuleSet(target, data)
    own = {k: v for k, v in data.items() if k != "dpu"}
    return RuleSet(target, _merge(own, dpu_facts(target, data, dpu)))
