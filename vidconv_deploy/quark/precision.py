"""Mixed INT8/BF16 for an NPU that computes BF16 (the Versal AI Edge Gen 2 NPU): which nodes leave INT8, and
how to tell them in a graph.

A vaiep recipe picks ``quantizer.precision``: ``int8`` (the rule set's Quark config everywhere), ``bf16``
(every node in bfloat16) or ``mixed_bf16`` (INT8, and some nodes in bfloat16). The mixed nodes are
``quantizer.bf16_nodes`` when the recipe lists them; otherwise the nodes whose op the target's table
lists without INT8 (they would fall back to the CPU quantized), then the ``quantizer.bf16_auto`` nodes
whose INT8 error is worst. A node's INT8 error is local: the SQNR of each of its inputs (activation,
weight, bias) against that input before its own QuantizeLinear, on the calibration feeds; the node's is
its worst input's. Local, so that a node late in the graph is not blamed for the error it inherits.

In the graphs Quark writes here a BF16 tensor is a Cast to bfloat16 and back to float (its BF16 pairs
turned into Casts, :data:`vidconv_deploy.quark.quantize.BF16_AS_CAST`), a BF16 weight a bfloat16
initializer and a Cast to float.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.errors import UserError
from vidconv_deploy.onnx_session import ort_session

PRECISIONS = ("int8", "bf16", "mixed_bf16")
#: Nodes chosen by INT8 error when a mixed recipe lists none (``quantizer.bf16_auto`` overrides).
DEFAULT_AUTO = 2
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


def choose_bf16_nodes(model: onnx.ModelProto, precision: Precision, errors: Sequence[NodeError],
                      bf16_only: Sequence[str]) -> list[str]:
    """The nodes of ``model`` (a float streaming graph) that go BF16 under ``precision``, in graph order."""
    names = [n.name for n in model.graph.node]
    if precision.name == "bf16":
        return names
    if precision.name == "int8":
        return []
    if precision.nodes:
        chosen = set(precision.nodes)
    else:  # the worst nodes Quark's INT8 graph shares with the float graph (its own rewrites have new names)
        chosen = set(bf16_only) | {e.node for e in [e for e in errors if e.node in names][:precision.auto]}
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
