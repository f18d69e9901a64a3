"""Strict JSON out: every file and line we print as JSON parses in any JSON reader.

Python's ``json`` writes bare ``NaN`` and ``Infinity``, which are not JSON; a NaN figure must never
reach a manifest that way. Non-finite floats become ``null`` here, and the code that measured them
records a failed verdict naming the tensor, so the information is not lost, only its spelling.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(value) for value in obj]
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (``allow_nan=False`` after :func:`finite_or_none`)."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False)
