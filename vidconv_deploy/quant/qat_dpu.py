"""Quantization-aware training for the DPU targets, in exactly the arithmetic the DPU export quantizes with.

The QAT model is not a PyTorch model with fake quantizers sprinkled over its modules: it *is* the two
streaming graphs the DPU export quantizes (early net per frame, later net per collage), executed in torch
by :class:`~vidconv_deploy.quant.calibrate.FloatPass`'s kernels, with every weight and bias fake-quantized at
its fix position (std_round, as ``build_qdq`` writes the int8 initializers), every quantized activation at
its position (half up, the DPU's rounding), the DPU approximations of ``calibrate`` inside the graph, and
saturation to int8 everywhere. The positions come from :func:`~vidconv_deploy.quant.qdq.quantize_onnx` on
the starting weights (calibration, then vai_q's shift rules) and stay frozen while the weights train through
straight-through estimators (the gradient of rounding taken as the identity, as fast finetune does). So the
trained model, exported with those positions pinned, is the integer graph the reference runs, bit for bit.

How trained graph weights get back into a checkpoint: the student is first put in *identity form*
(:func:`identity_form`): every BatchNorm, layer scale and temporal scale is folded into its conv and left as
an exact identity (BatchNorm weight ``sqrt(var + eps)``, bias 0, mean 0; scales 1), so the DPU passes fold
multiplications by exactly 1 and additions of exactly 0, and each graph weight is a plain copy of one torch
parameter (or a slice: split temporal convs). Which one is read off an export of the model whose free
parameters hold unique tag values (:func:`_bindings`); the QAT graph gathers its weights from the torch
parameters through that map, so training moves the VidConv's own parameters, and ``vidconv-export
--checkpoint`` of the saved file rebuilds the same float graphs bit for bit.

The positions travel in the safetensors header (:data:`METADATA_KEY`), keyed by node name (activations) and
by owning node and role (weights, biases), which do not depend on how onnxsim names initializers; the DPU
quantize step pins every one of them (:func:`pinned_fix_points`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vidconv_deploy.atomic import atomic_path
from vidconv_deploy.checkpoints.loader import CONFIG_KEY
from vidconv_deploy.errors import UserError
from vidconv_deploy.export.deploy_model import DeployViC, to_deploy
from vidconv_deploy.export.onnx_export import STREAMING_FORBIDDEN, MethodModule, export_graph
from vidconv_deploy.export.passes import Pass, apply_passes
from vidconv_deploy.fixpoint import arithmetic as fixpoint
from vidconv_deploy.models.collage import frames_to_collage
from vidconv_deploy.models.layers import ConvNeXtBlock, TemporalBlock
from vidconv_deploy.models.vidconv import VidConv
from vidconv_deploy.onnx_session import ort_session
from vidconv_deploy.parallel import CorePool
from vidconv_deploy.quant.calibrate import FloatPass, avgpool_window, pool_sum_factor, reduce_axes
from vidconv_deploy.quant.graph import CONST_OP, CONV_OPS, INPUT_OP, GraphPlan, analyse
from vidconv_deploy.quant.layerwise import straight_through
from vidconv_deploy.quant.qdq import quantize_onnx

#: The safetensors header entry holding a DPU QAT checkpoint's fix positions (JSON).
METADATA_KEY = "vidconv_deploy.qat_dpu"
#: The streaming graphs, in the order a clip runs them, with their input and output names (as the export names them).
GRAPH_IO = {"early": ("frame", "features"), "later": ("collage", "logits")}
#: Tag values are the float32 numbers with bit patterns TAG_BASE + i: all normal, finite and distinct.
TAG_BASE = 0x3F800000  # 1.0
TAG_LIMIT = 0x7F000000 - TAG_BASE


# ---- identity form ---------------------------------------------------------------------------------------


def _identity_batchnorm(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Make ``bn`` an exact identity in eval mode; return the affine map (scale, shift) it computed before."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    bn.weight.copy_(torch.sqrt(bn.running_var + bn.eps))  # the passes divide by the same expression: exactly 1
    bn.bias.zero_()
    bn.running_mean.zero_()
    return scale, shift


def _fold_before(scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """``layer(x * scale + shift)`` as ``layer(x)``: input channels are dim 1 of a conv's or a Linear's weight."""
    view = (1, -1) + (1,) * (weight.dim() - 2)
    bias.add_((weight * shift.view(view)).sum(dim=tuple(range(1, weight.dim()))))
    weight.mul_(scale.view(view))


def _fold_after(scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``layer(x) * scale`` as ``layer(x)`` (output channels are dim 0)."""
    weight.mul_(scale.view((-1,) + (1,) * (weight.dim() - 1)))
    if bias is not None:
        bias.mul_(scale)


@torch.no_grad()
def identity_form(model: VidConv) -> VidConv:
    """A copy of a BatchNorm variant computing the same function (up to float rounding) with every BatchNorm,
    layer scale and temporal scale folded into its conv and left an exact identity (see the module docstring)."""
    if model.cfg.norm != "batch":
        raise UserError(f"DPU QAT needs a BatchNorm variant (e.g. {model.cfg.arch}-dpu from vidconv-finetune "
                        f"--student): {model.cfg.arch} has LayerNorms, which the DPU does not run")
    model = copy.deepcopy(model).eval()
    bb = model.backbone
    stem_conv, stem_bn = bb.downsample_layers[0]
    scale, shift = _identity_batchnorm(stem_bn)
    _fold_after(scale, stem_conv.weight, stem_conv.bias)
    stem_conv.bias.add_(shift)
    for down in list(bb.downsample_layers)[1:]:
        bn, conv = down
        _fold_before(*_identity_batchnorm(bn), conv.weight, conv.bias)
    for block in (b for stage in bb.stages for b in stage):
        assert isinstance(block, ConvNeXtBlock)
        _fold_before(*_identity_batchnorm(block.norm), block.pwconv1.weight, block.pwconv1.bias)
        _fold_after(block.gamma, block.pwconv2.weight, block.pwconv2.bias)
        block.gamma.fill_(1.0)
        if isinstance(block, TemporalBlock):
            _fold_after(block.gamma_tem, block.dwconv_tem.weight, block.dwconv_tem.bias)
            block.gamma_tem.fill_(1.0)
    if model.neck is not None:  # its conv has no bias: the BatchNorm's bias carries the shift
        scale, shift = _identity_batchnorm(model.neck.bn)
        _fold_after(scale, model.neck.conv.weight, None)
        model.neck.bn.bias.copy_(shift)
    return model


def free_parameters(model: VidConv) -> dict[str, nn.Parameter]:
    """The parameters QAT trains: every conv and Linear weight and bias, and the neck BatchNorm's bias (its
    conv has none); the identity BatchNorms' and scales' stay as they are."""
    free = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            free.update({f"{name}.{k}": p for k, p in module.named_parameters(recurse=False)})
    if model.neck is not None:
        free["neck.bn.bias"] = model.neck.bn.bias
    return free


# ---- the graphs and where their weights come from --------------------------------------------------------


def streaming_graphs(model: VidConv, passes: Sequence[Pass]) -> dict[str, onnx.ModelProto]:
    """The float early and later graphs the DPU export writes (``step_export_streaming``'s calls)."""
    deploy: DeployViC = apply_passes(to_deploy(model.eval()), passes)
    early = export_graph(MethodModule(deploy, deploy.early), torch.zeros(deploy.frame_shape()), *GRAPH_IO["early"],
                         STREAMING_FORBIDDEN)
    later = export_graph(MethodModule(deploy, deploy.later), torch.zeros(deploy.collage_shape()), *GRAPH_IO["later"],
                         STREAMING_FORBIDDEN)
    return {"early": early.model, "later": later.model}


@torch.no_grad()
def _bindings(model: VidConv, passes: Sequence[Pass]) -> tuple[dict[str, GraphPlan], dict[str, dict[str, torch.Tensor]]]:
    """The graphs of ``model`` (identity form) exported with every free parameter element set to a distinct tag
    value, and per graph, each weight/bias initializer as indices into the concatenated free parameters."""
    tagged = copy.deepcopy(model)
    free = free_parameters(tagged)
    total = sum(p.numel() for p in free.values())
    if total > TAG_LIMIT:
        raise UserError(f"{total} parameters are more than DPU QAT can tag ({TAG_LIMIT})")
    bits = torch.arange(TAG_BASE, TAG_BASE + total, dtype=torch.int32).view(torch.float32)
    start = 0
    for p in free.values():
        p.copy_(bits[start:start + p.numel()].view_as(p))
        start += p.numel()
    plans = {g: analyse(m) for g, m in streaming_graphs(tagged, passes).items()}
    index: dict[str, dict[str, torch.Tensor]] = {}
    for graph, plan in plans.items():
        index[graph] = {}
        for name in plan.params:
            found = torch.from_numpy(plan.initializers[name].astype(np.float32)).view(torch.int32).to(torch.int64).reshape(-1) - TAG_BASE
            if bool(((found < 0) | (found >= total)).any()):
                raise RuntimeError(f"{graph} graph: initializer {name} is not a copy of the model's parameters; the "
                                   f"identity form no longer matches the DPU passes")
            index[graph][name] = found
    return plans, index


@dataclass(frozen=True)
class GraphPositions:
    """One graph's fix positions: activations by quant key (node name, or the input's name), weights and
    biases by the name of the node that owns them."""

    activations: dict[str, int]
    weights: dict[str, int]
    biases: dict[str, int]

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {"activations": self.activations, "weights": self.weights, "biases": self.biases}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, int]]) -> GraphPositions:
        return cls(*(dict(data[k]) for k in ("activations", "weights", "biases")))

    @classmethod
    def from_quant_info(cls, plan: GraphPlan, info: Mapping[str, Any]) -> GraphPositions:
        """The positions a :func:`quantize_onnx` run of ``plan``'s graph settled on (its quant_info)."""
        params = {name: int(pos) for name, [[_, pos]] in info["param"].items()}
        weights, biases = {}, {}
        for node, weight, bias in conv_parameters(plan):
            weights[node] = params[weight]
            if bias is not None:
                biases[node] = params[bias]
        return cls({key: int(pos) for key, [[_, pos]] in info["output"].items()}, weights, biases)

    def param_position(self, plan: GraphPlan, name: str) -> int:
        point = plan.params[name]
        return (self.weights if point.role == "weight" else self.biases)[point.owner.name]


def conv_parameters(plan: GraphPlan) -> list[tuple[str, str, str | None]]:
    """Every conv-like node of ``plan`` with the names of its weight and bias initializers (a name can recur:
    onnxsim merges equal initializers)."""
    return [(node.name, *plan.weight_and_bias(node)) for node in plan.nodes if node.op in CONV_OPS]


def pinned_fix_points(plan: GraphPlan, positions: GraphPositions) -> dict[str, int]:
    """``fixed_fix_points`` for :func:`quantize_onnx` that pin every tensor of ``plan`` to ``positions``;
    UserError when the graph is not the one QAT trained (another model or DPU target)."""
    convs = conv_parameters(plan)
    missing = sorted(set(plan.points) ^ set(positions.activations))
    missing += sorted({node for node, _, _ in convs} ^ set(positions.weights))
    if missing:
        raise UserError(f"the checkpoint's DPU QAT positions do not fit this graph (e.g. node {missing[0]}): export it "
                        f"to the DPU target it was trained for, with the same model flags")
    fixed = {plan.points[key].tensor: pos for key, pos in positions.activations.items()}
    for node, weight, bias in convs:
        for name, pos in ((weight, positions.weights[node]), (bias, positions.biases.get(node))):
            if name is not None and fixed.setdefault(name, pos) != pos:
                raise UserError(f"initializer {name} is shared by convs that DPU QAT quantized at different positions; "
                                f"retrain from a model whose convs do not share weights")
    return fixed


# ---- the QAT forward -------------------------------------------------------------------------------------


class _GraphPass(FloatPass):
    """One streaming graph in torch on a batch, differentiable, fake-quantized at fixed positions.

    FloatPass's op kernels, with one change: an average is computed as the DPU computes it and as the QDQ
    graph writes it (window *sum* times the dyadic factor, exact on int8 values), not as the float average
    rescaled (what calibration does), which can differ in the last float bit and so flip a rounding.
    """

    def __init__(self, plan: GraphPlan, positions: GraphPositions) -> None:
        super().__init__(plan, {}, CorePool(1))
        self.positions = positions
        self.output = plan.model.graph.output[0].name

    def run_batch(self, x: torch.Tensor, params: Mapping[str, torch.Tensor], rounding: str) -> torch.Tensor:
        """The graph's output on the batch ``x``, with float weights ``params`` quantized here."""
        plan = self.plan
        self.params = {name: straight_through(w, self.positions.param_position(plan, name), fixpoint.PARAM_ROUNDING)
                       for name, w in params.items()}
        values: dict[str, torch.Tensor] = {}
        for index, node in enumerate(plan.nodes):
            if node.op == INPUT_OP:
                outs = [x]
            elif node.op == CONST_OP:
                outs = [torch.as_tensor(plan.initializers[node.name].astype(np.float32), device=x.device)]
            else:
                outs = self._kernel(node, [values[t] for t in node.inputs])
            values.update(zip(node.outputs, outs, strict=True))
            point = plan.points.get(node.name)
            if point is not None:
                values[point.tensor] = straight_through(values[point.tensor], self.positions.activations[point.key], rounding)
            for tensor in set(node.inputs):
                if self.last_use[tensor] == index:
                    del values[tensor]
        return values[self.output]

    def _average(self, node, x: torch.Tensor) -> torch.Tensor:
        factor = pool_sum_factor(self.plan, node)
        assert factor is not None
        if node.op == "AveragePool":
            win = avgpool_window(node)
            total = F.avg_pool2d(win.padded(x), win.kernel, win.strides, divisor_override=1)
        elif node.op == "GlobalAveragePool":
            total = x.sum(dim=(2, 3), keepdim=True)
        else:
            total = x.sum(dim=reduce_axes(self.plan, node, x.dim()), keepdim=bool(node.attr("keepdims", 1)))
        return total * float(factor)


class DpuQatModel(nn.Module):
    """A VidConv in identity form trained through its DPU streaming graphs at frozen fix positions.

    ``forward(clips)`` takes ``(B, L, 3, H, W)`` and returns the later graph's dequantized logits; ``rounding``
    is the activations' rounding: "half_up" (the DPU's, vai_q's method 2) or "half_even" (ONNX QuantizeLinear's,
    to compare with ONNX Runtime). The parameters are the VidConv's (``self.model``), so its state dict is a
    checkpoint of the architecture itself.
    """

    def __init__(self, model: VidConv, passes: Sequence[Pass], positions: Mapping[str, GraphPositions]) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg
        self.positions = dict(positions)
        for p in model.parameters():
            p.requires_grad_(False)
        self.free = free_parameters(model)
        for p in self.free.values():
            p.requires_grad_(True)
        plans, index = _bindings(model, passes)
        self.index: dict[str, dict[str, str]] = {}  # graph -> initializer -> buffer (buffers follow .to(device))
        for graph, names in index.items():
            self.index[graph] = {}
            for i, (name, idx) in enumerate(names.items()):
                self.register_buffer(f"index_{graph}_{i}", idx, persistent=False)
                self.index[graph][name] = f"index_{graph}_{i}"
        self.graphs = {g: _GraphPass(plan, self.positions[g]) for g, plan in plans.items()}
        for graph, plan in plans.items():
            pinned_fix_points(plan, self.positions[graph])  # refuses positions of another graph
        self.rounding = fixpoint.ACTIVATION_ROUNDING

    def graph_weights(self, graph: str) -> dict[str, torch.Tensor]:
        """The graph's float weight and bias initializers, gathered from the free parameters."""
        flat = torch.cat([p.reshape(-1) for p in self.free.values()])
        shapes = self.graphs[graph].plan.initializers
        return {name: flat[getattr(self, buffer)].reshape(shapes[name].shape) for name, buffer in self.index[graph].items()}

    def early(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` frames -> their int8 feature maps, dequantized."""
        return self.graphs["early"].run_batch(frames, self.graph_weights("early"), self.rounding)

    def later(self, collages: torch.Tensor) -> torch.Tensor:
        """``(B, C, rows*h, cols*w)`` collages -> logits."""
        return self.graphs["later"].run_batch(collages, self.graph_weights("later"), self.rounding)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        frames, _ = self.model.split_segments(clips)
        if frames.shape[0] != clips.shape[0] * self.cfg.frames:
            raise UserError(f"DPU QAT takes one segment of {self.cfg.frames} frames per clip, not {clips.shape[1]}")
        return self.later(frames_to_collage(self.early(frames), self.cfg.grid))


def calibrated_positions(model: VidConv, passes: Sequence[Pass], clips: Sequence[np.ndarray]) -> dict[str, GraphPositions]:
    """Fix positions of both graphs as the DPU quantize step sets them (``step_quantize``): the early graph
    calibrated on every frame, the later graph on each clip's collage of float early outputs, its input
    pinned to the early output's position."""
    graphs = streaming_graphs(model, passes)
    (frame_in, frame_out), (collage_in, _) = GRAPH_IO["early"], GRAPH_IO["later"]
    session = ort_session(graphs["early"])
    frames, collages = [], []
    for clip in clips:
        feeds = [{frame_in: np.ascontiguousarray(f[None], dtype=np.float32)} for f in np.asarray(clip)]
        outs = torch.from_numpy(np.concatenate([session.run([frame_out], feed)[0] for feed in feeds]))
        frames += feeds
        collages.append({collage_in: frames_to_collage(outs, model.cfg.grid).numpy()})
    plans = {g: analyse(m) for g, m in graphs.items()}
    early = GraphPositions.from_quant_info(plans["early"], quantize_onnx(graphs["early"], frames).info)
    out_key = next(p.key for p in plans["early"].points.values() if p.tensor == frame_out)
    later_q = quantize_onnx(graphs["later"], collages, fixed_fix_points={collage_in: early.activations[out_key]})
    return {"early": early, "later": GraphPositions.from_quant_info(plans["later"], later_q.info)}


# ---- checkpoints -----------------------------------------------------------------------------------------


def save_qat_checkpoint(qat: DpuQatModel, path: str | os.PathLike[str], target: str) -> None:
    """The VidConv (identity form) as our safetensors, its config and the fix positions in the header."""
    model = qat.model
    record = {"target": target, "graphs": {g: p.to_dict() for g, p in qat.positions.items()}}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={CONFIG_KEY: json.dumps(model.cfg.to_dict()), "format": "vidconv-deploy",
                                               METADATA_KEY: json.dumps(record, sort_keys=True)})


def read_qat_positions(path: str | os.PathLike[str] | None) -> tuple[str, dict[str, GraphPositions]] | None:
    """The DPU target and per-graph positions a DPU QAT checkpoint carries; None for any other file."""
    if path is None or Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(METADATA_KEY)
    except Exception:  # not a safetensors file after all: the loader reports that
        return None
    if text is None:
        return None
    record = json.loads(text)
    return record["target"], {g: GraphPositions.from_dict(p) for g, p in record["graphs"].items()}


def checkpoint_fix_points(checkpoint: str | os.PathLike[str] | None, graphs: Mapping[str, onnx.ModelProto],
                          recovery: str) -> tuple[dict[str, dict[str, int]], dict[str, Any]] | None:
    """For the DPU quantize step: ``fixed_fix_points`` per streaming graph pinning every tensor where a DPU QAT
    checkpoint says, and what quant_info records about it; None when ``checkpoint`` is not one."""
    found = read_qat_positions(checkpoint)
    if found is None:
        return None
    if recovery != "none":
        raise UserError(f"{checkpoint} is a DPU QAT checkpoint, exported at its trained fix positions: drop "
                        f"--quant-recovery {recovery} (recovery would change the weights QAT trained)")
    trained_for, positions = found
    fixed = {g: pinned_fix_points(analyse(graphs[g]), positions[g]) for g in GRAPH_IO}
    return fixed, {"checkpoint": str(checkpoint), "trained_for": trained_for,
                   "positions": "every tensor pinned to the checkpoint's QAT positions"}
