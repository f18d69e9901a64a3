"""Where vai_q_pytorch puts quantization points, reproduced on an ONNX graph.

vai_q decides per *node* (``VAI/nndct_shared/nndct_graph/nndctgraph_holder.py``,
``VAI/nndct_shared/quantization/commander.py``, ``VAI/pytorch_binding/pytorch_nndct/quantization/
torch_qstrategy.py``, VAI = Xilinx/Vitis-AI src/vai_quantizer/vai_q_pytorch):

1. Groups: an activation or a shape-only op (ReLU, ReLU6/Hardtanh, LeakyReLU, Flatten, Squeeze,
   Split, strided slice, permute, ...) joins its parent's group when it has one parent and that parent
   has no other consumer (``graph_utils.group_up``); a Reshape joins its parent regardless
   (``SoftFuseReshape``). So Conv+ReLU is one group, quantized once after the ReLU.
2. Each quantizable node (``QUANTIZABLE_OPS``: input, conv, dense, add, mul, concat, max/avg pool,
   mean, hsigmoid, ...) gets its weights/bias quantized and one output quantization at
   ``quant_output(node)``: the group's last member, except that a node whose only consumer is a Concat
   hands it to the Concat (the Concat's position covers its inputs), and shape-only ops
   (``MULTIPLE_OUTPUTS_OPS``: reshape, flatten, strided slice, permute, squeeze...) hand it back to the
   op before them (they only move bytes).
3. The parents of each quantizable node except Input and Concat are quantized too
   (``TorchNndctQstrategy.create_quant_config``, "check the input fix of all quantized ops"), which
   quantizes e.g. the output of an unfused ReLU, or a constant multiplied in.

``children`` counts uses, not distinct consumers, as ``Node.out_nodes`` does in
``VAI/nndct_shared/nndct_graph/base_node.py``: a tensor concatenated with itself (the ViC temporal
tile) is *not* a "concat input", and a graph output counts as a use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from vidconv_deploy.errors import UserError
from vidconv_deploy.fixpoint import arithmetic as fixpoint
from vidconv_deploy.onnx_shapes import infer_shapes

#: ONNX op -> the vai_q (NNDCT) op it plays, for the ops the DPU flow supports.
CONV_OPS = frozenset({"Conv", "Gemm", "MatMul"})  # CONV2D / DEPTHWISE_CONV2D / DENSE: have weights
QUANTIZABLE_OPS = CONV_OPS | frozenset(
    {"Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "HardSigmoid"}
)
#: group_up types (commander.py): activations and shape-only ops that fuse into their parent's group.
FUSING_OPS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Flatten", "Squeeze", "Unsqueeze", "Reshape", "Split", "Slice", "Transpose",
     "Identity", "Dropout"}
)
#: MULTIPLE_OUTPUTS_OPS (nndctgraph_holder.py): ops that copy bytes and never own a quantization.
#: ONNX Split plays CHUNK, Slice STRIDED_SLICE, Transpose PERMUTE, Identity/Dropout CONTIGUOUS.
PASS_THROUGH_OPS = frozenset(
    {"Flatten", "Squeeze", "Unsqueeze", "Reshape", "Split", "Slice", "Transpose", "Identity", "Dropout"}
)
SUPPORTED_OPS = QUANTIZABLE_OPS | FUSING_OPS
#: Which inputs of each op carry activations; the rest are weights or static arguments (shapes, axes).
_ALL = -1
ACTIVATION_INPUTS: dict[str, tuple[int, ...]] = {
    "Add": (_ALL,), "Mul": (_ALL,), "Concat": (_ALL,),
    **{op: (0,) for op in SUPPORTED_OPS - {"Add", "Mul", "Concat"}},
}
INPUT_OP, CONST_OP = "Input", "Const"  # pseudo-nodes: graph inputs and constants used as activations


@dataclass
class Node:
    """One ONNX node, graph input or activation constant, with its activation inputs only."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    proto: onnx.NodeProto | None = None
    index: int = 0

    def attr(self, name: str, default: object = None) -> object:
        if self.proto is not None:
            for a in self.proto.attribute:
                if a.name == name:
                    return onnx.helper.get_attribute_value(a)
        return default


@dataclass
class QuantPoint:
    """A quantized activation: vai_q's "output" entry keyed by node, and the ONNX tensor it quantizes."""

    key: str
    tensor: str
    node: Node
    scope: int  # diffs search width: fixpoint.INPUT_SCOPE for graph inputs, else fixpoint.DIFFS_SCOPE


@dataclass
class ParamPoint:
    """A quantized weight or bias: vai_q's "param" entry (keyed by the initializer name in ``GraphPlan.params``)."""

    owner: Node
    role: str  # "weight" or "bias"


@dataclass
class GraphPlan:
    """The float graph read as vai_q reads it: nodes, groups, and the quantization points."""

    model: onnx.ModelProto
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    producer: dict[str, Node]
    uses: dict[str, list[Node | None]]  # tensor -> one entry per use (None: graph output)
    groups: dict[str, list[str]] = field(default_factory=dict)
    points: dict[str, QuantPoint] = field(default_factory=dict)
    params: dict[str, ParamPoint] = field(default_factory=dict)
    by_name: dict[str, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name = {n.name: n for n in self.nodes}

    def largest_tensor(self) -> int:
        """Elements of the largest tensor whose shape is known (sizes the work of one feed)."""
        return max((math.prod(shape) for shape in self.shapes.values()), default=0)

    def parents(self, node: Node) -> list[Node]:
        return [self.producer[t] for t in node.inputs]

    def children(self, node: Node) -> list[Node | None]:
        return [u for t in node.outputs for u in self.uses.get(t, [])]

    def is_concat_input(self, node: Node) -> Node | None:
        """The Concat that is ``node``'s only use, else None (``is_concat_input``)."""
        kids = self.children(node)
        if len(kids) == 1 and kids[0] is not None and kids[0].op == "Concat":
            return kids[0]
        return None

    def quant_output(self, node: Node) -> Node:
        """``NndctGraphHolder.quant_output``: the node whose output carries ``node``'s quantization."""
        by_name = self.by_name
        group = self.groups[node.name]
        end = by_name[group[-1]]
        concat = self.is_concat_input(end)
        if concat is not None:
            return concat
        idx = -1
        while end.op in PASS_THROUGH_OPS:
            idx -= 1
            if -idx > len(group):
                break
            end = by_name[group[idx]]
        while end.op in PASS_THROUGH_OPS and end.inputs:
            end = self.producer[end.inputs[0]]
        return end

    def key_for(self, node: Node) -> str | None:
        """The quantization entry that covers ``node``'s output (``DPUQConfigImp.get_quant_config``)."""
        if node.name in self.points:
            return node.name
        end = self.quant_output(node).name
        return end if end in self.points else None

    def input_key(self, node: Node, index: int = 0) -> str | None:
        return self.key_for(self.producer[node.inputs[index]])

    def weight_and_bias(self, node: Node) -> tuple[str, str | None]:
        """Initializer names of a conv-like node's weight and bias (bias None when absent)."""
        proto = node.proto
        assert proto is not None
        bias = proto.input[2] if len(proto.input) > 2 and proto.input[2] else None
        return proto.input[1], bias


def _static_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with Constant nodes moved into initializers, unique node names, and inferred shapes."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    # node names must not collide with input or constant names: all of them key quantization entries
    kept = []
    seen = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    seen |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is None:
                raise UserError(f"Constant node {node.name or node.output[0]} has no tensor value; fold it with onnxsim first")
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            continue
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return infer_shapes(model, strict_mode=False)


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    return shapes


def _activation_inputs(node: onnx.NodeProto) -> list[str]:
    positions = ACTIVATION_INPUTS[node.op_type]
    names = list(node.input) if positions == (_ALL,) else [node.input[i] for i in positions if i < len(node.input)]
    return [n for n in names if n]


def analyse(model: onnx.ModelProto) -> GraphPlan:
    """Read ``model`` into a :class:`GraphPlan` with vai_q's groups and quantization points.

    Raises UserError for an op the DPU flow does not support, naming the node.
    """
    model = _static_model(model)
    graph = model.graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes: list[Node] = []
    producer: dict[str, Node] = {}
    for vi in graph.input:
        if vi.name in initializers:
            continue
        node = Node(vi.name, INPUT_OP, [], [vi.name])
        nodes.append(node)
        producer[vi.name] = node
    consts: dict[str, Node] = {}
    for proto in graph.node:
        if proto.op_type not in SUPPORTED_OPS:
            raise UserError(
                f"node {proto.name} has op type {proto.op_type}, which the DPU quantizer does not support; "
                f"rewrite it to one of {sorted(SUPPORTED_OPS)}"
            )
        inputs = _activation_inputs(proto)
        for name in inputs:
            if name in initializers and name not in consts:
                const = Node(name, CONST_OP, [], [name])
                consts[name] = const
                nodes.append(const)
                producer[name] = const
        if proto.op_type == "HardSigmoid":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}
            if abs(attrs.get("alpha", 0.2) - 1 / 6) > 1e-6 or abs(attrs.get("beta", 0.5) - 0.5) > 1e-6:
                raise UserError(
                    f"node {proto.name}: HardSigmoid with alpha={attrs.get('alpha', 0.2)}, beta={attrs.get('beta', 0.5)} is "
                    "not PyTorch's hardsigmoid (alpha 1/6, beta 0.5), the only form the DPU computes; export nn.Hardsigmoid"
                )
        if proto.op_type in CONV_OPS:
            weights = proto.input[1] if len(proto.input) > 1 else ""
            if weights not in initializers:
                raise UserError(
                    f"node {proto.name} ({proto.op_type}) has a non-constant weight {weights!r}; the DPU needs constant "
                    "weights: export with constant folding (do_constant_folding=True, onnxsim)"
                )
        node = Node(proto.name, proto.op_type, inputs, [o for o in proto.output if o], proto)
        nodes.append(node)
        for out in node.outputs:
            producer[out] = node
    for i, node in enumerate(nodes):
        node.index = i
    uses: dict[str, list[Node | None]] = {}
    for node in nodes:
        for t in node.inputs:
            if t not in producer:
                raise UserError(f"node {node.name} reads {t!r}, which no node, input or initializer provides; the graph is broken")
            uses.setdefault(t, []).append(node)
    for out in graph.output:
        uses.setdefault(out.name, []).append(None)
    plan = GraphPlan(model, nodes, initializers, _shapes(model), producer, uses)
    _group(plan)
    _place_points(plan)
    return plan


def _group(plan: GraphPlan) -> None:
    """vai_q's ``group_graph``: repeat the group_up rules until nothing changes."""
    groups = {n.name: [n.name] for n in plan.nodes}
    changed = True
    while changed:
        changed = False
        for node in plan.nodes:
            if node.op not in FUSING_OPS or groups[node.name][0] != node.name:
                continue
            parents = plan.parents(node)
            if len(parents) != 1:
                continue
            parent = parents[0]
            if node.op != "Reshape" and len(plan.children(parent)) > 1:
                continue
            members = groups[groups[parent.name][0]]
            for m in groups[node.name]:
                if m not in members:
                    members.append(m)
            for m in members:
                groups[m] = members
            changed = True
    for members in {id(g): g for g in groups.values()}.values():  # group_graph sorts members by node order
        members.sort(key=lambda m: plan.by_name[m].index)
    plan.groups = groups


def _is_quantizable(node: Node) -> bool:
    return node.op in QUANTIZABLE_OPS or node.op == INPUT_OP


def _add_point(plan: GraphPlan, end: Node) -> None:
    if end.name not in plan.points:
        scope = fixpoint.INPUT_SCOPE if end.op == INPUT_OP else fixpoint.DIFFS_SCOPE
        plan.points[end.name] = QuantPoint(end.name, end.outputs[0], end, scope)


def _place_points(plan: GraphPlan) -> None:
    """TorchNndctQstrategy.create_quant_config on our nodes."""
    for node in plan.nodes:
        if not _is_quantizable(node):
            continue
        if node.op in CONV_OPS:
            weight, bias = plan.weight_and_bias(node)
            plan.params.setdefault(weight, ParamPoint(node, "weight"))
            if bias is not None:
                plan.params.setdefault(bias, ParamPoint(node, "bias"))
        _add_point(plan, plan.quant_output(node))
    for node in plan.nodes:
        if not _is_quantizable(node) or node.op in (INPUT_OP, "Concat"):
            continue
        for parent in plan.parents(node):
            _add_point(plan, plan.quant_output(parent))

