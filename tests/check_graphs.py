"""Tiny ONNX graphs for the checker tests, built with onnx.helper (no torch, no files)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


class G:
    """A graph under construction: ``x`` is the input; methods append nodes and return the output name."""

    def __init__(self, shape: list[int | str], opset: int = 17) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs = [helper.make_tensor_value_info("x", F, shape)]
        self.opset = opset
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, value: np.ndarray) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def big_const(self, shape: list[int]) -> str:
        """A weight given by a ConstantOfShape subgraph, as some exporters write it (never materialised)."""
        shape_name = self.const(np.array(shape, dtype=np.int64))
        out = self.name("w")
        self.nodes.append(helper.make_node("ConstantOfShape", [shape_name], [out], value=helper.make_tensor("v", F, [1], [0.02])))
        return out

    def op(self, op_type: str, inputs: list[str], domain: str = "", **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: tuple[int, ...] = (3, 3), group: int = 1, **attrs: object) -> str:
        w = self.big_const([cout, cin // group, *k])
        return self.op("Conv", [x, w], group=group, **attrs)

    def model(self, *outputs: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", self.inputs, [helper.make_tensor_value_info(o, F, None) for o in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        return model

    def layernorm_decomposed(self, x: str, channels: int, axis: int = -1) -> str:
        mean = self.op("ReduceMean", [x], axes=[axis])
        d = self.op("Sub", [x, mean])
        sq = self.op("Pow", [d, self.const(np.float32(2.0))])
        var = self.op("ReduceMean", [sq], axes=[axis])
        std = self.op("Sqrt", [self.op("Add", [var, self.const(np.float32(1e-6))])])
        y = self.op("Div", [d, std])
        return self.op("Add", [self.op("Mul", [y, self.const(np.ones(channels, np.float32))]), self.const(np.zeros(channels, np.float32))])

    def gelu_decomposed(self, x: str) -> str:
        e = self.op("Erf", [self.op("Div", [x, self.const(np.float32(1.4142135))])])
        a = self.op("Add", [e, self.const(np.float32(1.0))])
        return self.op("Mul", [self.op("Mul", [x, a]), self.const(np.float32(0.5))])
