"""Bias correction: each layer's per-channel mean quantization error folded into its bias, as vai_q_pytorch does.

vai_q_pytorch corrects biases inside its calibration pass (option ``nndct_param_corr``, on by default in
``VAI/nndct_shared/utils/option_list.py``; VAI = Xilinx/Vitis-AI src/vai_quantizer/vai_q_pytorch): a conv or
dense module (``VAI/pytorch_binding/pytorch_nndct/nn/modules/conv.py``, ``linear.py``) computes per batch its
quantized output (int8 weights and bias; the output quantized too when the module is its own quantization
point) and the output of its float weights and bias on the same input, and subtracts ``rate`` times the
error's mean over every dimension but the channels from its float bias. ``rate`` starts at
``nndct_param_corr_rate`` 0.05 and halves once the layer's quantization efficiency passes 4.0; the updates stop
when ``quant_noise.eval_qnoise`` sees that efficiency settle. Parameters keep the fix positions their first
batch gave them (``TORCHQuantizer.do_scan`` positions a parameter only while it has none), and the deployed
model quantizes the corrected float bias (``export_quant_config`` saves the corrections and sets
``bias_corrected``).

Here calibration is a pass of its own, so the correction runs after it, with every fix position as
calibration and the shift rules left it: layer by layer in graph order, each layer's input taken from the QDQ
graph with the layers before it already corrected, its bias moved by the whole mean error over all
calibration feeds at once -- the value vai_q's damped per-batch updates move toward, without their dependence
on the number and order of batches.
"""

from __future__ import annotations

import torch

from vidconv_deploy.fixpoint import arithmetic as fixpoint
from vidconv_deploy.fixpoint import kernels as K
from vidconv_deploy.progress import Subtask, no_subtask
from vidconv_deploy.quant.graph import GraphPlan
from vidconv_deploy.quant.layerwise import CalibratedPlan, Layer, conv_layers, forward, parameter, qdq_inputs, reduce_dims


def _out_channels(plan: GraphPlan, layer: Layer) -> int:
    shape = plan.initializers[layer.weight].shape
    return shape[0] if layer.node.op == "Conv" or layer.node.attr("transB", 0) else shape[-1]


def correct_biases(calibrated: CalibratedPlan, *, progress: Subtask = no_subtask) -> list[dict]:
    """Correct the float bias of every conv-like layer with one value per output channel, in place in the
    plan's initializers; returns per layer the largest correction and the channels whose corrected bias
    saturates int8 at its fix position (where the correction is partly lost)."""
    plan = calibrated.plan
    layers = [layer for layer in conv_layers(plan)
              if layer.bias is not None and plan.initializers[layer.bias].size == _out_channels(plan, layer)]
    records = []
    with progress("bias correction", len(layers)) as advance, K.single_threaded(), torch.no_grad():
        for layer in layers:
            records.append(_correct(calibrated, layer, qdq_inputs(calibrated, layer)))
            advance(1)
    return records


def _correct(calibrated: CalibratedPlan, layer: Layer, inputs: list[torch.Tensor]) -> dict:
    assert layer.bias is not None
    plan = calibrated.plan
    w, b = parameter(plan, layer.weight), parameter(plan, layer.bias)
    w_pos, b_pos = calibrated.param_positions[layer.weight], calibrated.param_positions[layer.bias]
    wq = fixpoint.fake_quantize(w, w_pos, fixpoint.PARAM_ROUNDING)
    bq = fixpoint.fake_quantize(b, b_pos, fixpoint.PARAM_ROUNDING)
    out_pos = calibrated.act_positions.get(layer.node.name)  # the layer is its own quantization point (no fused activation)
    total: torch.Tensor | float = 0.0
    count = 0
    for x in inputs:
        q = forward(layer, x, wq, bq)
        if out_pos is not None:
            q = fixpoint.fake_quantize(q, out_pos, fixpoint.ACTIVATION_ROUNDING)
        error = (q - forward(layer, x, w, b)).double()
        total = total + error.sum(reduce_dims(error, layer.channel_dim))
        count += error.numel() // error.shape[layer.channel_dim]
    mean = (total / count).float().reshape(b.shape)
    corrected = b - mean
    plan.initializers[layer.bias] = corrected.numpy()
    scaled = corrected * 2.0**b_pos
    saturated = (scaled >= fixpoint.QMAX + 0.5) | (scaled <= fixpoint.QMIN - 0.5)  # std_round: ties go outward
    return {"node": layer.node.name, "bias": layer.bias, "fix_point": b_pos,
            "max_correction_lsb": float(mean.abs().max()) * 2.0**b_pos, "saturated_channels": int(saturated.sum())}
