"""Fast finetune: vai_q_pytorch's layer-wise AdaQuant (``AdvancedQuantProcessor.finetune_v2``) on a GraphPlan.

vai_q (``VAI/pytorch_binding/pytorch_nndct/qproc/adaquant.py``, VAI = Xilinx/Vitis-AI
src/vai_quantizer/vai_q_pytorch; after Hubara et al., arXiv:2006.10518) caches the float model's outputs on
the calibration batches, calibrates, freezes every fix position, and tunes the conv-like modules one at a
time in graph order (``optimize_layer_v2``):

- the layer reads its input from the quantized model (the layers before it already tuned) and learns the
  float model's output of that layer, through the relu / relu6 that follows it (``layer_act_pair``); loss
  MSE(quantized output, float output) + MSE(weight, float weight) (``nndct_quant_opt`` 3 > 0, option_list.py);
- Adam on the weight and on the bias, learning rates ``nndct_finetune_lr_factor`` 0.01 times the parameter's
  std, halved for batches of one, and 0.1 times (the batch factor once more) that when the layer's weights
  already quantize well (efficiency SQNR/8 above 4.5); a one-element bias is not tuned;
- up to 100 epochs over the batches; after each, the whole quantized model's loss against the float outputs
  (per output, the mean over batches of the RMSE; ``calc_net_loss``) decides: no output worse and one better
  keeps the parameters, otherwise they go back to the best so far and both rates halve; the layer stops
  when both rates are below 1e-5 or two failed epochs give the same loss;
- the fix positions stay (``keep_fp``, ``TORCHQuantizer.do_scan``): the tuned weights are quantized at the
  positions calibration gave, so the shift rules hold as before.

One difference: vai_q quantizes a module's weights in place once per epoch and lets Adam move the rounded
values during the epoch; here the float weights train through a straight-through fake quantizer at their
fixed positions (AdaQuant's form), rounded at every step, and so does a layer output that ends at a
quantization point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vidconv_deploy.fixpoint import arithmetic as fixpoint
from vidconv_deploy.fixpoint import kernels as K
from vidconv_deploy.progress import Subtask, no_subtask
from vidconv_deploy.quant.layerwise import (
    CalibratedPlan,
    Layer,
    TensorRun,
    activation,
    conv_layers,
    forward,
    parameter,
    qdq_inputs,
    straight_through,
)

#: adaquant.py / option_list.py constants (``nndct_finetune_lr_factor``, the efficiency bar, ``iters``, the last rate).
LR_FACTOR = 0.01
WELL_QUANTIZED = 4.5
MAX_EPOCHS = 100
MIN_LR = 1e-5


@dataclass(frozen=True)
class NetLoss:
    """Per graph output, the mean over feeds of the RMSE between the quantized and the float output."""

    per_output: tuple[float, ...]

    def better_than(self, other: NetLoss) -> bool:
        """``AverageMeter.__lt__``: no output worse and at least one better."""
        pairs = list(zip(self.per_output, other.per_output, strict=True))
        return all(a <= b for a, b in pairs) and any(a < b for a, b in pairs)

    def same_as(self, other: NetLoss) -> bool:
        """``AverageMeter.__eq__``: equal within a relative 1e-6."""
        return all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(self.per_output, other.per_output, strict=True))


class _NetLossProbe:
    """The quantized graph's :class:`NetLoss` for the plan's current parameters."""

    def __init__(self, calibrated: CalibratedPlan) -> None:
        self.feeds, self.build = calibrated.feeds, calibrated.build
        model = calibrated.plan.model
        self.outputs = [o.name for o in model.graph.output]
        self.float = TensorRun(model, []).run(self.feeds, self.outputs)

    def measure(self) -> NetLoss:
        quant = TensorRun(self.build(), []).run(self.feeds, self.outputs)
        rmse = [[math.sqrt(float(np.mean((q.astype(np.float64) - f) ** 2))) for q, f in zip(qs, fs, strict=True)]
                for qs, fs in zip(quant, self.float, strict=True)]
        return NetLoss(tuple(float(np.mean(col)) for col in zip(*rmse, strict=True)))


def fast_finetune(calibrated: CalibratedPlan, *, progress: Subtask = no_subtask) -> dict:
    """Tune every conv-like layer's float weight and bias in place in the plan's initializers, positions
    fixed; returns the net loss before and after and, per layer, the epochs run and kept."""
    layers = conv_layers(calibrated.plan)
    probe = _NetLossProbe(calibrated)
    targets = TensorRun(calibrated.plan.model, [layer.last.outputs[0] for layer in layers])
    before = loss = probe.measure()
    records = []
    with progress("fast finetune", len(layers)) as advance, K.single_threaded(), torch.enable_grad():
        for layer in layers:
            name = layer.last.outputs[0]
            wanted = [torch.from_numpy(out[0]) for out in targets.run(calibrated.feeds, [name])]
            loss, record = _LayerTuner(calibrated, layer).tune(qdq_inputs(calibrated, layer), wanted, probe, loss)
            records.append(record)
            advance(1)
    return {"net_loss_before": list(before.per_output), "net_loss_after": list(loss.per_output), "layers": records}


class _Adam:
    """``torch.optim.Adam`` with its defaults (betas 0.9 and 0.999, eps 1e-8: what adaquant.py uses) on one tensor.

    Written out because building a torch.optim optimizer imports torch._dynamo on first use (6 s on a loaded
    2-core VM), more than tuning a small graph takes.
    """

    BETAS, EPS = (0.9, 0.999), 1e-8

    def __init__(self, param: torch.Tensor, lr: float) -> None:
        self.param, self.lr, self.steps = param, lr, 0
        self.m, self.v = torch.zeros_like(param), torch.zeros_like(param)

    @torch.no_grad()
    def step(self) -> None:
        """One update from the parameter's gradient, which it then clears."""
        grad, (b1, b2) = self.param.grad, self.BETAS
        assert grad is not None
        self.steps += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v.sqrt() / math.sqrt(1 - b2**self.steps)).add_(self.EPS)
        self.param.addcdiv_(self.m, denom, value=-self.lr / (1 - b1**self.steps))
        self.param.grad = None


class _LayerTuner:
    """``optimize_layer_v2`` for one layer."""

    def __init__(self, calibrated: CalibratedPlan, layer: Layer) -> None:
        plan, positions = calibrated.plan, calibrated.param_positions
        self.plan, self.layer = plan, layer
        self.w_pos = positions[layer.weight]
        self.b_pos = None if layer.bias is None else positions[layer.bias]
        self.out_pos = calibrated.act_positions.get(layer.last.name)
        self.w0 = parameter(plan, layer.weight)
        self.w = self.w0.clone().requires_grad_()
        self.b = None if layer.bias is None else parameter(plan, layer.bias).clone().requires_grad_()

    def params(self) -> list[torch.Tensor]:
        return [self.w] if self.b is None else [self.w, self.b]

    def optimizers(self, batch: int) -> list[_Adam]:
        batch_factor = 0.5 if batch == 1 else 1.0
        factor = LR_FACTOR * batch_factor
        if efficiency(self.w0, fixpoint.fake_quantize(self.w0, self.w_pos, fixpoint.PARAM_ROUNDING)) > WELL_QUANTIZED:
            factor *= 0.1 * batch_factor
        return [_Adam(p, factor * float(p.detach().std()) if p.numel() > 1 else 0.0) for p in self.params()]

    def output(self, x: torch.Tensor) -> torch.Tensor:
        w = straight_through(self.w, self.w_pos, fixpoint.PARAM_ROUNDING)
        b = None if self.b is None else straight_through(self.b, self.b_pos, fixpoint.PARAM_ROUNDING)
        y = activation(self.plan, self.layer, forward(self.layer, x, w, b))
        return y if self.out_pos is None else straight_through(y, self.out_pos, fixpoint.ACTIVATION_ROUNDING)

    def store(self, values: Sequence[torch.Tensor]) -> None:
        """Set the layer's float parameters (in the plan and the trained tensors) to ``values``."""
        names = [self.layer.weight] if self.layer.bias is None else [self.layer.weight, self.layer.bias]
        for name, p, v in zip(names, self.params(), values, strict=True):
            p.data.copy_(v)
            self.plan.initializers[name] = v.detach().numpy().copy()

    def tune(self, inputs: list[torch.Tensor], wanted: list[torch.Tensor], probe: _NetLossProbe, loss: NetLoss) -> tuple[NetLoss, dict]:
        opts = self.optimizers(inputs[0].shape[0])
        best = [p.detach().clone() for p in self.params()]
        previous: NetLoss | None = None
        epochs = kept = 0
        while epochs < MAX_EPOCHS:
            epochs += 1
            for x, target in zip(inputs, wanted, strict=True):
                step_loss = F.mse_loss(self.output(x), target) + F.mse_loss(self.w, self.w0)
                step_loss.backward()
                for opt in opts:
                    opt.step()
            self.store([p.detach().clone() for p in self.params()])
            now = probe.measure()
            if now.better_than(loss):
                best, loss, kept = [p.detach().clone() for p in self.params()], now, kept + 1
                continue
            self.store(best)
            for opt in opts:
                opt.lr /= 2.0
            if all(opt.lr < MIN_LR for opt in opts) or (previous is not None and now.same_as(previous)):
                break
            previous = now
        return loss, {"node": self.layer.node.name, "epochs": epochs, "kept": kept}


def efficiency(float_values: torch.Tensor, quantized: torch.Tensor) -> float:
    """adaquant.py ``quant_eff``: SQNR in dB of ``quantized`` against ``float_values``, over 8."""
    noise = float(torch.mean((float_values - quantized) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(torch.mean(float_values**2)) / noise) / 8.0
