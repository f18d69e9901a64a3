"""The shipped demo weights (top-level ``models/``, inside the wheel as ``vidconv_deploy/zoo``).

Each entry is ``<name>.safetensors`` (weights + config) with its model card ``<name>.yaml``. A
shipped model's name is its file's stem, not its architecture: ``vic-nano`` and ``vic-nano-hard``
are both the arch ``vic-nano``, trained on different data with different classes, so class names
and the data to calibrate on are looked up by name (the card), never by arch.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


def _zoo() -> Path:
    return Path(str(resources.files("vidconv_deploy") / "zoo"))


def shipped_weights(name: str) -> Path | None:
    """The shipped weights file of the model ``name``, or None when none ships."""
    path = _zoo() / f"{name}.safetensors"
    return path if name and path.is_file() else None


def shipped_name(weights: Path) -> str | None:
    """The shipped model ``weights`` is (the same file, by any path), or None for any other file."""
    same = shipped_weights(weights.stem)
    return weights.stem if same is not None and weights.is_file() and same.resolve() == weights.resolve() else None


def model_card(name: str) -> dict[str, Any]:
    """The shipped model card of ``name`` (empty when none ships)."""
    path = _zoo() / f"{name}.yaml"
    return _read_card(path) if name and path.is_file() else {}


def _read_card(path: Path) -> dict[str, Any]:
    card = yaml.safe_load(path.read_text(encoding="utf-8"))
    return card if isinstance(card, dict) else {}


def teacher_card(card: Mapping[str, Any]) -> dict[str, Any]:
    """The card of the model ``card``'s model was distilled or QAT-trained from: the card beside the teacher file
    it names, else the shipped card of that file's name (the path is relative to where the training ran), else
    the shipped card of the teacher's arch; empty when the card names no teacher."""
    source = card.get("distilled_from") or {}
    teacher = Path(str(source.get("teacher", "")))
    found: dict[str, Any] = {}
    if teacher.suffix == ".safetensors":
        beside = teacher.with_suffix(".yaml")
        found = _read_card(beside) if beside.is_file() else model_card(teacher.stem)
    return found or model_card(str(source.get("arch", "")))


def training_data(card: Mapping[str, Any]) -> dict[str, Any]:
    """The data section of a card, what it lacks (classes, generator version, the command that made the data) taken
    from its teacher's: a variant is trained on its teacher's data, and the distillation cards do not repeat it."""
    data = dict(card.get("data") or {})
    teacher = teacher_card(card) if card.get("distilled_from") else {}
    for key, value in (teacher.get("data") or {}).items():
        data.setdefault(key, value)
    return data


def shipped_class_names(name: str, num_classes: int) -> list[str] | None:
    """The class names of the shipped model ``name`` (its card's, else its teacher's: the hardware variants share
    their teacher's classes); None when unknown or when the count is not ``num_classes``."""
    names = training_data(model_card(name)).get("classes") or []
    return list(names) if len(names) == num_classes else None
