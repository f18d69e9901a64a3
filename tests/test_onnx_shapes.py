"""Shape inference without the weights gives the model onnx's own inference gives, byte for byte."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference

from vidconv_deploy.onnx_shapes import SMALL, infer_shapes, weightless


def _model() -> onnx.ModelProto:
    # a weight above SMALL (dropped from the view), a Reshape whose shape tensor must keep its values
    # (data propagation), and an output declared without a shape
    w = numpy_helper.from_array(np.ones((96, 48, 1, 1), np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Reshape", ["y", "shape"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 48, 4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("options", [{}, {"strict_mode": False}, {"check_type": True, "strict_mode": True, "data_prop": True}])
def test_inference_equals_onnx_on_the_whole_model(options):
    model = _model()
    assert 96 * 48 > SMALL
    assert infer_shapes(model, **options).SerializeToString() == shape_inference.infer_shapes(model, **options).SerializeToString()
    assert [d.dim_value for d in infer_shapes(model, data_prop=True).graph.output[0].type.tensor_type.shape.dim] == [1, 1536]


def test_the_view_declares_large_weights_as_inputs_and_keeps_small_ones():
    view = weightless(_model())
    assert [t.name for t in view.graph.initializer] == ["shape"]
    assert [i.name for i in view.graph.input] == ["x", "w"]
    assert [d.dim_value for d in view.graph.input[1].type.tensor_type.shape.dim] == [96, 48, 1, 1]
