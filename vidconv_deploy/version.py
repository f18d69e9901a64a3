"""The package version, in the one place pyproject.toml, manifests and quant_info.json read it from, and the
versions of the packages a run used."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

__version__ = "0.1.0"


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed version of each distribution, or "not installed" (what a manifest records of a run)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
