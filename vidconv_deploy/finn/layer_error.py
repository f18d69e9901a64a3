"""Per-layer error of the FINN variant: SQNR of every activation quantizer's output against float.

The float reference is the same Brevitas model with every quantizer switched off, which is the
float ``vic-*-dpu`` model exactly (tests/test_finn_model.py checks it). Both runs see the same clips,
so each quantizer's SQNR includes the error of every layer before it, as the DPU report's does.
A quantizer used twice per block (the shared one into each residual Add) is measured over both uses.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import brevitas.nn as qnn
import torch

from vidconv_deploy.finn.model import FinnViC, value

#: Brevitas modules whose outputs are the quantized activations that stream between FINN layers.
QUANTIZERS = (qnn.QuantIdentity, qnn.QuantReLU)


def _outputs(model: FinnViC, clips: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Every quantizer's outputs over ``clips``, in call order, keyed by module name."""
    seen: dict[str, list[torch.Tensor]] = defaultdict(list)
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: seen[name].append(value(out).detach().double()))
             for name, module in model.named_modules() if isinstance(module, QUANTIZERS)]
    try:
        with torch.no_grad():
            for clip in clips:
                model(clip)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def quantizer_sqnr(model: FinnViC, clips: list[torch.Tensor]) -> list[dict[str, Any]]:
    """``[{"quantizer", "sqnr_db", "elements"}]`` in the order the quantizers first run (the stream order);
    ``sqnr_db`` is None where it is undefined (no error at all, or an all-zero float output)."""
    from brevitas.graph.calibrate import quantization_status_manager

    model.eval()
    quantized = _outputs(model, clips)
    off = quantization_status_manager(model, disable_act_quant=True, disable_weight_quant=True, disable_bias_quant=True,
                                      call_act_quantizer_impl=False, is_training=False)
    with off:
        reference = _outputs(model, clips)
    rows = []
    for name, outs in quantized.items():
        q = torch.cat([o.flatten() for o in outs])
        f = torch.cat([o.flatten() for o in reference[name]])
        noise, signal = float(((q - f) ** 2).sum()), float((f**2).sum())
        sqnr = None if noise == 0 or signal == 0 else round(10 * math.log10(signal / noise), 2)  # None: exact or no signal
        rows.append({"quantizer": name, "sqnr_db": sqnr, "elements": int(q.numel())})
    return rows
