"""Metadata keys of a QDQ model written by :mod:`vidconv_deploy.quant`, read by :mod:`vidconv_deploy.reference`."""

from __future__ import annotations

#: Metadata key of a QDQ model: JSON map from each dequantized activation name to the float graph's name.
TENSOR_MAP_KEY = "vidconv_deploy.quant_tensors"
