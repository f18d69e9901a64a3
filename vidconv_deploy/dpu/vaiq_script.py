"""Quantize one streaming graph with vai_q_pytorch and export its xmodel, inside the Vitis AI 3.5 image.

vidconv-deploy copies this file into every DPU bundle as ``compile/quantize_vaiq.py``;
``compile/compile.sh`` runs it once per graph (early, later) with the image's ``vitis-ai-pytorch``
Python (3.8, torch 1.13.1). So it stays Python 3.8 code that needs only numpy and torch (and
pytorch_nndct in :func:`quantize`), and it never imports vidconv_deploy, which needs Python >= 3.11.

It rebuilds the graph from ``model/<graph>.json`` + ``.npz`` (written by
``vidconv_deploy.dpu.graph_spec`` from the bundle's float ONNX): one ``torch.nn`` module per ONNX
node, named after the node. Then vai_q_pytorch's documented flow (Vitis-AI 3.5
``src/vai_quantizer/vai_q_pytorch/README.md`` and ``example/resnet18_quant.py``):
``torch_quantizer("calib", ...)`` with weight equalization and bias correction off (the bundle's
INT8 has neither), one forward pass per calibration sample, ``export_quant_config()``;
``torch_quantizer("test", ...)``, one forward pass with batch 1, ``export_xmodel(deploy_check=False)``.
The output dir gets vai_q's ``quant_info.json`` and ``<Graph>_int.xmodel`` plus ``names.json``:
vai_q's tensor names mapped to the names in our quant_info.json, for comparing fix positions.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn


class Binary(nn.Module):
    """ONNX Add/Mul of two tensors, or of a tensor and a constant (kept as a buffer)."""

    def __init__(self, op: str, const: torch.Tensor | None) -> None:
        super().__init__()
        self.op = op
        if const is not None:
            self.register_buffer("const", const)
        else:
            self.const = None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        other = self.const if y is None else y
        return x + other if self.op == "add" else x * other


class Concat(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)


class Slice(nn.Module):
    """One output of an ONNX Split/Slice: ``x[..., start:end, ...]`` along ``axis`` (aten::slice)."""

    def __init__(self, axis: int, start: int, end: int) -> None:
        super().__init__()
        self.index = (slice(None),) * axis + (slice(start, end),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.index]


def _pair(value: list) -> tuple:
    return tuple(int(v) for v in value)


def layer_module(layer: dict, weights: dict) -> nn.Module:
    """The ``torch.nn`` module for one layer record of the graph spec."""
    op, a = layer["op"], layer["attrs"]
    if op in ("conv", "conv_transpose"):
        if len(a["kernel_size"]) != 2:
            raise ValueError("%s: only 2-D convolutions are rebuilt" % layer["onnx_node"])
        kw = dict(kernel_size=_pair(a["kernel_size"]), stride=_pair(a["stride"]), padding=_pair(a["padding"]),
                  dilation=_pair(a["dilation"]), groups=a["groups"], bias=a["bias"])
        if op == "conv":
            return nn.Conv2d(a["in_channels"], a["out_channels"], **kw)
        return nn.ConvTranspose2d(a["in_channels"], a["out_channels"], output_padding=_pair(a["output_padding"]), **kw)
    if op == "relu":
        return nn.ReLU()
    if op == "relu6":
        return nn.ReLU6()
    if op in ("add", "mul"):
        const = weights.get(layer["module"] + ".const")
        return Binary(op, None if const is None else torch.from_numpy(const))
    if op == "concat":
        return Concat(a["axis"])
    if op == "slice":
        return Slice(a["axis"], a["start"], a["end"])
    if op == "global_avg_pool":
        pool = nn.AdaptiveAvgPool2d(1)
        return pool if a["keepdim"] else nn.Sequential(pool, nn.Flatten(1))
    if op == "avg_pool":
        return nn.AvgPool2d(_pair(a["kernel_size"]), _pair(a["stride"]), _pair(a["padding"]), ceil_mode=a["ceil_mode"],
                            count_include_pad=a["count_include_pad"])
    if op == "max_pool":
        return nn.MaxPool2d(_pair(a["kernel_size"]), _pair(a["stride"]), _pair(a["padding"]), ceil_mode=a["ceil_mode"])
    if op == "flatten":
        return nn.Flatten(a["start_dim"])
    if op == "linear":
        return nn.Linear(a["in_features"], a["out_features"], bias=a["bias"])
    if op == "batch_norm":
        return nn.BatchNorm2d(a["num_features"], eps=a["eps"])
    if op == "identity":
        return nn.Identity()
    raise ValueError("%s: unknown layer op %r" % (layer["onnx_node"], op))


class SpecGraph(nn.Module):
    """A graph spec as a module: the layers run in ONNX order, each reading its inputs by tensor name."""

    def __init__(self, spec: dict, weights: dict) -> None:
        super().__init__()
        self.spec = spec
        self.input_name = spec["input"]["name"]
        self.output_name = spec["output"]
        self.order = [(layer["module"], list(layer["inputs"]), layer["output"]) for layer in spec["layers"]]
        for layer in spec["layers"]:
            self.add_module(layer["module"], layer_module(layer, weights))
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError("weights do not fit the graph: missing %s, unexpected %s" % (missing, unexpected))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_name: x}
        for module, inputs, output in self.order:
            env[output] = getattr(self, module)(*[env[name] for name in inputs])
        return env[self.output_name]


def load_graph(spec_file: Path) -> SpecGraph:
    """Rebuild the graph written as ``<name>.json`` + ``<name>.npz``; its class is named after the graph.

    vai_q_pytorch names the exported xmodel after the module's class (``Early_int.xmodel``).
    """
    spec = json.loads(spec_file.read_text())
    with np.load(spec_file.with_suffix(".npz"), allow_pickle=False) as npz:
        weights = {k: npz[k] for k in npz.files}
    cls = type(spec["name"].capitalize(), (SpecGraph,), {})
    return cls(spec, weights)


def vaiq_names(quantizer, graph: SpecGraph) -> dict:
    """vai_q tensor names -> the names our quant_info.json uses (ONNX node, graph input, initializer).

    quant_info.json keys outputs by topological names (``Early::nndct_conv2d_3``; vai_q 3.5
    ``nndct_graph/base_graph.py`` ``assign_node_topological_name``); each node's debug name
    carries its module scope (``Early::Early/Conv2d[n3_stem_Conv]/input.5``), whose last
    bracket is our layer's module; parameters are named ``Early::<module>.weight``.
    """
    from nndct_shared.base import NNDCT_OP

    layers = {layer["module"]: layer for layer in graph.spec["layers"]}
    names = {}
    for node in quantizer.processor.quantizer.Nndctgraph.all_nodes():
        if node.op.type == NNDCT_OP.INPUT:
            names[node.normalized_name] = graph.input_name
            continue
        scopes = re.findall(r"\[([^\]]+)\]", node.name)
        layer = layers.get(scopes[-1]) if scopes else None
        if layer is None:
            continue
        names[node.normalized_name] = layer["onnx_node"]
        for _, tensor in node.op.params.items():
            kind = tensor.name.rsplit(".", 1)[-1]
            if kind in layer["params"]:
                names[tensor.name] = layer["params"][kind]
    return names


def quantize(spec_file: Path, calib_file: Path, out_dir: Path, target: str) -> None:
    """Calibrate, test and export one graph with vai_q_pytorch (the Vitis AI image only)."""
    from pytorch_nndct.apis import torch_quantizer
    from nndct_shared.utils import option_util  # installed with pytorch_nndct

    # vai_q_pytorch's defaults also equalize weights across layers and correct biases during calibration
    # (nndct_equalization and nndct_param_corr default True in nndct_shared/utils/option_list.py). The
    # bundle's INT8 graphs, integer reference and golden vectors have neither, so both are off here: the
    # xmodel holds the quantization the bundle verified (the same call as Vitis AI's own QAT export examples).
    option_util.set_option_value("nndct_equalization", False)
    option_util.set_option_value("nndct_param_corr", False)
    graph = load_graph(spec_file)
    samples = np.load(calib_file, allow_pickle=False).astype(np.float32)
    example = torch.from_numpy(samples[:1])
    cpu = torch.device("cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    quantizer = torch_quantizer("calib", graph, (example,), output_dir=str(out_dir), device=cpu, target=target)
    model = quantizer.quant_model
    with torch.no_grad():
        for i in range(len(samples)):
            model(torch.from_numpy(samples[i : i + 1]))
            print("calibration %d/%d" % (i + 1, len(samples)), flush=True)
    quantizer.export_quant_config()
    quantizer = torch_quantizer("test", graph, (example,), output_dir=str(out_dir), device=cpu, target=target)
    with torch.no_grad():
        quantizer.quant_model(example)  # export needs one forward pass with batch 1
    quantizer.export_xmodel(output_dir=str(out_dir), deploy_check=False)
    (out_dir / "names.json").write_text(json.dumps(vaiq_names(quantizer, graph), indent=2) + "\n")


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quantize_vaiq.py", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True, help="model/<graph>.json (its weights: the .npz beside it)")
    parser.add_argument("--calib", type=Path, required=True, help="calib/<graph>.npy: float32 samples, batch first")
    parser.add_argument("--out", type=Path, required=True, help="output dir (quant_info.json, <Graph>_int.xmodel)")
    parser.add_argument("--target", required=True, help="DPU core name for vai_q's target=, e.g. DPUCZDX8G_ISA1_B4096")
    args = parser.parse_args(argv)
    for path in (args.spec, args.spec.with_suffix(".npz"), args.calib):
        if not path.is_file():
            print("quantize_vaiq.py: error: %s not found: run compile.sh from the bundle's compile dir" % path, file=sys.stderr)
            return 2
    quantize(args.spec, args.calib, args.out, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
