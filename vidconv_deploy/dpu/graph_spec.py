"""A float ONNX graph as a layer list that the Vitis AI image can rebuild into a PyTorch module.

vai_q_pytorch quantizes a ``torch.nn.Module``, and it runs only inside the Vitis AI 3.5 image,
whose PyTorch environment is Python 3.8 with torch 1.13.1 (Vitis-AI 3.5
``docker/conda/cpu_conda/vitis-ai-pytorch.yml``, ``docker/common/install_torch.sh``). This
package needs Python >= 3.11 and torch 2.13, so it cannot build our model there. Instead the host
writes the exact graphs that our own quantizer sees (the bundle's float early/later ONNX, BatchNorms
already folded) as JSON plus an ``.npz`` of weights, and ``quantize_vaiq.py`` rebuilds them with
plain ``torch.nn`` layers, one named module per ONNX node. vai_q then quantizes the same graph
as ours, and its tensor names carry our node names, so fix positions can be compared by name.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from vidconv_deploy.errors import UserError

SPEC_FORMAT = "vidconv-vaiq-graph/1"


def module_name(index: int, node_name: str) -> str:
    """A Python identifier for the node's module (vai_q's scope names show it as ``Conv2d[<name>]``)."""
    return f"n{index}_" + (re.sub(r"[^0-9A-Za-z]+", "_", node_name).strip("_") or "node")


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _symmetric(pads: list[int], node: onnx.NodeProto) -> list[int]:
    half = len(pads) // 2
    if list(pads[:half]) != list(pads[half:]):
        raise UserError(f"{node.name}: asymmetric pads {pads} have no torch.nn equivalent: export with symmetric padding")
    return [int(p) for p in pads[:half]]


class _Builder:
    """Walks the graph once, turning each node into a layer record and its weights into arrays."""

    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        self.name = name
        self.init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                       for n in model.graph.node if n.op_type == "Constant"}
        self.layers: list[dict[str, Any]] = []
        self.weights: dict[str, np.ndarray] = {}

    def const(self, tensor: str) -> np.ndarray | None:
        return self.init.get(tensor, self.consts.get(tensor))

    def add(self, node: onnx.NodeProto, op: str, inputs: list[str], output: str, attrs: dict[str, Any] | None = None,
            params: dict[str, tuple[str, np.ndarray]] | None = None, suffix: str = "") -> None:
        module = module_name(len(self.layers), node.name + suffix)
        for kind, (_, array) in (params or {}).items():
            self.weights[f"{module}.{kind}"] = np.asarray(array, dtype=np.float32)
        self.layers.append({
            "module": module, "op": op, "onnx_node": node.name, "inputs": inputs, "output": output,
            "attrs": attrs or {}, "params": {kind: source for kind, (source, _) in (params or {}).items()},
        })

    def node(self, node: onnx.NodeProto) -> None:
        op, a, ins = node.op_type, _attrs(node), list(node.input)
        if op == "Constant":
            return
        if op == "Conv":
            w = self.const(ins[1])
            params = {"weight": (ins[1], w)}
            if len(ins) > 2 and ins[2]:
                params["bias"] = (ins[2], self.const(ins[2]))
            k = len(w.shape) - 2
            self.add(node, "conv", [ins[0]], node.output[0], {
                "in_channels": int(w.shape[1] * a.get("group", 1)), "out_channels": int(w.shape[0]),
                "kernel_size": [int(s) for s in w.shape[2:]], "stride": a.get("strides", [1] * k),
                "padding": _symmetric(a.get("pads", [0] * 2 * k), node), "dilation": a.get("dilations", [1] * k),
                "groups": int(a.get("group", 1)), "bias": "bias" in params,
            }, params)
        elif op == "ConvTranspose":
            w = self.const(ins[1])
            params = {"weight": (ins[1], w)}
            if len(ins) > 2 and ins[2]:
                params["bias"] = (ins[2], self.const(ins[2]))
            k, g = len(w.shape) - 2, int(a.get("group", 1))
            self.add(node, "conv_transpose", [ins[0]], node.output[0], {
                "in_channels": int(w.shape[0]), "out_channels": int(w.shape[1] * g),
                "kernel_size": [int(s) for s in w.shape[2:]], "stride": a.get("strides", [1] * k),
                "padding": _symmetric(a.get("pads", [0] * 2 * k), node), "output_padding": a.get("output_padding", [0] * k),
                "dilation": a.get("dilations", [1] * k), "groups": g, "bias": "bias" in params,
            }, params)
        elif op == "Relu":
            self.add(node, "relu", ins[:1], node.output[0])
        elif op == "Clip":
            low, high = (self.const(x) if x else None for x in (ins + ["", ""])[1:3])
            if low is None or high is None or float(low) != 0.0 or float(high) != 6.0:
                raise UserError(f"{node.name}: only Clip(0, 6) (ReLU6) has a DPU kernel: replace this Clip")
            self.add(node, "relu6", ins[:1], node.output[0])
        elif op in ("Add", "Mul"):
            consts = [self.const(x) for x in ins]
            tensors = [x for x, c in zip(ins, consts) if c is None]
            params = {"const": (x, c) for x, c in zip(ins, consts) if c is not None}
            self.add(node, op.lower(), tensors, node.output[0], {"const": bool(params)}, params)
        elif op == "Concat":
            self.add(node, "concat", ins, node.output[0], {"axis": int(a["axis"])})
        elif op == "Split":
            axis = int(a.get("axis", 0))
            sizes = a.get("split") or (self.const(ins[1]).tolist() if len(ins) > 1 and ins[1] else None)
            if sizes is None:
                raise UserError(f"{node.name}: a Split without sizes cannot be rebuilt: export with explicit split sizes")
            start = 0
            for i, (out, size) in enumerate(zip(node.output, sizes)):
                self.add(node, "slice", ins[:1], out, {"axis": axis, "start": start, "end": start + int(size)}, suffix=f"_{i}")
                start += int(size)
        elif op == "Slice":
            starts, ends = self.const(ins[1]), self.const(ins[2])
            axes = self.const(ins[3]) if len(ins) > 3 and ins[3] else np.arange(len(starts))
            steps = self.const(ins[4]) if len(ins) > 4 and ins[4] else np.ones(len(starts))
            if len(starts) != 1 or int(steps[0]) != 1:
                raise UserError(f"{node.name}: only single-axis, step-1 Slice can be rebuilt")
            self.add(node, "slice", ins[:1], node.output[0],
                     {"axis": int(axes[0]), "start": int(starts[0]), "end": int(min(ends[0], 2**31 - 1))})
        elif op == "GlobalAveragePool":
            self.add(node, "global_avg_pool", ins[:1], node.output[0], {"keepdim": True})
        elif op == "ReduceMean":
            axes = a.get("axes") or (self.const(ins[1]).tolist() if len(ins) > 1 and ins[1] else None)
            if sorted(int(x) for x in (axes or [])) != [2, 3]:
                raise UserError(f"{node.name}: only ReduceMean over H and W (a global average pool) has a DPU kernel")
            self.add(node, "global_avg_pool", ins[:1], node.output[0], {"keepdim": bool(a.get("keepdims", 1))})
        elif op in ("AveragePool", "MaxPool"):
            k = a["kernel_shape"]
            self.add(node, "avg_pool" if op == "AveragePool" else "max_pool", ins[:1], node.output[0], {
                "kernel_size": k, "stride": a.get("strides", [1] * len(k)),
                "padding": _symmetric(a.get("pads", [0] * 2 * len(k)), node), "ceil_mode": bool(a.get("ceil_mode", 0)),
                "count_include_pad": bool(a.get("count_include_pad", 0)),
            })
        elif op == "Flatten":
            self.add(node, "flatten", ins[:1], node.output[0], {"start_dim": int(a.get("axis", 1))})
        elif op == "Gemm":
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise UserError(f"{node.name}: only Gemm with transA=0, alpha=beta=1 (a Linear layer) can be rebuilt")
            b = self.const(ins[1])
            weight = b if a.get("transB", 0) else b.T
            params = {"weight": (ins[1], weight)}
            if len(ins) > 2 and ins[2]:
                params["bias"] = (ins[2], self.const(ins[2]))
            self.add(node, "linear", ins[:1], node.output[0],
                     {"in_features": int(weight.shape[1]), "out_features": int(weight.shape[0]), "bias": "bias" in params}, params)
        elif op == "MatMul" and self.const(ins[1]) is not None and self.const(ins[1]).ndim == 2:
            weight = self.const(ins[1]).T
            self.add(node, "linear", ins[:1], node.output[0],
                     {"in_features": int(weight.shape[1]), "out_features": int(weight.shape[0]), "bias": False},
                     {"weight": (ins[1], weight)})
        elif op == "BatchNormalization":
            names = ("weight", "bias", "running_mean", "running_var")
            params = {kind: (src, self.const(src)) for kind, src in zip(names, ins[1:5])}
            self.add(node, "batch_norm", ins[:1], node.output[0],
                     {"num_features": int(params["weight"][1].shape[0]), "eps": float(a.get("epsilon", 1e-5))}, params)
        elif op in ("Identity", "Dropout"):
            self.add(node, "identity", ins[:1], node.output[0])
        else:
            raise UserError(
                f"the {self.name} graph has {op} ({node.name}), which has no DPU kernel and no vai_q_pytorch rebuild: "
                f"a DPU deploy graph holds DPU ops only (check it with vidconv-check --target dpu-kv260)"
            )


def graph_spec(model: onnx.ModelProto, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The layer list (JSON-ready) and weights (keyed by the rebuilt module's state-dict names) of ``model``."""
    builder = _Builder(model, name)
    for node in model.graph.node:
        builder.node(node)
    initial = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initial]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UserError(f"the {name} graph has {len(inputs)} inputs and {len(model.graph.output)} outputs: "
                        f"the streaming graphs have one of each")
    shape = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    spec = {
        "format": SPEC_FORMAT,
        "name": name,
        "input": {"name": inputs[0].name, "shape": shape},
        "output": model.graph.output[0].name,
        "layers": builder.layers,
    }
    return spec, builder.weights
