"""The bit-exact chain: Brevitas integers == FINN streamlined == FINN HW layers, and QONNX beside them.

For each clip, every form of the early graph runs once per frame on Brevitas's input, and every
form of the later graph once on Brevitas's collage (the host tiles the frames' integer features,
channels-last), each form through its own :class:`~vidconv_deploy.runners.StreamingSplit`, so each
graph is checked on its own. Compared are the integers that cross to the host (the collage
features) and the integer logits. FINN graphs take and give integers (the
host quantizes the input with the Brevitas input quantizer itself) and run in Python mode, before
SpecializeLayers (cppsim and rtlsim need the Xilinx tools); they must equal Brevitas exactly.

Brevitas runs in float64 here. Its fake-quant convs accumulate dequantized values in floating point,
and in float32 about 0.1 % of an untrained vic-nano's features on real clips landed on the other
side of a rounding boundary (measured: 11 of 18432, 1 LSB each) while FINN's integer graphs compute
exactly; in float64 the two agreed on every integer. QONNX graphs also compute in float on
dequantized values, but ONNX Runtime has no float64 Conv, so the same float32 effect remains there:
their outputs (divided by the Brevitas scale) may differ by 1 LSB where a value sits within float32
precision of a boundary. They are held to 1 LSB and every difference is counted in the result.

Where exact arithmetic can still differ: a value exactly on a rounding boundary. FINN's thresholds
round half up (``x >= (k + 1/2) s``, finn/transformation/qonnx/qonnx_activation_handlers.py),
Brevitas rounds half to even. A trained model almost never hits a boundary exactly; quantizers whose
scales are exact multiples of each other do (an untrained ConvNeXt block with layer scale 1e-6 is an
identity), which is why mismatches are reported element by element, never rounded away.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import torch
from qonnx.core.modelwrapper import ModelWrapper

from vidconv_deploy.finn.flow import as_ints
from vidconv_deploy.finn.model import FinnViC
from vidconv_deploy.runners import FinnRunner, QonnxRunner, StreamingSplit

#: The forms of each graph the chain compares, in order, and how many LSB each may differ from Brevitas.
TOLERANCE_LSB = {"qonnx": 1, "finn_streamlined": 0, "finn_hw": 0}
FORMS = tuple(TOLERANCE_LSB)


@dataclasses.dataclass
class GraphForms:
    """One graph (early or later) as QONNX, streamlined FINN-ONNX and HW layers."""

    qonnx: ModelWrapper
    finn_streamlined: ModelWrapper
    finn_hw: ModelWrapper


@dataclasses.dataclass
class Reference:
    """What Brevitas computes for one clip, as the integers the host and the accelerator exchange."""

    input_ints: np.ndarray  # (L, H, W, 3) channels-last, the early graph's FINN input per frame
    frames: np.ndarray  # (L, 3, H, W) float, the QONNX early graph's input per frame
    features: np.ndarray  # (L, h, w, C) integers crossing to the host
    feature_scale: float
    logits: np.ndarray  # (1, classes) integers
    logit_scale: float


def _scalar(scale: torch.Tensor) -> float:
    if scale.numel() != 1:
        raise ValueError("the FINN variant quantizes what crosses to the host per tensor")
    return float(scale.reshape(-1)[0])


@torch.no_grad()
def reference(model: FinnViC, clip: torch.Tensor) -> Reference:
    """Brevitas on one clip ``(1, L, 3, H, W)`` in the model's precision (float64 for the chain):
    input, feature and logit integers and scales."""
    model.eval()
    frames = clip.flatten(0, 1).to(next(model.parameters()).dtype)
    features = model.early(frames)
    logits = model.later(model.collage(features.value))
    return Reference(
        input_ints=model.input_quant(frames).int().permute(0, 2, 3, 1).numpy().astype(np.int64),
        frames=frames.float().numpy(),
        features=features.int().permute(0, 2, 3, 1).numpy().astype(np.int64),
        feature_scale=_scalar(features.scale),
        logits=logits.int().numpy().astype(np.int64),
        logit_scale=_scalar(logits.scale),
    )


def _splits(early: GraphForms, later: GraphForms, grid: tuple[int, int]) -> dict[str, StreamingSplit]:
    """Each form's streaming split: QONNX graphs run in qonnx, FINN graphs in finn-plus; the collage is channels-last."""
    splits = {}
    for form in FORMS:
        make = QonnxRunner if form == "qonnx" else FinnRunner
        splits[form] = StreamingSplit(grid, make(getattr(early, form), name=f"{form} early"),
                                      make(getattr(later, form), name=f"{form} later"), layout="NHWC")
    return splits


def run_forms(splits: dict[str, StreamingSplit], ref: Reference) -> dict[str, dict[str, Any]]:
    """Each form's feature and logit integers for one clip (and the QONNX float gap to the Brevitas grid)."""
    out: dict[str, dict[str, Any]] = {}
    collage = splits["qonnx"].collage(ref.features)  # Brevitas's integers, tiled by the host
    q_features = np.concatenate(splits["qonnx"].run_early(ref.frames))  # NCHW floats
    q_features = q_features.transpose(0, 2, 3, 1) / ref.feature_scale
    q_logits = splits["qonnx"].run_later((collage * ref.feature_scale).astype(np.float32)) / ref.logit_scale
    out["qonnx"] = {
        "features": np.round(q_features).astype(np.int64), "logits": np.round(q_logits).astype(np.int64),
        "max_off_grid": float(max(np.abs(q_features - np.round(q_features)).max(), np.abs(q_logits - np.round(q_logits)).max())),
    }
    for form in FORMS[1:]:
        split = splits[form]
        out[form] = {"features": np.concatenate([as_ints(f) for f in split.run_early(ref.input_ints)]),
                     "logits": as_ints(split.run_later(collage.astype(np.float32)))}
    return out


def verify_chain(model: FinnViC, early: GraphForms, later: GraphForms, clips: list[torch.Tensor]) -> dict[str, Any]:
    """Compare every form with Brevitas on ``clips`` (each ``(1, L, 3, H, W)``), each within its :data:`TOLERANCE_LSB`."""
    splits = _splits(early, later, model.cfg.grid)
    exact = copy.deepcopy(model).double()  # exact accumulation, as the integer hardware computes
    agree = {form: {"features": True, "logits": True} for form in FORMS}
    worst_off_grid, mismatches, qonnx_rounding = 0.0, [], []
    for i, clip in enumerate(clips):
        ref = reference(exact, clip)
        for form, result in run_forms(splits, ref).items():
            for what in ("features", "logits"):
                expected = getattr(ref, what)
                if result[what].shape != expected.shape:
                    agree[form][what] = False
                    mismatches.append(f"clip {i}: {form} {what} have shape {result[what].shape}, not {expected.shape}")
                    continue
                diff = np.abs(result[what] - expected)
                if not diff.any():
                    continue
                line = f"clip {i}: {form} {what}: {int((diff > 0).sum())} of {diff.size} integers differ from Brevitas, by up to {int(diff.max())} LSB"
                if diff.max() > TOLERANCE_LSB[form]:
                    agree[form][what] = False
                    mismatches.append(line)
                else:
                    qonnx_rounding.append(line)
            worst_off_grid = max(worst_off_grid, result.get("max_off_grid", 0.0))
    return {
        "clips": len(clips),
        "criterion": "integer features and logits of the FINN streamlined and HW-layer graphs identical to Brevitas "
                     "(float64, tolerance 0 LSB), QONNX execution (float32 in ONNX Runtime) within 1 LSB; each graph on "
                     "Brevitas's own input; FINN graphs run in Python mode before SpecializeLayers",
        "agree": agree,
        "bit_exact": not mismatches,
        "mismatches": mismatches,
        "qonnx_float32_rounding": qonnx_rounding,
        "qonnx_max_off_grid": worst_off_grid,
    }
