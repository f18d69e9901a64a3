"""Calibration: fix positions of activations from calibration feeds, computed the way vai_q_pytorch does.

vai_q's calibration is a *fake-quantized* forward pass (``TORCHQuantizer.calibrate_int`` in
``VAI/pytorch_binding/pytorch_nndct/quantization/torchquantizer.py``, VAI = Xilinx/Vitis-AI
src/vai_quantizer/vai_q_pytorch): weights and biases are quantized once (std_round, position by
"diffs"); each quantized activation gets this batch's "diffs" position (capped at 12), appended to
its history, and the tensor is quantized at the *mode* of the history so far before later layers see
it. Later layers are therefore calibrated on quantized inputs. The ops compute what vai_q's modules
compute (``VAI/pytorch_binding/pytorch_nndct/nn/modules/``): LeakyReLU with slope 26/256
(``leaky_relu.py``), average pools and means scaled to the DPU divisor (``avgpool.py``,
``adaptive_avg_pool.py``, ``mean.py``), hard-sigmoid as relu6(x + 3) * 2731/16384 (``hardsigmoid.py``).

This module runs that pass on an ONNX graph with float32 torch kernels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from vidconv_deploy.errors import UserError
from vidconv_deploy.fixpoint import arithmetic as fixpoint
from vidconv_deploy.fixpoint import kernels as K
from vidconv_deploy.parallel import CorePool, chunks, core_pool
from vidconv_deploy.progress import Subtask, no_subtask
from vidconv_deploy.quant.graph import CONST_OP, INPUT_OP, GraphPlan, Node

#: Feeds run node by node together: enough to keep every core busy, few enough that the live tensors of
#: all of them stay small (a ViC-T 224 frame holds about 30 MB of live activations).
CHUNK_FEEDS = 8

#: vai_q forces LeakyReLU's negative slope to 26/256 (``leaky_relu.py``, option nndct_leaky_relu_approximate
#: default True in ``VAI/nndct_shared/utils/option_list.py``).
DPU_LEAKY_SLOPE = Fraction(26, 256)
#: ``hardsigmoid.py``: relu6(x + 3) * 2731 / 16384 ("scale to DPU accuracy").
DPU_HSIGMOID_SCALE = Fraction(2731, 16384)


@dataclass
class Calibration:
    """What calibration found: positions per activation key and per parameter, and the batch history."""

    activations: dict[str, int]
    params: dict[str, int]
    history: dict[str, list[int]] = field(default_factory=dict)
    batches: int = 0


def input_shape(plan: GraphPlan, node: Node) -> tuple[int, ...]:
    shape = plan.shapes.get(node.inputs[0])
    if shape is None:
        raise UserError(f"node {node.name}: input shape unknown; export with static input shapes and simplify (onnxsim)")
    return shape


def pool_sum_factor(plan: GraphPlan, node: Node) -> Fraction | None:
    """The dyadic factor the DPU multiplies a window sum by for an averaging node, or None if not one."""
    if node.op == "AveragePool":
        kernel = tuple(node.attr("kernel_shape"))
        return fixpoint.avgpool_sum_factor((kernel[0], kernel[1]))
    if node.op == "GlobalAveragePool":
        shape = input_shape(plan, node)
        return fixpoint.avgpool_sum_factor((shape[2], shape[3]))
    if node.op == "ReduceMean":
        shape = input_shape(plan, node)
        count = int(np.prod([shape[a] for a in reduce_axes(plan, node, len(shape))]))
        return fixpoint.mean_sum_factor(count)
    return None


def reduce_axes(plan: GraphPlan, node: Node, rank: int) -> list[int]:
    axes = node.attr("axes")
    if axes is None and node.proto is not None and len(node.proto.input) > 1 and node.proto.input[1]:
        axes = plan.initializers[node.proto.input[1]].tolist()
    if axes is None:
        return list(range(rank))
    return sorted(int(a) % rank for a in axes)


def static_input(plan: GraphPlan, node: Node, index: int) -> np.ndarray | None:
    """A node's constant argument (shape, axes, split sizes, clip bound), or None if absent."""
    assert node.proto is not None
    return K.constant_input(node.proto, index, plan.initializers, node.name)


def avgpool_window(node: Node) -> K.Window:
    """AveragePool's window; count_include_pad=0 with padding is refused: the DPU divides by the kernel area."""
    assert node.proto is not None
    kernel = tuple(node.attr("kernel_shape"))
    win = K.window(node.proto, (kernel[0], kernel[1]))
    if any(win.pads) and not node.attr("count_include_pad", 0):
        raise UserError(
            f"node {node.name}: AveragePool with padding and count_include_pad=0 averages border windows over fewer "
            "values, which the DPU does not do; use count_include_pad=True (PyTorch's default)"
        )
    return win


class FloatPass:
    """Float32 execution of a :class:`GraphPlan` with vai_q's op arithmetic and a hook at each quant point.

    It runs a chunk of feeds node by node (all feeds through one node before the next), each feed's op on
    a :class:`CorePool` worker. That order is equivalent to running the feeds one after another: a quant
    point's history for feed i depends only on feeds <= i at that point, which the hook sees in feed order.
    Every feed is computed alone (batch 1, one torch thread), as a one-at-a-time run computes it.
    """

    def __init__(self, plan: GraphPlan, params: Mapping[str, torch.Tensor], pool: CorePool) -> None:
        self.plan = plan
        self.params = params
        self.pool = pool
        #: tensor -> index of the last node reading it: its values are dropped after that node.
        self.last_use = {t: i for i, node in enumerate(plan.nodes) for t in node.inputs}

    def run(self, feeds: Sequence[Mapping[str, np.ndarray]], hook) -> None:
        """Execute on ``feeds``; after each node whose name is a quant key, ``hook(point, tensors)`` gets that
        tensor of every feed (in feed order) and returns what the later nodes read instead."""
        plan, values = self.plan, {}
        for index, node in enumerate(plan.nodes):
            if node.op == INPUT_OP:
                if any(node.name not in feed for feed in feeds):
                    raise UserError(f"calibration feed lacks graph input {node.name!r}; give every input in each feed")
                outs = [[torch.as_tensor(np.asarray(feed[node.name], dtype=np.float32)) for feed in feeds]]
            elif node.op == CONST_OP:
                outs = [[torch.as_tensor(plan.initializers[node.name].astype(np.float32))] * len(feeds)]
            else:
                args = [values[t] for t in node.inputs]
                per_feed = self.pool.map(lambda i: self._kernel(node, [a[i] for a in args]), range(len(feeds)))
                outs = [list(out) for out in zip(*per_feed, strict=True)]
            values.update(zip(node.outputs, outs, strict=True))
            point = plan.points.get(node.name)
            if point is not None:
                values[point.tensor] = hook(point, values[point.tensor])
            for tensor in set(node.inputs):
                if self.last_use[tensor] == index:
                    del values[tensor]

    def _param(self, name: str | None) -> torch.Tensor | None:
        return None if name is None else self.params[name]

    def _kernel(self, node: Node, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        plan, op, proto = self.plan, node.op, node.proto
        assert proto is not None
        if op == "Conv":
            w_name, b_name = plan.weight_and_bias(node)
            w, b = self._param(w_name), self._param(b_name)
            win = K.window(proto, (w.shape[2], w.shape[3]))
            y = F.conv2d(win.padded(xs[0]), w, b, stride=win.strides, dilation=win.dilations, groups=int(node.attr("group", 1)))
            return [y]
        if op in ("Gemm", "MatMul"):
            w_name, b_name = plan.weight_and_bias(node)
            w, b = self._param(w_name), self._param(b_name)
            if op == "Gemm":
                check_gemm(node)
                w = w.t() if node.attr("transB", 0) else w
            y = xs[0] @ w
            return [y + b if b is not None else y]
        if op == "Add":
            return [xs[0] + xs[1]]
        if op == "Mul":
            return [xs[0] * xs[1]]
        if op == "Concat":
            return [torch.cat(xs, dim=int(node.attr("axis")))]
        if op == "Relu":
            return [F.relu(xs[0])]
        if op == "Clip":
            lo, hi = static_input(plan, node, 1), static_input(plan, node, 2)
            return [xs[0].clamp(None if lo is None else float(lo), None if hi is None else float(hi))]
        if op == "LeakyRelu":
            return [F.leaky_relu(xs[0], float(DPU_LEAKY_SLOPE))]
        if op == "HardSigmoid":
            return [F.relu6(xs[0] + 3.0) * float(DPU_HSIGMOID_SCALE)]
        if op == "MaxPool":
            kernel = tuple(node.attr("kernel_shape"))
            win = K.window(proto, (kernel[0], kernel[1]))
            return [F.max_pool2d(win.padded(xs[0], float("-inf")), win.kernel, win.strides, dilation=win.dilations)]
        if op in ("AveragePool", "GlobalAveragePool", "ReduceMean"):
            return [self._average(node, xs[0])]
        return shape_op(plan, node, xs)

    def _average(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        """The float average times vai_q's "scale to DPU accuracy" (avg * count * factor)."""
        factor = pool_sum_factor(self.plan, node)
        assert factor is not None
        if node.op == "AveragePool":
            win = avgpool_window(node)
            count = win.kernel[0] * win.kernel[1]
            avg = F.avg_pool2d(win.padded(x), win.kernel, win.strides)
        elif node.op == "GlobalAveragePool":
            count = x.shape[2] * x.shape[3]
            avg = x.mean(dim=(2, 3), keepdim=True)
        else:
            axes = reduce_axes(self.plan, node, x.dim())
            count = int(np.prod([x.shape[a] for a in axes]))
            avg = x.mean(dim=axes, keepdim=bool(node.attr("keepdims", 1)))
        scale = factor * count
        return avg if scale == 1 else avg * float(scale)


def check_gemm(node: Node) -> None:
    if node.attr("transA", 0) or node.attr("alpha", 1.0) != 1.0 or node.attr("beta", 1.0) != 1.0:
        raise UserError(f"node {node.name}: Gemm with transA or alpha/beta != 1 is not a plain dense layer; re-export nn.Linear as is")


def shape_op(plan: GraphPlan, node: Node, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Shape-only ops, shared with the reference executor's semantics."""
    op, x = node.op, xs[0]
    if op in ("Identity", "Dropout"):
        return [x]
    if op == "Flatten":
        return [K.flatten(x, int(node.attr("axis", 1)))]
    if op == "Reshape":
        return [K.reshape(x, static_input(plan, node, 1), int(node.attr("allowzero", 0)))]
    if op == "Squeeze":
        return [K.squeeze(x, static_input(plan, node, 1))]
    if op == "Unsqueeze":
        return [K.unsqueeze(x, static_input(plan, node, 1))]
    if op == "Transpose":
        perm = node.attr("perm")
        return [x.permute(*perm) if perm is not None else x.permute(*reversed(range(x.dim())))]
    if op == "Split":
        return K.split(x, int(node.attr("axis", 0)), static_input(plan, node, 1), len(node.outputs))
    if op == "Slice":
        return [K.slice_(x, *(static_input(plan, node, i) for i in (1, 2, 3, 4)))]
    raise UserError(f"node {node.name} has op type {op}, which the DPU quantizer does not support")


def quantize_params(plan: GraphPlan, fixed: Mapping[str, int]) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """Weights and biases: position by diffs with std_round (calibrate_int ``mth = 3`` for params), capped
    at 12, unless fixed; returns positions and the fake-quantized float tensors."""
    positions: dict[str, int] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name in plan.params:
        value = torch.as_tensor(plan.initializers[name].astype(np.float32))
        pos = fixed.get(name)
        if pos is None:
            pos = fixpoint.capped(fixpoint.diffs_fix_pos(value, fixpoint.DIFFS_SCOPE))
        positions[name] = pos
        tensors[name] = fixpoint.fake_quantize(value, pos, fixpoint.PARAM_ROUNDING)
    return positions, tensors


def calibrate(
    plan: GraphPlan,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    fixed: Mapping[str, int] | None = None,
    method: str = "diffs",
    progress: Subtask = no_subtask,
) -> Calibration:
    """Run vai_q's calibration pass over ``feeds``; ``fixed`` maps quant keys or parameter names to positions.

    ``method`` "diffs" is vai_q's default search (5 candidates, least squared error); "maxmin" is its
    ``diffs_mode=maxmin`` (the largest non-overflowing position only).
    """
    if isinstance(feeds, Mapping):
        raise UserError("calib_feeds must be an iterable of feeds (dicts of input name -> array), not one feed; wrap it in a list")
    if method not in ("diffs", "maxmin"):
        raise UserError(f"unknown calibration method {method!r}; use 'diffs' (vai_q's default) or 'maxmin'")
    fixed = dict(fixed or {})
    with K.single_threaded():
        param_pos, qparams = quantize_params(plan, fixed)
    history: dict[str, list[int]] = {key: [] for key in plan.points if key not in fixed}
    counts: dict[str, Counter[int]] = {key: Counter() for key in history}
    current: dict[str, int] = {key: fixed[key] for key in plan.points if key in fixed}

    def hook(point, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each feed's tensor at a quant point, quantized at the mode of the positions found so far."""
        if point.key in fixed:
            pinned = fixed[point.key]
            return pool.map(lambda x: fixpoint.fake_quantize(x, pinned, fixpoint.ACTIVATION_ROUNDING), xs)
        scope = point.scope if method == "diffs" else 1
        searches = pool.map(lambda x: fixpoint.diffs_search(x, scope), xs)
        positions = []
        for search in searches:
            found = fixpoint.capped(search.position)
            history[point.key].append(found)
            counts[point.key][found] += 1
            positions.append(fixpoint.modal_of_counts(counts[point.key]))
        current[point.key] = positions[-1]
        return pool.map(lambda sxp: sxp[0].fake_quantize(sxp[1], sxp[2], fixpoint.ACTIVATION_ROUNDING),
                        zip(searches, xs, positions))

    batches = 0
    total = len(feeds) if hasattr(feeds, "__len__") else None
    with progress("calibrating", total) as advance, torch.no_grad(), core_pool(plan.largest_tensor()) as pool:
        runner = FloatPass(plan, qparams, pool)
        for chunk in chunks(feeds, CHUNK_FEEDS):
            runner.run(chunk, hook)
            batches += len(chunk)
            advance(len(chunk))
    if batches == 0:
        raise UserError("no calibration feeds; give at least one batch of inputs")
    return Calibration(dict(current), param_pos, history, batches)
