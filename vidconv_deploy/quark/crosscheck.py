"""AMD Quark's XINT8 as a second opinion on our vai_q_pytorch quantization of the DPU streaming graphs.

Quark quantizes the same two float graphs on the same calibration feeds with its DPU refinement
and DPU simulation on (XINT8's defaults, made explicit), and once more with the refinement off, so
that a position Quark's refinement moved is told apart from one its calibration chose. Quark's
QuantizeLinear inputs keep the float tensor names (a graph output gets ``_QuantizeLinear_Input``)
and its weights are ``<initializer>_quantized``, so both tools' positions meet on the float graph's
names. Every position that differs is explained by one rule of :mod:`vidconv_deploy.quark.rules`
(``unexplained`` where none matches); then both QDQ graphs run in ONNX Runtime on the check feeds
and every tensor quantized by both is compared: elements that differ, the largest difference in
LSB of the finer position, each tool's SQNR against float, and the cause (its own position's rule,
or the nearest tensor upstream whose position or operator differs).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.fixpoint.arithmetic import MAX_FIX_POS
from vidconv_deploy.onnx_session import ort_session
from vidconv_deploy.progress import Subtask, no_subtask
from vidconv_deploy.quant.calibrate import DPU_LEAKY_SLOPE
from vidconv_deploy.quant.graph import PASS_THROUGH_OPS
from vidconv_deploy.quant.qdq import QuantResult
from vidconv_deploy.quark.artifacts import ACCURACY_ROW, OURS_ROW
from vidconv_deploy.quark.quantize import quantize_with_quark
from vidconv_deploy.quark.rules import RULES
from vidconv_deploy.runners import GRAPHS

#: XINT8's defaults (npu_cnn_quantizer.py XINT8QDQQuantizer.quantize_model), given explicitly: DPU simulation
#: (LeakyReLU, pools, HardSigmoid) and the refinement to the compiler's shift and alignment rules.
REFINED = {"SimulateDPU": True, "NPULimitationCheck": True}
#: The same calibration without the refinement: Quark's positions as MinMSE chose them.
UNREFINED = {"SimulateDPU": True, "NPULimitationCheck": False}
#: Quark's name for a graph output's float tensor, and for a quantized initializer.
OUTPUT_SUFFIX, PARAM_SUFFIX = "_QuantizeLinear_Input", "_quantized"
UNEXPLAINED = "unexplained"
POOL_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool"})


@dataclasses.dataclass(frozen=True)
class QuantPoint:
    position: int
    #: "input", "activation", "weight" or "bias".
    kind: str


@dataclasses.dataclass
class PositionDiff:
    """One float tensor whose fix position differs between the tools (None: that tool does not quantize it)."""

    tensor: str
    kind: str
    ours: int | None
    quark: int | None
    #: Quark's position before its refinement (MinMSE's choice).
    quark_calibrated: int | None
    rule: str


@dataclasses.dataclass
class OperatorDiff:
    """An operator both tools approximate for the DPU, with another constant."""

    node: str
    op: str
    ours: float
    quark: float
    rule: str


@dataclasses.dataclass
class CodeDiff:
    """A weight or bias both quantize at the same position whose int8 codes still differ."""

    tensor: str
    kind: str
    elements: int
    differing: int
    rule: str


@dataclasses.dataclass
class TensorComparison:
    """A tensor quantized by both, compared over the check feeds (dequantized values)."""

    tensor: str
    ours_fp: int
    quark_fp: int
    elements: int
    differing: int
    #: Largest |ours - quark| in LSB of the finer of the two positions.
    max_lsb: int
    sqnr_ours_db: float
    sqnr_quark_db: float
    #: The rule of this tensor's own position, or "follows <tensor> (<rule>)"; "" when nothing differs.
    cause: str


@dataclasses.dataclass
class GraphCrosscheck:
    positions_compared: int
    positions: list[PositionDiff]
    codes: list[CodeDiff]
    operators: list[OperatorDiff]
    outputs: list[TensorComparison]

    def to_dict(self) -> dict[str, Any]:
        return {"positions_compared": self.positions_compared,
                "positions_agree": self.positions_compared - sum(p.ours is not None and p.quark is not None
                                                                 for p in self.positions),
                "position_diffs": [dataclasses.asdict(p) for p in self.positions],
                "code_diffs": [dataclasses.asdict(c) for c in self.codes],
                "operator_diffs": [dataclasses.asdict(o) for o in self.operators],
                "outputs": [dataclasses.asdict(t) for t in self.outputs]}


@dataclasses.dataclass
class Crosscheck:
    """Quark's QDQ graphs and the comparison of both graphs (``to_dict``: crosscheck.json)."""

    models: dict[str, onnx.ModelProto]
    graphs: dict[str, GraphCrosscheck]
    #: The streaming seam: our pinned position, Quark's early output and later input positions.
    seam: dict[str, int | None]
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        used = sorted({d.rule for g in self.graphs.values() for d in [*g.positions, *g.codes, *g.operators]} - {UNEXPLAINED})
        return {"tool": "amd-quark", "config": "XINT8", "options": self.options, "seam": self.seam,
                "accuracy_rows": [OURS_ROW, ACCURACY_ROW],
                "unexplained": self.unexplained(),
                "graphs": {name: g.to_dict() for name, g in self.graphs.items()},
                "rules": {r: dataclasses.asdict(RULES[r]) for r in used}}


    def unexplained(self) -> list[str]:
        """Graph:tensor of every difference no rule explains (none on the demo model)."""
        rows = [(g, d.tensor) for g, c in self.graphs.items() for d in c.positions if d.rule == UNEXPLAINED]
        rows += [(g, t.tensor) for g, c in self.graphs.items() for t in c.outputs if t.cause == UNEXPLAINED]
        return [f"{g}:{t}" for g, t in rows]

    def summary(self) -> dict[str, Any]:
        """The manifest's record: each graph's position differences with their rules, the rest in crosscheck.json."""
        return {"config": "XINT8", "file": "crosscheck.json", "seam": self.seam, "unexplained": self.unexplained(),
                "graphs": {name: {"positions_compared": g.positions_compared,
                                  "position_diffs": [{"tensor": p.tensor, "ours": p.ours, "quark": p.quark, "rule": p.rule}
                                                     for p in g.positions],
                                  "code_diffs": {c.tensor: c.rule for c in g.codes},
                                  "tensors_differing": sum(1 for t in g.outputs if t.differing)}
                           for name, g in self.graphs.items()}}


def _position(scale: onnx.TensorProto) -> int:
    return int(round(-math.log2(float(numpy_helper.to_array(scale)))))


def quark_points(model: onnx.ModelProto) -> dict[str, QuantPoint]:
    """Quark's fix position per float tensor name: activations from QuantizeLinear, weights and biases from the
    DequantizeLinear of their int8 initializer (input 1 of a conv: weight, input 2: bias)."""
    init = {t.name: t for t in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    role = {name: ("bias" if i == 2 else "weight") for n in model.graph.node for i, name in enumerate(n.input) if i}
    points = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            name = node.input[0].removesuffix(OUTPUT_SUFFIX)
            points[name] = QuantPoint(_position(init[node.input[1]]), "input" if name in inputs else "activation")
        elif node.op_type == "DequantizeLinear" and node.input[0] in init:
            points[node.input[0].removesuffix(PARAM_SUFFIX)] = QuantPoint(_position(init[node.input[1]]),
                                                                           role.get(node.output[0], "weight"))
    return points


def our_points(info: Mapping[str, Any]) -> dict[str, QuantPoint]:
    """Our fix position per float tensor name, from quant_info.json."""
    tensors, params = info["onnx"]["tensors"], info["onnx"]["params"]
    points = {tensors[k]["float_tensor"]: QuantPoint(v[0][1], "input" if tensors[k]["op"] == "Input" else "activation")
              for k, v in info["output"].items()}
    points.update({k: QuantPoint(v[0][1], params[k]["role"]) for k, v in info["param"].items()})
    return points


@dataclasses.dataclass
class _Graph:
    """The float graph's topology by tensor name."""

    producer: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> _Graph:
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        return cls({o: n for n in model.graph.node for o in n.output}, consumers)

    def neighbour_ops(self, tensor: str) -> set[str]:
        ops = {n.op_type for n in self.consumers.get(tensor, [])}
        return ops | ({self.producer[tensor].op_type} if tensor in self.producer else set())

    def upstream(self, tensor: str) -> list[str]:
        """Every tensor ``tensor`` depends on (initializers included), nearest first."""
        seen, order, queue = {tensor}, [], deque([tensor])
        while queue:
            node = self.producer.get(queue.popleft())
            for name in node.input if node is not None else ():
                if name and name not in seen:
                    seen.add(name)
                    order.append(name)
                    queue.append(name)
        return order


def _refinement_rule(kind: str, ops: set[str]) -> str:
    """Which of refine.py's adjustments moves a position of this kind next to these ops."""
    if kind == "bias":
        return "shift_bias"
    if kind == "weight":
        return "shift_cut"  # adjust_shift_cut is the only one that moves a weight position
    for rule, near in (("align_pool", POOL_OPS), ("align_concat", {"Concat"}), ("hard_sigmoid", {"HardSigmoid"}),
                       ("shift_read_write", {"Add", "Sub", "Mul"})):
        if ops & near:
            return rule
    return UNEXPLAINED


def _our_rule(adjustments: Sequence[Mapping[str, Any]], key: str) -> str | None:
    """The rule of our own post-calibration adjustment of ``key`` (quant_info's log), if any."""
    for entry in adjustments:
        if entry["tensor"] == key:
            why = entry["rule"]
            return "hard_sigmoid" if why.startswith("hsigmoid") else "shift_bias" if "shift_bias lower" in why else "shift_cut"
    return None


def position_diffs(float_model: onnx.ModelProto, info: Mapping[str, Any], quark: onnx.ModelProto,
                   quark_unrefined: onnx.ModelProto) -> tuple[int, list[PositionDiff]]:
    """How many tensors both tools quantize, and every tensor whose position differs, with its rule."""
    ours, theirs, calibrated = our_points(info), quark_points(quark), quark_points(quark_unrefined)
    graph = _Graph.of(float_model)
    keys = {t["float_tensor"]: k for k, t in info["onnx"]["tensors"].items()}
    pinned = {keys.get(name, name) for name in info["onnx"].get("fixed_fix_points", {})}
    outputs = {o.name for o in float_model.graph.output}
    diffs = []
    for name in [*ours, *(n for n in theirs if n not in ours)]:
        mine, other = ours.get(name), theirs.get(name)
        users = graph.consumers.get(name, [])
        concat_input = mine is None and len(users) == 1 and users[0].op_type == "Concat" and name not in outputs
        if concat_input:  # vai_q writes a sole-use Concat input at the Concat's position (graph.py quant_output)
            mine = ours.get(users[0].output[0])
        if mine is not None and other is not None and mine.position == other.position:
            continue
        raw = calibrated.get(name)
        kind = (mine or other).kind
        if concat_input and mine is not None:
            rule = "align_concat"
        elif mine is None or other is None:
            producer = graph.producer.get(name)
            rule = "reshape_quantizer" if producer is not None and producer.op_type in PASS_THROUGH_OPS else UNEXPLAINED
        elif raw is not None and raw.position != other.position:
            rule = _refinement_rule(kind, graph.neighbour_ops(name))
        elif (ours_rule := _our_rule(info["onnx"]["adjustments"], keys.get(name, name))) is not None:
            rule = ours_rule
        elif keys.get(name, name) in pinned:
            rule = "streaming_pin"
        elif kind == "input":
            rule = "input_scope"
        elif mine.position == MAX_FIX_POS and other.position > MAX_FIX_POS:
            rule = "max_fix_pos"
        else:
            rule = "calibration_method"
        diffs.append(PositionDiff(name, kind, mine and mine.position, other and other.position, raw and raw.position, rule))
    return sum(1 for n in ours if n in theirs), diffs


def code_diffs(ours: QuantResult, quark: onnx.ModelProto, positions: Sequence[PositionDiff]) -> list[CodeDiff]:
    """Weights and biases at the same position in both whose codes differ: saturated at -128 by vai_q and -127 by
    Quark (``param_range``), else rounded on a tie each its own way (``param_rounding``)."""
    moved = {p.tensor for p in positions}
    ours_init = {t.name: t for t in ours.model.graph.initializer}
    quark_init = {t.name: t for t in quark.graph.initializer}
    diffs = []
    for key, param in ours.info["onnx"]["params"].items():
        theirs = quark_init.get(key + PARAM_SUFFIX)
        if key in moved or theirs is None:
            continue
        a = numpy_helper.to_array(ours_init[param["quantized"]]).astype(np.int16)
        b = numpy_helper.to_array(theirs).astype(np.int16)
        differ = a != b
        if differ.any():
            saturated = bool(np.all((a[differ] == -128) & (b[differ] == -127)))
            diffs.append(CodeDiff(key, param["role"], a.size, int(differ.sum()), "param_range" if saturated else "param_rounding"))
    return diffs


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _pool_factor(quark: onnx.ModelProto, name: str) -> float | None:
    """The constant of the Mul Quark's DPU simulation puts right after its pool (or mean) node ``name`` (None: no
    such Mul).

    Found through the node's own output, not its float tensor's name: a pool whose output is a graph output
    writes ``<output>_QuantizeLinear_Input`` in Quark's graph.
    """
    constants = {n.output[0]: float(numpy_helper.to_array(n.attribute[0].t)) for n in quark.graph.node if n.op_type == "Constant"}
    pool = next((n for n in quark.graph.node if n.name == name), None)
    if pool is None:
        return None
    return next((constants[n.input[1]] for n in quark.graph.node
                 if n.op_type == "Mul" and n.input[0] == pool.output[0] and n.input[1] in constants), None)


def operator_diffs(float_model: onnx.ModelProto, info: Mapping[str, Any], quark: onnx.ModelProto) -> list[OperatorDiff]:
    """LeakyReLU slopes and average-pool factors where the two tools' DPU approximations differ, each read from
    Quark's graph (its LeakyRelu's alpha, the Mul after its pool) against ours."""
    diffs = []
    quark_nodes = {n.name: n for n in quark.graph.node}
    approximations = info["onnx"]["approximations"]
    for node in float_model.graph.node:
        if node.op_type == "LeakyRelu" and node.name in quark_nodes:
            theirs = float(_attr(quark_nodes[node.name], "alpha", 0.01))
            if theirs != float(DPU_LEAKY_SLOPE):
                diffs.append(OperatorDiff(node.name, node.op_type, float(DPU_LEAKY_SLOPE), theirs, "leaky_relu_slope"))
        elif node.name in approximations and node.name in quark_nodes:
            ours = approximations[node.name]
            window = int(np.prod(ours["kernel"]))
            mine = Fraction(ours["multiplier"], 2 ** ours["shift"])
            scale = _pool_factor(quark, node.name)
            if scale is None and node.op_type not in POOL_OPS:
                continue
            # a pool without the Mul: Quark simulates square windows only, any other computes the exact average
            theirs = 1 / window if scale is None else scale / window
            if not math.isclose(float(mine), theirs, rel_tol=1e-6):
                diffs.append(OperatorDiff(node.name, node.op_type, float(mine), theirs, "pool_scale"))
    return diffs


def _run(model: onnx.ModelProto, outputs: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """``outputs`` of ``model`` (added as graph outputs) for every feed, with ONNX Runtime."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs if n not in present)
    session = ort_session(model)
    names = [i.name for i in session.get_inputs()]
    return [session.run(list(outputs), {n: np.asarray(feed[n], np.float32) for n in names}) for feed in feeds]


def _quark_dequantized(model: onnx.ModelProto) -> dict[str, str]:
    """Float tensor name -> the name of Quark's dequantized copy of it."""
    dq = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.input[0].removesuffix(OUTPUT_SUFFIX): dq[n.output[0]] for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.output[0] in dq}


def _sqnr(signal: float, noise: float) -> float:
    return math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)


def compare_outputs(float_model: onnx.ModelProto, ours: QuantResult, quark: onnx.ModelProto,
                    feeds: Sequence[Mapping[str, np.ndarray]], positions: Sequence[PositionDiff | CodeDiff],
                    operators: Sequence[OperatorDiff]) -> list[TensorComparison]:
    """Every activation both tools quantize, in our graph order, compared over ``feeds`` (see the module docstring)."""
    tensors = ours.info["onnx"]["tensors"]
    mine = {t["float_tensor"]: (t["dequantized"], ours.info["output"][k][0][1]) for k, t in tensors.items()}
    theirs, their_points = _quark_dequantized(quark), quark_points(quark)
    floats = {n for node in float_model.graph.node for n in node.output}
    names = [n for n in mine if n in theirs and n in floats]
    got_float = _run(float_model, names, feeds)
    got_ours = _run(ours.model, [mine[n][0] for n in names], feeds)
    got_quark = _run(quark, [theirs[n] for n in names], feeds)
    by_tensor = {p.tensor: p.rule for p in positions}
    by_node = {o.node: o.rule for o in operators}
    graph = _Graph.of(float_model)
    rows = []
    for i, name in enumerate(names):
        fp_o, fp_q = mine[name][1], their_points[name].position
        f = [run[i].astype(np.float64).ravel() for run in got_float]
        a = [run[i].astype(np.float64).ravel() for run in got_ours]
        b = [run[i].astype(np.float64).ravel() for run in got_quark]
        diff = np.concatenate([x - y for x, y in zip(a, b, strict=True)])
        signal = sum(float(v @ v) for v in f)
        noise_o = sum(float((x - v) @ (x - v)) for x, v in zip(a, f, strict=True))
        noise_q = sum(float((y - v) @ (y - v)) for y, v in zip(b, f, strict=True))
        differing = int(np.count_nonzero(diff))
        rows.append(TensorComparison(name, fp_o, fp_q, diff.size, differing,
                                     int(round(float(np.max(np.abs(diff))) * 2.0 ** max(fp_o, fp_q))) if diff.size else 0,
                                     _sqnr(signal, noise_o), _sqnr(signal, noise_q),
                                     _cause(name, graph, by_tensor, by_node) if differing else ""))
    return rows


def _cause(name: str, graph: _Graph, positions: Mapping[str, str], operators: Mapping[str, str]) -> str:
    if name in positions:
        return positions[name]
    for upstream in graph.upstream(name):
        node = graph.producer.get(upstream)
        if upstream in positions:
            return f"follows {upstream} ({positions[upstream]})"
        if node is not None and node.name in operators:
            return f"follows {node.name} ({operators[node.name]})"
    return UNEXPLAINED


def crosscheck_graphs(graphs: Mapping[str, onnx.ModelProto], quant: Mapping[str, QuantResult],
                      feeds: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
                      check_feeds: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
                      progress: Subtask = no_subtask) -> Crosscheck:
    """Quark XINT8 on both streaming graphs (calibrated on ``feeds``) against ours, compared on ``check_feeds``."""
    models, results = {}, {}
    with progress("Quark XINT8 cross-check", 2 * len(GRAPHS)) as advance:
        for name in GRAPHS:
            refined = quantize_with_quark(graphs[name], feeds[name], "XINT8", extra=REFINED)
            advance()
            unrefined = quantize_with_quark(graphs[name], feeds[name], "XINT8", extra=UNREFINED)
            compared, positions = position_diffs(graphs[name], quant[name].info, refined.model, unrefined.model)
            codes = code_diffs(quant[name], refined.model, positions)
            operators = operator_diffs(graphs[name], quant[name].info, refined.model)
            outputs = compare_outputs(graphs[name], quant[name], refined.model, check_feeds[name], [*positions, *codes],
                                      operators)
            models[name], results[name] = refined.model, GraphCrosscheck(compared, positions, codes, operators, outputs)
            advance()
    early_out = graphs["early"].graph.output[0].name
    later_in = graphs["later"].graph.input[0].name
    seam = {"ours": our_points(quant["later"].info)[later_in].position,
            "quark_early_output": quark_points(models["early"]).get(early_out, QuantPoint(None, "")).position,
            "quark_later_input": quark_points(models["later"]).get(later_in, QuantPoint(None, "")).position}
    return Crosscheck(models, results, seam, {"config": "XINT8", "refined": REFINED, "calibrated_only": UNREFINED})
