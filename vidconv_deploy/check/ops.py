"""Turn ONNX nodes into the units a hardware maps: ops, composites, and nodes that cost nothing.

A LayerNorm exported by the legacy exporter is seven nodes (ReduceMean, Sub, Pow, ReduceMean, Add,
Sqrt, Div) and a GELU four (Div, Erf, Add, Mul); a user must read "LayerNorm has no DPU path", not
"Erf is unsupported". Shape/constant-only nodes (and inference no-ops like Dropout) are ``elided``:
they run nowhere and do not count in the partition, but edges pass through them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from vidconv_deploy.check.graph import ModelGraph

_NO_COMPUTE = frozenset({"Identity", "Dropout", "Shape", "Size", "Constant", "ConstantOfShape"})


@dataclass
class Op:
    """One unit of work: a single ONNX node or a recognised composite (``LayerNorm``, ``GELU``)."""

    name: str
    op_type: str
    nodes: list[onnx.NodeProto]
    inputs: list[str] = field(default_factory=list)   # non-constant tensors read from outside the op
    outputs: list[str] = field(default_factory=list)  # tensors this op produces for others
    elided: bool = False

    @property
    def node(self) -> onnx.NodeProto:
        return self.nodes[0]


def _scalar(graph: ModelGraph, name: str) -> float | None:
    val = graph.value(name)
    return float(val.ravel()[0]) if val is not None and val.size == 1 else None


def _only_user(graph: ModelGraph, tensor: str, op_type: str | tuple[str, ...]) -> onnx.NodeProto | None:
    users = graph.consumers.get(tensor, [])
    types = (op_type,) if isinstance(op_type, str) else op_type
    if len(users) == 1 and graph.nodes[users[0]].op_type in types:
        return graph.nodes[users[0]]
    return None


def _users(graph: ModelGraph, tensor: str) -> list[onnx.NodeProto]:
    return [graph.nodes[i] for i in graph.consumers.get(tensor, [])]


def _match_layernorm(graph: ModelGraph, mean: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div [-> Mul(gamma) -> Add(beta)]."""
    x = mean.input[0]
    sub = _only_user(graph, mean.output[0], "Sub")
    if sub is None or sub.input[0] != x:
        return None
    users = _users(graph, sub.output[0])
    sq = next((u for u in users if u.op_type == "Pow" and _scalar(graph, u.input[1]) == 2.0
               or u.op_type == "Mul" and u.input[0] == u.input[1] == sub.output[0]), None)
    div = next((u for u in users if u.op_type == "Div" and u.input[0] == sub.output[0]), None)
    if sq is None or div is None:
        return None
    var = _only_user(graph, sq.output[0], "ReduceMean")
    add = var and _only_user(graph, var.output[0], "Add")
    sqrt = add and _only_user(graph, add.output[0], "Sqrt")
    if not sqrt or div.input[1] != sqrt.output[0]:
        return None
    group = [mean, sub, sq, var, add, sqrt, div]
    tail = div.output[0]
    for op_type in ("Mul", "Add"):
        nxt = _only_user(graph, tail, op_type)
        if nxt is None or not any(graph.is_const(i) for i in nxt.input):
            break
        group.append(nxt)
        tail = nxt.output[0]
    return group


def _match_gelu(graph: ModelGraph, erf: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """x / sqrt(2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5), in either multiplication order."""
    pre_i = graph.producer.get(erf.input[0])
    pre = graph.nodes[pre_i] if pre_i is not None else None
    if pre is None or pre.op_type not in ("Div", "Mul") or not graph.is_const(pre.input[1]):
        return None
    x = pre.input[0]
    add = _only_user(graph, erf.output[0], "Add")
    if add is None:
        return None
    group = [pre, erf, add]
    tail = add.output[0]
    has_x = False
    while (mul := _only_user(graph, tail, "Mul")) is not None:
        other = mul.input[1] if mul.input[0] == tail else mul.input[0]
        if other == x:
            has_x = True
        elif not graph.is_const(other):
            break
        group.append(mul)
        tail = mul.output[0]
    if not has_x:  # the 0.5 * x may be computed first: x -> Mul(0.5) -> Mul(., erf_branch)
        return None
    return group


def _composite(graph: ModelGraph, node: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    if node.op_type == "ReduceMean" and (group := _match_layernorm(graph, node)):
        return "LayerNorm", group
    if node.op_type == "Erf" and (group := _match_gelu(graph, node)):
        return "GELU", group
    return None


def build_ops(graph: ModelGraph) -> list[Op]:
    """The graph's ops in topological order (composites placed at their last node)."""
    taken: dict[str, tuple[str, list[onnx.NodeProto]]] = {}
    for node in graph.nodes:
        if node.name not in taken and (found := _composite(graph, node)):
            if not any(n.name in taken for n in found[1]):
                for member in found[1]:
                    taken[member.name] = found
    ops: list[Op] = []
    emitted: set[int] = set()
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        if node.name in taken:
            kind, group = taken[node.name]
            if id(group) in emitted or position[node.name] != max(position[m.name] for m in group):
                continue
            emitted.add(id(group))
            ops.append(_make_op(graph, kind, sorted(group, key=lambda m: position[m.name])))
        else:
            op = _make_op(graph, node.op_type, [node])
            op.elided = node.op_type in _NO_COMPUTE or all(graph.is_const(o) for o in node.output if o)
            ops.append(op)
    return ops


def _make_op(graph: ModelGraph, op_type: str, nodes: list[onnx.NodeProto]) -> Op:
    produced = {o for n in nodes for o in n.output if o}
    members = {n.name for n in nodes}
    inputs = list(dict.fromkeys(i for n in nodes for i in n.input if i and i not in produced and not graph.is_const(i)))
    outputs = [o for o in produced if o in graph.output_names or any(graph.nodes[u].name not in members for u in graph.consumers.get(o, []))]
    name = nodes[0].name if len(nodes) == 1 else f"{nodes[0].name}..{nodes[-1].name}"
    return Op(name=name, op_type=op_type, nodes=nodes, inputs=inputs, outputs=sorted(outputs))


def producers(ops: list[Op]) -> dict[str, Op]:
    """Tensor name -> the op producing it."""
    return {out: op for op in ops for out in op.outputs}


def compute_predecessors(op: Op, by_tensor: dict[str, Op]) -> list[Op]:
    """The non-elided ops feeding ``op``, looking through elided ones (Dropout, Identity)."""
    found: list[Op] = []
    stack = [by_tensor[t] for t in op.inputs if t in by_tensor]
    seen: set[str] = set()
    while stack:
        cur = stack.pop()
        if cur.name in seen:
            continue
        seen.add(cur.name)
        if cur.elided:
            stack.extend(by_tensor[t] for t in cur.inputs if t in by_tensor)
        else:
            found.append(cur)
    return found

