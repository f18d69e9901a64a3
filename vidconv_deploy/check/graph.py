"""Read any ONNX model into a form the rules can query: sorted nodes, shapes, folded constants.

Rules need parameters (kernel, channels, scales), and exporters hide them: weights arrive through
constant subgraphs (``ConstantOfShape``, ``Constant -> Reshape``), shapes through ``Shape -> Gather``
chains. So the model is validated (readable, known op domains, acyclic, then valid ONNX: see
:mod:`.validate`), constant subgraphs are folded with the ONNX reference evaluator, and shapes are
inferred on the folded graph. Large constants keep only their shape: rules never need a weight's
values, and folding a VGG fc6 weight would cost 400 MB.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from vidconv_deploy.check.validate import validate_model
from vidconv_deploy.errors import UserError
from vidconv_deploy.onnx_shapes import infer_shapes

# Op domains the checker can interpret; a rule set may add its own (FINN's custom ops).
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
# Domains of QONNX (Brevitas) and FINN graphs: only the FINN rule sets read them.
FINN_DOMAINS = ("qonnx.custom_op", "finn.custom_op", "onnx.brevitas")
# Largest constant (elements) whose value is computed; bigger ones keep their shape only.
FOLD_LIMIT = 1 << 16
_NEVER_FOLD = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})

Shape = tuple[int | str | None, ...]


@dataclass
class ModelGraph:
    """A validated, constant-folded, shape-inferred ONNX graph."""

    model: onnx.ModelProto  # the folded, shape-inferred model
    original: onnx.ModelProto  # the model as read (its declared graph outputs, for the onnx rule set)
    nodes: list[onnx.NodeProto]
    shapes: dict[str, Shape | None]
    const_names: set[str]
    values: dict[str, np.ndarray] = field(default_factory=dict)
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        for i, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = i
            for name in node.input:
                if name:
                    self.consumers[name].append(i)

    @property
    def opset(self) -> int:
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 0)

    @property
    def output_names(self) -> set[str]:
        return {o.name for o in self.model.graph.output}

    def is_const(self, name: str) -> bool:
        return name in self.const_names

    def value(self, name: str) -> np.ndarray | None:
        """The folded value of a constant tensor, or None (not constant, or too large to fold)."""
        return self.values.get(name)

    def shape(self, name: str) -> Shape | None:
        return self.shapes.get(name)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape if every dim is a known positive integer."""
        shape = self.shapes.get(name)
        if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
            return None
        return tuple(int(d) for d in shape)  # type: ignore[arg-type]


def _read(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if path.is_dir():
        raise UserError(f"{path} is a folder: pass the path of an .onnx model")
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass the path of an .onnx model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise UserError(f"{path}: not an ONNX model ({type(err).__name__}); export it with torch.onnx.export") from None
    if not proto.graph.node and not proto.graph.input:
        raise UserError(f"{path}: not an ONNX model (no graph found); export it with torch.onnx.export")
    return proto


def _check_domains(proto: onnx.ModelProto, extra_domains: frozenset[str]) -> None:
    known = KNOWN_DOMAINS | extra_domains
    for i, node in enumerate(proto.graph.node):
        if node.domain not in known:
            name = node.name or f"{node.op_type}_{i}"
            fix = ("it is a QONNX/FINN op: check the model with --target finn" if node.domain.startswith(FINN_DOMAINS)
                   else "export it with standard ONNX ops (domain ai.onnx)")
            raise UserError(f"node {name!r} ({node.op_type}) uses unknown op domain {node.domain!r}: {fix}")


def _import_domains(proto: onnx.ModelProto, extra_domains: frozenset[str]) -> None:
    """Declare the rule set's custom domains the model uses but does not import.

    FINN writes its HW-layer graphs (``finn_dataflow_*.onnx``) without an opset import for
    ``finn.custom_op.fpgadataflow.hls``/``.rtl``; ONNX then refuses to even infer shapes.
    """
    imported = {o.domain for o in proto.opset_import}
    for domain in sorted({n.domain for n in proto.graph.node} & extra_domains - imported):
        proto.opset_import.append(onnx.helper.make_opsetid(domain, 1))


def _name_nodes(proto: onnx.ModelProto) -> None:
    """Give every node a unique name: findings must point at a node a person can find."""
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def _toposort(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes in dependency order; a cycle or a dangling input is a :class:`UserError`."""
    nodes = list(proto.graph.node)
    available = {i.name for i in proto.graph.input} | {t.name for t in proto.graph.initializer} | {""}
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    for node in nodes:
        for name in node.input:
            if name not in available and name not in producer:
                raise UserError(f"node {node.name!r} reads tensor {name!r} that no node produces and no input provides: re-export the model")
    indegree = [0] * len(nodes)
    users: dict[int, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        deps = {producer[n] for n in node.input if n in producer}
        indegree[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = deque(i for i, d in enumerate(indegree) if d == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for j in users[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    if len(order) < len(nodes):
        stuck = next(nodes[i].name for i in range(len(nodes)) if indegree[i] > 0)
        raise UserError(f"graph has a cycle through node {stuck!r}: an ONNX graph must be acyclic; re-export the model")
    return [nodes[i] for i in order]


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as err:  # onnx raises several internal error types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"shape inference failed ({first}): check the model with onnx.checker and re-export it") from None


def _shapes(proto: onnx.ModelProto) -> dict[str, Shape | None]:
    shapes: dict[str, Shape | None] = {}
    g = proto.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            shapes.setdefault(vi.name, None)
            continue
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        shapes[vi.name] = tuple(dims)
    for t in g.initializer:
        shapes[t.name] = tuple(t.dims)
    return shapes


def _initializer_value(t: onnx.TensorProto) -> np.ndarray | None:
    if t.data_location == onnx.TensorProto.EXTERNAL or math.prod(t.dims) > FOLD_LIMIT:
        return None
    return numpy_helper.to_array(t)


def _eval_node(node: onnx.NodeProto, inputs: list[np.ndarray | None], opsets: list[onnx.OperatorSetIdProto]) -> list[np.ndarray] | None:
    names = [f"i{k}" if n else "" for k, n in enumerate(node.input)]
    clone = onnx.helper.make_node(node.op_type, names, [f"o{k}" for k in range(len(node.output))], domain=node.domain)
    clone.attribute.extend(node.attribute)
    graph = onnx.helper.make_graph(
        [clone], "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in names if n],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in clone.output],
    )
    try:
        ev = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=opsets))
        return list(ev.run(None, {n: v for n, v in zip(names, inputs) if n}))
    except Exception:  # an op the reference evaluator cannot run: keep shape only
        return None


def _fold(proto: onnx.ModelProto, nodes: list[onnx.NodeProto], shapes: dict[str, Shape | None]) -> tuple[set[str], dict[str, np.ndarray]]:
    """Mark constant tensors and compute the values of the small ones."""
    const = {t.name for t in proto.graph.initializer}
    values = {t.name: v for t in proto.graph.initializer if (v := _initializer_value(t)) is not None}
    for node in nodes:
        if node.op_type in _NEVER_FOLD or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if not all(n in const for n in node.input if n):
            continue
        const.update(o for o in node.output if o)
        ins = [values.get(n) if n else None for n in node.input]
        if any(v is None for v, n in zip(ins, node.input) if n):
            continue
        if node.op_type == "ConstantOfShape" and ins and math.prod(int(x) for x in np.asarray(ins[0]).ravel()) > FOLD_LIMIT:
            continue
        out_shape = shapes.get(node.output[0])
        if out_shape and all(isinstance(d, int) for d in out_shape) and math.prod(out_shape) > FOLD_LIMIT:  # type: ignore[arg-type]
            continue
        outs = _eval_node(node, ins, list(proto.opset_import))
        if outs is None:
            continue
        for name, val in zip(node.output, outs):
            if name and val is not None and np.asarray(val).size <= FOLD_LIMIT:
                values[name] = np.asarray(val)
    return const, values


def load_graph(model: onnx.ModelProto | str | Path, extra_domains: frozenset[str] = frozenset()) -> ModelGraph:
    """Validate, sort, fold and shape-infer ``model``; bad input raises :class:`UserError` (exit 2)."""
    original = _read(model)
    proto = onnx.ModelProto()
    proto.CopyFrom(original)
    _check_domains(proto, extra_domains)
    _import_domains(proto, extra_domains)
    _name_nodes(proto)
    ordered = _toposort(proto)
    del proto.graph.node[:]
    proto.graph.node.extend(ordered)
    validate_model(proto, None if isinstance(model, onnx.ModelProto) else Path(model))

    first = _infer(proto)
    const, values = _fold(proto, ordered, _shapes(first))
    # Replace folded nodes by initializers so shape inference sees the constants as data.
    initializer_names = {t.name for t in proto.graph.initializer}
    kept = [n for n in ordered if not (all(o in values for o in n.output if o) and all(o in const for o in n.output if o))]
    for name, val in values.items():
        if name not in initializer_names:
            tensor = numpy_helper.from_array(val, name)
            proto.graph.initializer.append(tensor)
            if proto.ir_version < 4:  # before IR 4 shape inference only sees initializers listed as inputs
                proto.graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    inferred = _infer(proto)
    return ModelGraph(model=inferred, original=original, nodes=list(inferred.graph.node), shapes=_shapes(inferred), const_names=const, values=values)
