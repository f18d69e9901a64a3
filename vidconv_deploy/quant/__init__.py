"""INT8 quantization with Vitis AI's (vai_q_pytorch) arithmetic for the Xilinx DPU, written as QDQ ONNX.

``quantize_onnx(float_model, calib_feeds)`` returns the QDQ model and the quant_info.json content;
``write_quant_info`` writes the latter atomically. See :mod:`vidconv_deploy.quant.qdq`.
"""

from __future__ import annotations

from vidconv_deploy.quant.qdq import QuantResult, quantize_onnx, write_quant_info

__all__ = ["QuantResult", "quantize_onnx", "write_quant_info"]
