"""Bit-accurate integer reference for QDQ graphs with power-of-two scales, and its comparisons.

``run_reference`` executes a QDQ graph on integers (ONNX Runtime's or the DPU's rounding);
``compare_with_onnxruntime``, ``rounding_differences`` and ``layer_report`` compare it with ONNX
Runtime's fake-quant run, with itself under DPU rounding, and with the float graph; ``integer_checks``
does all three in one pass.
"""

from __future__ import annotations

from vidconv_deploy.reference.compare import (
    compare_with_onnxruntime,
    integer_checks,
    layer_report,
    rounding_differences,
    save_sqnr_plot,
)
from vidconv_deploy.reference.executor import IntTensor, ReferenceRun, run_reference

__all__ = [
    "IntTensor", "ReferenceRun", "compare_with_onnxruntime", "integer_checks", "layer_report", "rounding_differences", "run_reference",
    "save_sqnr_plot",
]
