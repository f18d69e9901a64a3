"""Deploy recipes as data: ``export/<target>.yaml``, inheriting through ``_base_`` as MMDeploy's deploy configs do.

A recipe says how a target exports (family, rule set, default model, lowering passes, quantizer and
calibration options, the list of steps); the board and hardware facts stay in the rule set it names
(``hw/rules``). Files under ``_base_/`` are building blocks, not targets. A user adds a target by
dropping a YAML file into a folder named by ``$VIDCONV_RECIPES`` (``:``-separated), no code needed;
its ``_base_`` is a shipped target's name (``_base_: dpu-kv260``) or a path relative to the file.
"""

from __future__ import annotations

import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vidconv_deploy.errors import UserError

#: Extra recipe folders, searched before the shipped ones.
RECIPES_ENV = "VIDCONV_RECIPES"
BASE_KEY = "_base_"


def recipe_dirs() -> list[Path]:
    """Where recipes are looked up: ``$VIDCONV_RECIPES`` first, then the shipped ``export/``."""
    extra = [Path(p) for p in os.environ.get(RECIPES_ENV, "").split(os.pathsep) if p]
    return [*extra, Path(str(resources.files("vidconv_deploy") / "recipes"))]


def recipe_files() -> dict[str, Path]:
    """Every selectable recipe by target name (a user's folder wins over a shipped file of the same name)."""
    found: dict[str, Path] = {}
    for folder in reversed(recipe_dirs()):
        if folder.is_dir():
            found |= {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    return dict(sorted(found.items()))


@cache
def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"recipe {path} cannot be read ({str(err).splitlines()[0]}): fix or remove the file") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe {path} is not a YAML mapping: write it as 'key: value' lines (see export/README.md)")
    return data


def merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``; mappings merge key by key, anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in child.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe at ``path`` with its ``_base_`` chain merged in (a base path is relative to the file)."""
    if path in seen:
        raise UserError(f"recipe {path} inherits from itself via {' -> '.join(map(str, seen))}: fix its {BASE_KEY}")
    data = _read(path)
    own = {k: v for k, v in data.items() if k != BASE_KEY}
    base = data.get(BASE_KEY)
    if base is None:
        return own
    base_path = (path.parent / str(base)).resolve()
    if not str(base).endswith(".yaml"):  # a target's name: inherit that target's whole recipe
        base_path = recipe_files().get(str(base), base_path)
    if not base_path.is_file():
        raise UserError(f"recipe {path} names {BASE_KEY}: {base}, which does not exist: give a target name or a "
                        f"path relative to the file")
    return merge(resolve(base_path, (*seen, path)), own)
