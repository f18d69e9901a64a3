"""Where a DPU bundle keeps the Quark cross-check's QDQ graphs, and the names its accuracy rows give them.

Apart from :mod:`~vidconv_deploy.quark.crosscheck` so that the evaluation (which every training command
imports) can read a bundle's cross-check without importing the cross-check and Quark's quantizer.
"""

from __future__ import annotations

#: The manifest role and the bundle folder of Quark's QDQ graphs.
ARTIFACT, DIRECTORY = "crosscheck_quark_onnx", "crosscheck"
#: The accuracy table's rows: Quark's graphs, and ours, both run as fake-quant on ONNX Runtime.
ACCURACY_ROW, OURS_ROW = "Quark XINT8 fake-quant (ONNX Runtime)", "int8 fake-quant (ONNX Runtime)"
