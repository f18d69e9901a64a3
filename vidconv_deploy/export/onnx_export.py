"""PyTorch -> static ONNX: export, simplify with onnxsim, check, and verify against PyTorch with ONNX Runtime.

We use the TorchScript-based exporter (``dynamo=False``) at opset 17: it names nodes after the
module path (``/stage3/stage3.0/temporal/conv/Conv``), emits opset-17 ops that Vitis AI, FINN
and qonnx read, and with static input shapes onnxsim folds every shape computation away.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnxsim
import torch
from onnx import shape_inference
from torch import nn

from vidconv_deploy.onnx_session import ort_session
from vidconv_deploy.onnx_shapes import weightless

OPSET = 17
#: Shape-computation and control-flow ops a static deploy graph must not contain.
SHAPE_OPS = frozenset({"Shape", "Gather", "ConstantOfShape", "Expand", "Range", "If", "Loop"})
#: Ops the whole-clip deploy graph must not contain; the streaming graphs also lose the collage's rearrangement,
#: which the host does.
DEPLOY_FORBIDDEN = SHAPE_OPS | {"Tile"}
STREAMING_FORBIDDEN = DEPLOY_FORBIDDEN | {"Transpose", "Reshape"}


class MethodModule(nn.Module):
    """Expose one method of a module as ``forward`` so it exports as its own graph (e.g. the early net)."""

    def __init__(self, module: nn.Module, method: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method(x)


@dataclasses.dataclass(frozen=True)
class ExportedGraph:
    """An exported, simplified and checked graph with its I/O description and verification figure."""

    model: onnx.ModelProto
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]
    max_relative_error: float
    #: ``model`` serialized, once: the verification run, the bundle's file and the split's sessions read it
    #: (serializing a ViC-T 224 graph costs about a quarter of a second each time).
    data: bytes

    def io(self) -> dict[str, object]:
        return {
            "inputs": [{"name": self.input_name, "shape": list(self.input_shape), "dtype": "float32"}],
            "outputs": [{"name": self.output_name, "shape": list(self.output_shape), "dtype": "float32"}],
            "max_relative_error_vs_torch": self.max_relative_error,
        }


def export_graph(
    module: nn.Module,
    example: torch.Tensor,
    input_name: str,
    output_name: str,
    forbidden: frozenset[str] = frozenset(),
    reference: np.ndarray | None = None,
) -> ExportedGraph:
    """Export ``module`` on ``example``, simplify, check, and measure its error against PyTorch.

    The error is measured against ``reference`` when given (e.g. the original model's output for a
    rewritten module), else against ``module(example)``. Raises RuntimeError if a ``forbidden`` op type survives simplification: that is a bug in a
    rewrite, not a user error.
    """
    module.eval()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python shape arithmetic: shapes are static here
        torch.onnx.export(
            module, (example,), buffer, dynamo=False, opset_version=OPSET,
            input_names=[input_name], output_names=[output_name], do_constant_folding=True,
        )
        expected = module(example).numpy() if reference is None else reference
    model, ok = onnxsim.simplify(onnx.load_from_string(buffer.getvalue()))
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified graph")
    # check_model(full_check=True) is the checker and strict shape inference; both run on the weightless
    # view, since serializing a ViC-T 224 graph's weights for them costs more than the checks
    view = weightless(model)
    onnx.checker.check_model(view)
    shape_inference.infer_shapes(view, check_type=True, strict_mode=True)
    left = sorted({n.op_type for n in model.graph.node} & forbidden)
    if left:
        raise RuntimeError(f"the exported graph still contains {left}")
    data = model.SerializeToString()
    got = ort_session(data).run(None, {input_name: example.numpy()})[0]
    return ExportedGraph(
        model, input_name, tuple(example.shape), output_name, tuple(expected.shape), relative_error(got, expected), data
    )


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected| / max |expected| (the figure the rewrite tolerance 1e-5 applies to)."""
    scale = float(np.max(np.abs(expected)))
    return float(np.max(np.abs(got - expected))) / (scale if scale > 0 else 1.0)
