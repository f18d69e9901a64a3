"""Layer-wise views of a quantized :class:`GraphPlan`, shared by bias correction and fast finetune.

Both recoveries work on one conv-like layer at a time, as vai_q_pytorch's do (VAI = Xilinx/Vitis-AI
src/vai_quantizer/vai_q_pytorch: the modules of ``VAI/pytorch_binding/pytorch_nndct/nn/modules/conv.py``
and ``linear.py`` correct their own bias; ``VAI/pytorch_binding/pytorch_nndct/qproc/adaquant.py`` tunes one
module at a time). A layer reads its input as the *quantized* graph computes it (ONNX Runtime on the QDQ
graph of the current parameters, so the layers before it count with their recovered parameters) and is
computed here in torch with its parameters fake-quantized at their fix positions, which stay as
calibration and :func:`~vidconv_deploy.quant.qdq.organize_positions` set them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.fixpoint import arithmetic as fixpoint
from vidconv_deploy.fixpoint import kernels as K
from vidconv_deploy.onnx_session import ort_session
from vidconv_deploy.quant.graph import CONV_OPS, INPUT_OP, GraphPlan, Node, ParamPoint

#: The QDQ graph of the plan's current float parameters at the current positions (``build_qdq``).
QdqBuilder = Callable[[], onnx.ModelProto]
Feeds = Sequence[Mapping[str, np.ndarray]]
#: Activations a conv's output may pass through before its quantization, which fast finetune trains
#: through (adaquant.py ``layer_act_pair``: relu and relu6; hard-sigmoid is a quantized node of its own here).
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip"})


@dataclass(frozen=True)
class CalibratedPlan:
    """What a recovery works on: the plan (whose float parameters it tunes in place), the fix positions (which
    it keeps), the calibration feeds, and how to build the QDQ graph of the current parameters."""

    plan: GraphPlan
    act_positions: Mapping[str, int]
    param_positions: dict[str, int]
    feeds: Feeds
    build: QdqBuilder


@dataclass(frozen=True)
class Layer:
    """A conv-like node with its weight and bias initializers and the activation fused after it."""

    node: Node
    weight: str
    bias: str | None
    act: Node | None
    qdq_input: str  # the tensor the layer reads, as the QDQ graph names it

    @property
    def last(self) -> Node:
        """The node whose output the layer ends at (the activation when there is one)."""
        return self.act or self.node

    @property
    def channel_dim(self) -> int:
        return 1 if self.node.op == "Conv" else -1


def conv_layers(plan: GraphPlan) -> list[Layer]:
    """Every Conv/Gemm/MatMul of the plan in graph order."""
    layers = []
    for node in plan.nodes:
        if node.op not in CONV_OPS:
            continue
        weight, bias = plan.weight_and_bias(node)
        uses = plan.children(node)
        act = uses[0] if len(uses) == 1 and uses[0] is not None and uses[0].op in FUSED_ACTIVATIONS else None
        source = node.inputs[0]
        qdq_input = f"{source}_dequantized" if plan.producer[source].op == INPUT_OP else source  # build_qdq's names
        layers.append(Layer(node, weight, bias, act, qdq_input))
    return layers


def own_parameters(calibrated: CalibratedPlan) -> dict[str, str]:
    """Give each conv-like layer its own weight and bias where it shares an initializer with an earlier layer, so
    that tuning one layer leaves the others alone; returns each copy's name -> the shared name.

    onnxsim merges equal initializers (the zero biases of folded BatchNorms in an untrained model, say), while on
    the DPU every conv has its own. The first layer keeps the shared name (it owns the parameter's quant entry),
    each later one reads a copy named ``<node>/weight`` or ``<node>/bias`` at the shared tensor's fix position.
    """
    plan, seen, copies = calibrated.plan, set(), {}
    for layer in conv_layers(plan):
        proto = layer.node.proto
        assert proto is not None
        for index, name in ((1, layer.weight), (2, layer.bias)):
            if name is None:
                continue
            if name not in seen:
                seen.add(name)
                continue
            role = "weight" if index == 1 else "bias"
            copy = f"{layer.node.name}/{role}"
            proto.input[index] = copy
            plan.initializers[copy] = plan.initializers[name].copy()
            plan.model.graph.initializer.append(numpy_helper.from_array(plan.initializers[copy], copy))
            plan.params[copy] = ParamPoint(layer.node, role)
            calibrated.param_positions[copy] = calibrated.param_positions[name]
            copies[copy] = name
    return copies


def forward(layer: Layer, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The layer's node (not its activation) on ``x`` with weight ``w`` and bias ``b``, as ONNX defines it."""
    node = layer.node
    proto = node.proto
    assert proto is not None
    if node.op == "Conv":
        win = K.window(proto, (w.shape[2], w.shape[3]))
        return F.conv2d(win.padded(x), w, b, stride=win.strides, dilation=win.dilations, groups=int(node.attr("group", 1)))
    if node.op == "Gemm" and node.attr("transB", 0):
        w = w.t()
    y = x @ w
    return y if b is None else y + b


def activation(plan: GraphPlan, layer: Layer, y: torch.Tensor) -> torch.Tensor:
    """The fused activation after the layer (identity without one)."""
    act = layer.act
    if act is None:
        return y
    if act.op == "Relu":
        return F.relu(y)
    assert act.proto is not None
    lo, hi = (K.constant_input(act.proto, i, plan.initializers, act.name) for i in (1, 2))
    return y.clamp(None if lo is None else float(lo), None if hi is None else float(hi))


def straight_through(x: torch.Tensor, fix_pos: int, mode: str) -> torch.Tensor:
    """``x`` fake-quantized at ``fix_pos`` forward, the identity backward (a straight-through estimator)."""
    return x + (fixpoint.fake_quantize(x.detach(), fix_pos, mode) - x).detach()


def parameter(plan: GraphPlan, name: str) -> torch.Tensor:
    return torch.as_tensor(plan.initializers[name].astype(np.float32))


def reduce_dims(y: torch.Tensor, channel_dim: int) -> list[int]:
    """Every dimension of ``y`` except its channel dimension (what a per-channel mean averages over)."""
    return [d for d in range(y.dim()) if d != channel_dim % y.dim()]


class TensorRun:
    """ONNX Runtime on ``model`` with ``names`` (besides its outputs) readable, one feed at a time."""

    def __init__(self, model: onnx.ModelProto, names: Sequence[str]) -> None:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        present = {o.name for o in model.graph.output}
        model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in present)
        self.session = ort_session(model)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, feeds: Feeds, names: Sequence[str]) -> list[list[np.ndarray]]:
        """Per feed, the arrays of ``names``."""
        return [self.session.run(list(names), {n: np.asarray(feed[n], dtype=np.float32) for n in self.inputs}) for feed in feeds]


def qdq_inputs(calibrated: CalibratedPlan, layer: Layer) -> list[torch.Tensor]:
    """The layer's input in the QDQ graph of the current parameters, per calibration feed."""
    run = TensorRun(calibrated.build(), [layer.qdq_input])
    return [torch.from_numpy(out[0]) for out in run.run(calibrated.feeds, [layer.qdq_input])]
