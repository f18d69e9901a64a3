"""ONNX shape inference without the weights.

``onnx.shape_inference.infer_shapes`` serializes the whole model to its C++ code and parses the
result back: for a ViC-T 224 graph (170 MB of weights) that costs far more than the inference, and
the export runs it on every graph several times. Inference needs a weight's type and shape, and the
values of small tensors only (shapes, axes, scales), so it runs here on :func:`weightless` and the
shapes it finds are copied into the model.
"""

from __future__ import annotations

import math

import onnx
from onnx import helper, shape_inference

#: Initializers up to this many elements keep their values (shape tensors, axes, scales, constants).
SMALL = 1 << 12


def weightless(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with its large (and external) initializers declared as typed graph inputs instead."""
    view = onnx.ModelProto()
    view.ir_version, view.producer_name = proto.ir_version, proto.producer_name
    view.opset_import.extend(proto.opset_import)
    view.functions.extend(proto.functions)
    graph = proto.graph
    view.graph.name = graph.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(view.graph, field).extend(getattr(graph, field))
    declared = {i.name for i in graph.input}
    for tensor in graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL and math.prod(tensor.dims) <= SMALL:
            view.graph.initializer.append(tensor)
        elif tensor.name not in declared:
            view.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return view


def infer_shapes(proto: onnx.ModelProto, **options) -> onnx.ModelProto:
    """What ``onnx.shape_inference.infer_shapes(proto, **options)`` returns (a new model with value_info
    and the outputs' types filled in), inferred on :func:`weightless`; its errors are onnx's."""
    inferred = shape_inference.infer_shapes(weightless(proto), **options)
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model
