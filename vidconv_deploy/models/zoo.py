"""The shipped demo weights (top-level ``models/``, inside the wheel as ``vidconv_deploy/zoo``).

Each entry is ``<arch>.safetensors`` (weights + config) with its model card ``<arch>.yaml``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml


def shipped_weights(arch: str) -> Path | None:
    """The shipped weights file of ``arch``, or None when none ships."""
    path = Path(str(resources.files("vidconv_deploy") / "zoo" / f"{arch}.safetensors"))
    return path if path.is_file() else None


def model_card(arch: str) -> dict[str, Any]:
    """The shipped model card of ``arch`` (empty when none ships)."""
    path = Path(str(resources.files("vidconv_deploy") / "zoo" / f"{arch}.yaml"))
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


def shipped_class_names(arch: str, num_classes: int) -> list[str] | None:
    """The class names of a shipped model: its card's, else those of the model it was distilled from (the
    hardware variants share their teacher's classes); None when unknown or when the count differs."""
    card = model_card(arch)
    names = card.get("data", {}).get("classes") or model_card(card.get("distilled_from", {}).get("arch", "")) \
        .get("data", {}).get("classes", [])
    return list(names) if len(names) == num_classes else None
