"""INT8 accuracy recovery after calibration, vai_q_pytorch's two: bias correction and fast finetune.

Both change float weights / biases only; every fix position stays as calibration and the shift rules set it
(vai_q keeps them too), so the QDQ graph built after them has the same scales and the integer reference
runs it as any other. :func:`~vidconv_deploy.quant.qdq.quantize_onnx` takes the method as ``recovery``.
"""

from __future__ import annotations

from collections.abc import Mapping

from vidconv_deploy.errors import UserError
from vidconv_deploy.progress import Subtask, no_subtask
from vidconv_deploy.quant.bias_correction import correct_biases
from vidconv_deploy.quant.fast_finetune import fast_finetune
from vidconv_deploy.quant.graph import GraphPlan
from vidconv_deploy.quant.layerwise import Feeds, QdqBuilder

#: "none": calibration alone; "bias_correction": :mod:`~vidconv_deploy.quant.bias_correction`;
#: "fast_finetune": :mod:`~vidconv_deploy.quant.fast_finetune`.
RECOVERY_METHODS = ("none", "bias_correction", "fast_finetune")


def check_method(method: str) -> None:
    if method not in RECOVERY_METHODS:
        raise UserError(f"unknown INT8 recovery {method!r}; use one of {', '.join(RECOVERY_METHODS)}")


def recover(
    method: str,
    plan: GraphPlan,
    act_positions: Mapping[str, int],
    param_positions: Mapping[str, int],
    feeds: Feeds,
    build: QdqBuilder,
    *,
    progress: Subtask = no_subtask,
) -> dict:
    """Run ``method`` on ``plan``'s float parameters (in place); returns what it did, for quant_info.json."""
    check_method(method)
    if method == "bias_correction":
        return {"method": method, "layers": correct_biases(plan, act_positions, param_positions, feeds, build, progress=progress)}
    if method == "fast_finetune":
        return {"method": method, **fast_finetune(plan, act_positions, param_positions, feeds, build, progress=progress)}
    return {"method": method}
