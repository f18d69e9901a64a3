"""Which engines can stream a bundle, and the :class:`StreamingSplit` of each (its two graphs as runners).

A bundle's family (the manifest's recipe) says which forms of the model it holds: every bundle has
the float streaming graphs (ONNX Runtime); a DPU bundle adds the INT8 QDQ graphs (fake-quant in ONNX
Runtime, or the integer reference with the DPU's rounding, the codes the board computes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vidconv_deploy.bundle import read_manifest
from vidconv_deploy.errors import UserError
from vidconv_deploy.runners import IntegerReferenceRunner, OnnxRuntimeRunner, StreamingSplit

#: Backends by family, in preference order (the first is the default).
FAMILY_BACKENDS = {
    "onnx": ("onnxruntime",),
    "dpu": ("reference", "onnxruntime-int8", "onnxruntime"),
    # FINN bundles: not yet. Brevitas in float32 differs from the whole-clip run by a few LSB at rounding ties
    # (the FINN chain is exact only in float64), so a FINN backend needs the float64 model the chain uses.
    "finn": (),
}


def backends_of(manifest: dict) -> tuple[str, ...]:
    """The backends a bundle can stream on, the default first."""
    family = manifest.get("recipe", {}).get("family")
    if family not in FAMILY_BACKENDS:
        raise UserError("the bundle's manifest names no target family (written by an older vidconv-export): export it again")
    if not FAMILY_BACKENDS[family]:
        raise UserError(f"streaming a {family} bundle is not supported yet: export the model with --target onnx or a "
                        f"dpu-* target to stream it")
    return FAMILY_BACKENDS[family]


def _file(bundle: Path, manifest: dict, role: str) -> Path:
    art = manifest["artifacts"].get(role)
    if art is None:
        raise UserError(f"{bundle} has no {role} (its export stopped before the step that writes it): export it "
                        f"without --stop-after")
    return bundle / art.get("file", art.get("dir", ""))


def open_backend(bundle: Path, backend: str | None = None) -> tuple[str, StreamingSplit, dict]:
    """The backend's name, its split over ``bundle``'s two graphs, and the manifest (``None``: the default backend)."""
    manifest = read_manifest(bundle)
    available = backends_of(manifest)
    name = backend or available[0]
    if name not in available:
        raise UserError(f"backend {name!r} is not one this {manifest['target']} bundle has: choose "
                        f"{', '.join(available)} (--backend)")
    grid = tuple(manifest["model"]["config"]["grid"])
    makers: dict[str, Callable[[], StreamingSplit]] = {
        "onnxruntime": lambda: StreamingSplit(grid, OnnxRuntimeRunner(_file(bundle, manifest, "early_onnx")),
                                              OnnxRuntimeRunner(_file(bundle, manifest, "later_onnx"))),
        "onnxruntime-int8": lambda: StreamingSplit(grid, *(OnnxRuntimeRunner(_file(bundle, manifest, "quant_onnx") / f"{g}.onnx")
                                                           for g in ("early", "later"))),
        "reference": lambda: StreamingSplit(grid, *(IntegerReferenceRunner(_file(bundle, manifest, "quant_onnx") / f"{g}.onnx",
                                                                           "dpu") for g in ("early", "later"))),
    }
    return name, makers[name](), manifest
