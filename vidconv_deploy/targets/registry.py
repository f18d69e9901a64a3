"""Targets as objects built from data: one registry behind every command's ``--target``.

A :class:`Target` joins a recipe (``export/<name>.yaml``: family, passes, quantizer, calibration,
steps) with the rule set it names (``hw/rules/<rules>.yaml``: the operator rules and the board,
with its budget and clocks). What differs between families in code (their command-line options,
the external tools they drive, their steps) lives in :mod:`.families`; the registry only reads data.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidconv_deploy.check.dpu_config import DpuChoice
from vidconv_deploy.check.ruleset import RuleSet, load_ruleset
from vidconv_deploy.errors import UserError
from vidconv_deploy.export.passes import PASSES, Pass, passes_by_name
from vidconv_deploy.targets.recipes import recipe_files, resolve

if TYPE_CHECKING:
    from vidconv_deploy.targets.steps import Step

REQUIRED = ("family", "rules", "default_model", "steps")


@dataclasses.dataclass(frozen=True)
class Tool:
    """An external tool a target drives: whether it is here, its version, and what it is for."""

    name: str
    purpose: str
    version: str | None

    @property
    def available(self) -> bool:
        return self.version is not None


@dataclasses.dataclass(frozen=True)
class Target:
    """One deploy target (see the module docstring); ``recipe`` is the resolved YAML."""

    name: str
    recipe: Mapping[str, Any]
    source: Path
    #: The DPU the user named (--dpu-arch / --fingerprint / --arch-json); None: the board's default.
    dpu: DpuChoice | None = None

    @property
    def family(self) -> str:
        return str(self.recipe["family"])

    @property
    def description(self) -> str:
        return str(self.recipe.get("description") or self.ruleset.data.get("description", ""))

    @cached_property
    def ruleset(self) -> RuleSet:
        return load_ruleset(str(self.recipe["rules"]), self.dpu)

    @property
    def board(self) -> Mapping[str, Any]:
        """The board section of the rule set (DPU: cores, clock, arch.json; FINN: part, budget); empty for onnx."""
        return self.ruleset.data.get("board", {})

    @property
    def default_model(self) -> str:
        return str(self.recipe["default_model"])

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(self.recipe["steps"])

    def steps(self) -> list[Step]:
        """The recipe's steps, resolved to the registered step functions."""
        from vidconv_deploy.targets.steps import resolve_steps

        return resolve_steps(self.step_names, f"recipe {self.source}")

    @property
    def quantizer(self) -> Mapping[str, Any]:
        return self.recipe.get("quantizer", {})

    @property
    def calibration(self) -> Mapping[str, Any]:
        return self.recipe.get("calibration", {})

    def passes(self) -> tuple[Pass, ...]:
        """The recipe's lowering passes, configured from the rule set (e.g. the DPU's channel parallelism)."""
        return passes_by_name(self.recipe.get("passes", []), self.ruleset.data)

    def availability(self) -> list[Tool]:
        """The external tools this target drives, found here or not (with versions)."""
        from vidconv_deploy.targets.families import family

        return family(self.family).tools(self)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's record of the target: its recipe as resolved, its board and rule set."""
        arch = self.ruleset.data.get("arch")
        return {"name": self.name, "family": self.family, "rules": self.ruleset.name, "board": dict(self.board),
                **({"dpu": dict(arch)} if self.family == "dpu" and arch else {}), "recipe": dict(self.recipe)}


def _validate(name: str, path: Path, recipe: Mapping[str, Any]) -> None:
    from vidconv_deploy.targets import export  # noqa: F401 (imports every step module, so the step registry is full)
    from vidconv_deploy.targets.families import FAMILIES
    from vidconv_deploy.targets.steps import resolve_steps

    missing = [key for key in REQUIRED if key not in recipe]
    if missing:
        raise UserError(f"recipe {path} lacks {', '.join(missing)}: add them or inherit them with _base_")
    if recipe["family"] not in FAMILIES:
        raise UserError(f"recipe {path}: family {recipe['family']!r} is not one of {', '.join(FAMILIES)}")
    unknown = [p for p in recipe.get("passes", []) if p not in PASSES]
    if unknown:
        raise UserError(f"recipe {path} lists unknown pass(es) {', '.join(unknown)}: use {', '.join(PASSES)}")
    resolve_steps(recipe["steps"], f"recipe {path}")
    load_ruleset(str(recipe["rules"]))  # an unknown rule set fails here, with suggestions


def target_names() -> list[str]:
    """Every target name, the same list for every command."""
    return list(recipe_files())


def get_target(name: str) -> Target:
    """The target called ``name``; an unknown name is a one-line error with the closest names."""
    files = recipe_files()
    if name not in files:
        close = difflib.get_close_matches(name, files, n=2)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UserError(f"unknown target {name!r}: {hint}available: {', '.join(files)} (vidconv-export --list-targets)")
    recipe = resolve(files[name])
    _validate(name, files[name], recipe)
    return Target(name, recipe, files[name])
