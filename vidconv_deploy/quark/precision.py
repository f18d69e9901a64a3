"""Mixed INT8/BF16 for an NPU that computes BF16 (the Versal AI Edge Gen 2 NPU): which nodes leave INT8, and
how to tell them in a graph.

A vaiep recipe picks ``quantizer.precision``: ``int8`` (the rule set's Quark config everywhere), ``bf16``
(every node in bfloat16) or ``mixed_bf16`` (INT8, and some nodes in bfloat16). The mixed nodes are
``quantizer.bf16_nodes`` when the recipe lists them; otherwise the nodes whose op the target's table
lists without INT8 (they would fall back to the CPU quantized), then up to ``quantizer.bf16_auto`` nodes
chosen by what BF16 buys. A node's INT8 error is local: the SQNR of each of its inputs (activation,
weight, bias) against that input before its own QuantizeLinear, on the calibration feeds; the node's is
its worst input's (local, so that a node late in the graph is not blamed for the error it inherits).
The worst few are candidates; :func:`select_bf16` adds them one at a time by what each raises the
logits' SQNR against float (each trial a copy of the INT8 graphs made BF16 there, :func:`simulate_bf16`:
what Quark's mixed graph computes, without running Quark again), and stops when none raises it.

In the graphs Quark writes here a BF16 tensor is a Cast to bfloat16 and back to float (its BF16 pairs
turned into Casts, :data:`vidconv_deploy.quark.quantize.BF16_AS_CAST`), a BF16 weight a bfloat16
initializer and a Cast to float.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.errors import UserError
from vidconv_deploy.onnx_session import ort_session

PRECISIONS = ("int8", "bf16", "mixed_bf16")
#: Nodes per graph chosen when a mixed recipe lists none (``quantizer.bf16_auto`` overrides), how many of the
#: worst INT8 nodes per chosen one are tried in BF16, and the least gain (dB of logits SQNR) that adds one.
DEFAULT_AUTO = 2
CANDIDATES_PER_NODE = 3
MIN_GAIN_DB = 0.05
#: Calibration feeds the INT8 error is measured on (the first ones): enough for a ranking, cheap.
ERROR_FEEDS = 8
QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: Quark's name for a quantized initializer's codes.
PARAM_SUFFIX = "_quantized"


@dataclasses.dataclass(frozen=True)
class Precision:
    """A recipe's precision choice, validated before any work."""

    name: str
    #: The nodes the recipe names for BF16 (empty: chosen by :func:`choose_bf16_nodes`).
    nodes: tuple[str, ...]
    auto: int

    @classmethod
    def of(cls, target_name: str, quantizer: Mapping[str, Any], bf16_supported: bool, mixed_supported: bool = True) -> Precision:
        """The recipe's ``quantizer`` keys read and checked: a bad value, BF16 on an INT8-only device or a mixed
        graph where the device's docs list no mixed model is a UserError."""
        name = str(quantizer.get("precision", "int8"))
        fix = "fix the recipe's quantizer section (export/README.md)"
        if name not in PRECISIONS:
            raise UserError(f"recipe {target_name}: quantizer.precision {name!r} is not one of {', '.join(PRECISIONS)}: {fix}")
        if name != "int8" and not bf16_supported:
            raise UserError(f"recipe {target_name}: quantizer.precision {name} needs BF16, which {target_name}'s device "
                            f"does not compute (its rule set's quark.bf16 is false): use precision int8")
        if name == "mixed_bf16" and not mixed_supported:
            raise UserError(f"recipe {target_name}: quantizer.precision mixed_bf16: {target_name}'s docs list INT8 and BF16 "
                            f"models, not mixed ones (its rule set's quark.mixed_bf16 is false): use precision int8 or bf16")
        nodes = quantizer.get("bf16_nodes") or []
        auto = quantizer.get("bf16_auto", DEFAULT_AUTO)
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise UserError(f"recipe {target_name}: quantizer.bf16_nodes must be a list of node names: {fix}")
        if nodes and name != "mixed_bf16":
            raise UserError(f"recipe {target_name}: quantizer.bf16_nodes applies to precision mixed_bf16, not {name}: {fix}")
        if isinstance(auto, bool) or not isinstance(auto, int) or auto < 0:
            raise UserError(f"recipe {target_name}: quantizer.bf16_auto {auto!r} is not a count of nodes (0 or more): {fix}")
        return cls(name, tuple(nodes), auto)


@dataclasses.dataclass(frozen=True)
class NodeError:
    """A node of an INT8 graph and the SQNR of its worst-quantized input."""

    node: str
    op_type: str
    tensor: str
    sqnr_db: float


def sqnr_db(reference: Sequence[np.ndarray], test: Sequence[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``reference`` over every array, in dB (inf: equal)."""
    signal = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in reference)
    noise = sum(float(np.sum(np.square(t.astype(np.float64) - r.astype(np.float64)))) for r, t in zip(reference, test, strict=True))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def _outputs(model: onnx.ModelProto, names: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """``names`` (made graph outputs) of ``model`` on every feed."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in present)
    session = ort_session(model)
    inputs = [i.name for i in session.get_inputs()]
    return [dict(zip(names, session.run(list(names), {n: feed[n] for n in inputs}), strict=True)) for feed in feeds]


def int8_errors(model: onnx.ModelProto, float_model: onnx.ModelProto,
                feeds: Sequence[Mapping[str, np.ndarray]]) -> list[NodeError]:
    """Every node of Quark's INT8 QDQ ``model`` of ``float_model`` with a quantized input, worst INT8 error first
    (see the module docstring)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    init = {t.name for t in model.graph.initializer}
    pairs: dict[str, tuple[str, str]] = {}  # DequantizeLinear output -> (float tensor, dequantized tensor)
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] in init:
            continue
        quant = producer.get(node.input[0])
        if quant is not None and quant.op_type == "QuantizeLinear":
            pairs[node.output[0]] = (quant.input[0], node.output[0])
    runs = _outputs(model, sorted({t for pair in pairs.values() for t in pair}), feeds[:ERROR_FEEDS])
    tensor_sqnr = {dq: sqnr_db([r[f] for r in runs], [r[d] for r in runs]) for dq, (f, d) in pairs.items()}
    weights = _weight_sqnr(model, float_model)
    errors = []
    for node in model.graph.node:
        if node.op_type in QDQ:
            continue
        scored = [(tensor_sqnr[i], pairs[i][0]) for i in node.input if i in tensor_sqnr]
        scored += [(weights[i], producer[i].input[0].removesuffix(PARAM_SUFFIX)) for i in node.input if i in weights]
        if scored:
            worst = min(scored)
            errors.append(NodeError(node.name, node.op_type, worst[1], worst[0]))
    return sorted(errors, key=lambda e: (e.sqnr_db, e.node))


def _weight_sqnr(model: onnx.ModelProto, float_model: onnx.ModelProto) -> dict[str, float]:
    """SQNR of each dequantized weight/bias (DequantizeLinear output, keyed so) against the float initializer
    Quark rounded (``<name>_quantized`` holds the codes of ``<name>``; per-tensor scale and zero point)."""
    floats = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in init:
            continue
        original = node.input[0].removesuffix(PARAM_SUFFIX)
        if original in floats:
            codes, scale, zero = (init[i].astype(np.float64) for i in node.input[:3])
            if scale.size > 1:  # per channel, along the node's axis (default 1)
                axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
                shape = [1] * codes.ndim
                shape[axis] = scale.size
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            found[node.output[0]] = sqnr_db([floats[original]], [(codes - zero) * scale])
    return found


def int8_only_missing(model: onnx.ModelProto, table: Mapping[str, Sequence[str]]) -> list[str]:
    """Nodes of ``model`` whose op the target's table (op: [FP32/BF16, INT8]) lists with BF16 and without INT8:
    quantized they would fall back to the CPU, in BF16 they run on the device."""
    return [n.name for n in model.graph.node
            if (row := table.get(n.op_type)) is not None and row[0] == "Y" and row[1] != "Y"]


def _bf16_round(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest, ties to even) and back, as ONNX Runtime's Cast does."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return rounded.view(np.float32)


def simulate_bf16(model: onnx.ModelProto, float_model: onnx.ModelProto, nodes: Sequence[str]) -> onnx.ModelProto:
    """Quark's INT8 QDQ ``model`` with ``nodes`` computing in BF16 as Quark's mixed graph has them, without running
    Quark again: every Q/DQ pair on one of their activation inputs (for every consumer: a tensor has one precision)
    becomes Casts through bfloat16, and their weights and biases the float values rounded to bfloat16. The other
    tensors keep their positions, as they do in Quark's mixed graph (its calibration runs on the float model)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    producer = {o: n for n in model.graph.node for o in n.output}
    init = {t.name for t in model.graph.initializer}
    floats = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    targets = [n for n in model.graph.node if n.name in set(nodes)]
    tensors, params = set(), []
    for node in targets:
        for name in node.input:
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if dq.input[0] in init:
                params.append(dq)
            elif (q := producer.get(dq.input[0])) is not None and q.op_type == "QuantizeLinear":
                tensors.add(q.input[0])
    retyped = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in tensors:
            for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == node.output[0]):
                _to_cast(dq, TensorProto.FLOAT)
            _to_cast(node, TensorProto.BFLOAT16)
            retyped.add(node.output[0])
    kept = [v for v in model.graph.value_info if v.name not in retyped]  # the int8 type Quark recorded for them
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    for dq in params:
        original = dq.input[0].removesuffix(PARAM_SUFFIX)
        if original in floats:
            name = f"{original}_bf16_simulated"
            model.graph.initializer.append(numpy_helper.from_array(_bf16_round(floats[original]), name))
            dq.op_type, dq.domain = "Identity", ""
            del dq.input[:]
            dq.input.append(name)
            del dq.attribute[:]
    return model


def _to_cast(node: onnx.NodeProto, to: int) -> None:
    node.op_type, node.domain = "Cast", ""
    del node.input[1:]
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("to", to))


def select_bf16(int8: Mapping[str, onnx.ModelProto], floats: Mapping[str, onnx.ModelProto],
                candidates: Mapping[str, Sequence[str]], forced: Mapping[str, Sequence[str]], per_graph: int,
                score: Callable[[Mapping[str, onnx.ModelProto]], float]) -> tuple[dict[str, list[str]], list[dict]]:
    """Forward selection of BF16 nodes by what they buy: starting from the INT8 graphs (with the ``forced`` nodes
    in BF16), add the candidate whose BF16 raises ``score`` (the logits' SQNR against float, say) most, while one
    raises it by at least :data:`MIN_GAIN_DB` and its graph has fewer than ``per_graph`` chosen. Each trial is the
    INT8 graphs made BF16 there (:func:`simulate_bf16`), not a Quark run. Returns the chosen nodes per graph and
    the trail (each step's node and score).

    Local error alone does not say what BF16 buys: on the trained vic-nano-hard the two worst nodes per graph (the
    LayerNorms' mean of squares) in BF16 lowered the logits' SQNR (23.4 to 22.9 dB on 4 clips).
    """
    chosen = {g: [] for g in int8}

    def models(extra: tuple[str, str] | None = None) -> dict[str, onnx.ModelProto]:
        return {g: simulate_bf16(int8[g], floats[g], [*forced.get(g, []), *chosen[g], *([extra[1]] if extra and extra[0] == g else [])])
                for g in int8}

    best = score(models())
    trail = [{"node": None, "logits_sqnr_db": best}]
    while True:
        trials = [(score(models((g, n))), g, n) for g, names in candidates.items() if len(chosen[g]) < per_graph
                  for n in names if n not in chosen[g]]
        if not trials:
            break
        value, graph, node = max(trials, key=lambda t: t[0])
        if value - best < MIN_GAIN_DB:
            break
        chosen[graph].append(node)
        best = value
        trail.append({"graph": graph, "node": node, "logits_sqnr_db": value})
    return chosen, trail


def choose_bf16_nodes(model: onnx.ModelProto, precision: Precision, bf16_only: Sequence[str],
                      selected: Sequence[str] = ()) -> list[str]:
    """The nodes of ``model`` (a float streaming graph) that go BF16 under ``precision``, in graph order: the recipe's,
    or the ops the table lists without INT8 and the nodes :func:`select_bf16` chose."""
    names = [n.name for n in model.graph.node]
    if precision.name == "bf16":
        return names
    if precision.name == "int8":
        return []
    chosen = set(precision.nodes) if precision.nodes else {*bf16_only, *selected}
    return [n for n in names if n in chosen]


def unknown_nodes(precision: Precision, graphs: Mapping[str, onnx.ModelProto]) -> list[str]:
    """Names in the recipe's ``bf16_nodes`` that are a node of no streaming graph."""
    known = {n.name for g in graphs.values() for n in g.graph.node}
    return [n for n in precision.nodes if n not in known]


def bf16_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Nodes of a Quark graph (Cast form) that compute in BF16, name -> op type: each non-QDQ, non-Cast node
    with an input cast back to float from bfloat16 and none from a DequantizeLinear."""
    producer = {o: n for n in model.graph.node for o in n.output}
    bf16_init = {t.name for t in model.graph.initializer if t.data_type == TensorProto.BFLOAT16}

    def to_int(node: onnx.NodeProto) -> int:
        return next(helper.get_attribute_value(a) for a in node.attribute if a.name == "to")

    def from_bf16(tensor: str) -> bool:
        cast = producer.get(tensor)
        if cast is None or cast.op_type != "Cast" or to_int(cast) != TensorProto.FLOAT:
            return False
        source = cast.input[0]
        return source in bf16_init or (source in producer and producer[source].op_type == "Cast"
                                       and to_int(producer[source]) == TensorProto.BFLOAT16)

    found = {}
    for node in model.graph.node:
        if node.op_type in QDQ or node.op_type == "Cast":
            continue
        kinds = [producer[i].op_type for i in node.input if i in producer]
        if any(from_bf16(i) for i in node.input) and "DequantizeLinear" not in kinds:
            found[node.name] = node.op_type
    return found
