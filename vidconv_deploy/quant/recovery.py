"""INT8 accuracy recovery after calibration, vai_q_pytorch's two: bias correction and fast finetune.

Both change float weights / biases only; every fix position stays as calibration and the shift rules set it
(vai_q keeps them too), so the QDQ graph built after them has the same scales and the integer reference
runs it as any other. :func:`~vidconv_deploy.quant.qdq.quantize_onnx` takes the method as ``recovery``.
"""

from __future__ import annotations

from vidconv_deploy.errors import UserError
from vidconv_deploy.progress import Subtask, no_subtask
from vidconv_deploy.quant.bias_correction import correct_biases
from vidconv_deploy.quant.fast_finetune import fast_finetune
from vidconv_deploy.quant.layerwise import CalibratedPlan, own_parameters

#: "none": calibration alone; "bias_correction": :mod:`~vidconv_deploy.quant.bias_correction`;
#: "fast_finetune": :mod:`~vidconv_deploy.quant.fast_finetune`.
RECOVERY_METHODS = ("none", "bias_correction", "fast_finetune")


def check_method(method: str) -> None:
    if method not in RECOVERY_METHODS:
        raise UserError(f"unknown INT8 recovery {method!r}; use one of {', '.join(RECOVERY_METHODS)}")


def recover(method: str, calibrated: CalibratedPlan, *, progress: Subtask = no_subtask) -> dict:
    """Run ``method`` on the plan's float parameters (in place, each layer's own: shared ones are copied first);
    returns what it did, for quant_info.json."""
    check_method(method)
    if method == "none":
        return {"method": method}
    copies = own_parameters(calibrated)
    if method == "bias_correction":
        return {"method": method, "copied_parameters": copies, "layers": correct_biases(calibrated, progress=progress)}
    return {"method": method, "copied_parameters": copies, **fast_finetune(calibrated, progress=progress)}
