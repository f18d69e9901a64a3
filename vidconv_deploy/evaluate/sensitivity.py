"""Sensitivity of an INT8 streaming split: which quantized tensor costs the accuracy (issue 17).

Every deviation of the QDQ graphs from float is one switch: an activation's QuantizeLinear/
DequantizeLinear pair (the graph input's too), an int8 weight, bias or constant, and each DPU
approximation the quantizer wrote into the graph (pool divisors, LeakyReLU's slope, hard sigmoid).
Per switch, two experiments on whole clips (the early graph per frame, the host collage, the later
graph), each scored against the float logits:

- *alone*: only this tensor quantized, everything else float: the noise it adds by itself;
- *kept float*: everything quantized except this tensor: what leaving it float wins back.

Each gives the logits' SQNR against float, top-1 agreement with float and, with labelled clips,
top-1 accuracy. One ONNX Runtime session per graph serves every experiment: a switch is a graph
input (:class:`Switch`), so a variant is a feed, not a new graph. With every switch on the graph
computes the bundle's QDQ graph bit for bit (ONNX Runtime's rounding: the integer-reference step
reports where the DPU's differs); with every switch off it computes the float graph to float32
rounding (a weight fed as an input is summed in another order than a constant one: 2e-6 on
vic-nano-dpu's logits), and that run is the float reference. The early graph's output and the
later graph's input are the same int8 codes on the board (the host tiles them into the collage),
so they are one unit.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.check.dpu import DPU, check_dpu
from vidconv_deploy.check.graph import load_graph
from vidconv_deploy.check.ops import build_ops
from vidconv_deploy.check.partition import partition
from vidconv_deploy.check.ruleset import RuleSet
from vidconv_deploy.data.dataset import EvalClips, protocol_for
from vidconv_deploy.data.sources import open_split
from vidconv_deploy.errors import UserError
from vidconv_deploy.fixpoint.qdq_metadata import TENSOR_MAP_KEY
from vidconv_deploy.onnx_session import ort_session
from vidconv_deploy.plots import save_layer_bars
from vidconv_deploy.progress import Subtask, no_subtask
from vidconv_deploy.quant.qdq import QuantResult
from vidconv_deploy.runners import GRAPHS, collage

#: Where the advice's fine-tuning facts come from.
FAST_FINETUNE_SOURCE = "UG1414 3.5, 'vai_q_pytorch Fast fine-tuning' (docs.amd.com/r/en-US/ug1414-vitis-ai/vai_q_pytorch-Fast-fine-tuning)"


@dataclasses.dataclass(frozen=True, eq=False)
class Switch:
    """One deviation from float in one graph, and the switch graph input that selects it.

    An activation or an approximation is a ``Where`` on a boolean input; a weight, bias or constant is
    itself an input fed either its dequantized int8 value or its float value (``values``): a ``Where``
    over a large weight costs ONNX Runtime more than the convolution that reads it.
    """

    graph: str
    name: str            # the float graph's tensor, initializer or node name
    kind: str            # input | activation | weight | bias | constant | approximation
    node: str            # the float graph's node that produces, owns or is it (a graph input: its own name)
    fix_point: int | None
    input: str
    values: tuple[np.ndarray, np.ndarray] | None = None  # (int8 dequantized, float) for a weight, bias or constant

    def feed(self, on: bool) -> np.ndarray:
        """What the switch graph's input gets with this deviation on (INT8) or off (float)."""
        return np.array(on) if self.values is None else self.values[0 if on else 1]


def _tensor_map(qdq_model: onnx.ModelProto) -> dict[str, str]:
    """Dequantized name -> float graph name (the quantizer's metadata)."""
    return next((json.loads(p.value) for p in qdq_model.metadata_props if p.key == TENSOR_MAP_KEY), {})


def _approximation_outputs(qdq: onnx.GraphProto, float_nodes: Mapping[str, onnx.NodeProto], names: Sequence[str]
                           ) -> dict[str, str]:
    """The tensor each approximated node's lowering writes (before its QuantizeLinear, if any) -> node name."""
    producer = {o: n for n in qdq.node for o in n.output}
    out: dict[str, str] = {}
    for name in names:
        tensor = float_nodes[name].output[0]
        dq = producer.get(tensor)
        if dq is not None and dq.op_type == "DequantizeLinear" and producer.get(dq.input[0]) is not None:
            tensor = producer[dq.input[0]].input[0]
        out[tensor] = name
    return out


def _dequantized(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> np.ndarray:
    """What a DequantizeLinear of initializers computes: (codes - zero point) * scale, in float32."""
    codes, scale, zero = (numpy_helper.to_array(inits[name]) for name in node.input)
    return (codes.astype(np.int64) - zero.astype(np.int64)).astype(np.float32) * scale.astype(np.float32)


def switch_graph(float_model: onnx.ModelProto, quant: QuantResult, graph: str) -> tuple[onnx.ModelProto, list[Switch]]:
    """``quant``'s QDQ graph with every deviation from ``float_model`` behind an input (see :class:`Switch`);
    the switches in graph order. Their inputs follow the graph's own."""
    model = copy.deepcopy(quant.model)
    g, info = model.graph, quant.info
    onnx_info = info["onnx"]
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    by_dequantized = {e["dequantized"]: (key, e) for key, e in onnx_info["tensors"].items()}
    float_inits = {i.name: i for i in float_model.graph.initializer}
    float_nodes = {n.name: n for n in float_model.graph.node}
    to_qdq = {f: d for d, f in _tensor_map(quant.model).items()}
    approximated = _approximation_outputs(g, float_nodes, list(onnx_info["approximations"]))
    nodes: list[onnx.NodeProto] = []
    switches: list[Switch] = []
    inputs: list[onnx.ValueInfoProto] = []

    def where(tensor: str, float_path: str, sw: Switch) -> None:
        nodes.append(helper.make_node("Where", [sw.input, f"{tensor}/int8", float_path], [tensor], name=f"{tensor}/switch"))
        inputs.append(helper.make_tensor_value_info(sw.input, TensorProto.BOOL, []))
        switches.append(sw)

    for node in g.node:
        out = node.output[0]
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # an int8 weight, bias or constant
            values = (_dequantized(node, inits), numpy_helper.to_array(float_inits[out]).astype(np.float32))
            if out in onnx_info["params"]:
                param = onnx_info["params"][out]
                sw = Switch(graph, out, param["role"], param["owner"], info["param"][out][0][1], out, values)
            else:
                key, _ = by_dequantized[out]
                sw = Switch(graph, out, "constant", key, info["output"][key][0][1], out, values)
            inputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, values[1].shape))
            switches.append(sw)
        elif node.op_type == "DequantizeLinear":
            key, entry = by_dequantized[out]
            kind = "input" if entry["op"] == "Input" else "activation"
            node.output[0] = f"{out}/int8"
            nodes.append(node)
            where(out, producer[node.input[0]].input[0],
                  Switch(graph, entry["float_tensor"], kind, key, info["output"][key][0][1], f"switch/{out}"))
        elif out in approximated:
            name = approximated[out]
            exact = copy.deepcopy(float_nodes[name])
            exact.name, exact.output[0] = f"{name}/float", f"{out}/float"
            for i, tensor in enumerate(exact.input):
                exact.input[i] = to_qdq.get(tensor, tensor)
                if tensor in float_inits and tensor not in inits:
                    g.initializer.append(float_inits[tensor])
                    inits[tensor] = float_inits[tensor]
            node.output[0] = f"{out}/int8"
            nodes += [node, exact]
            where(out, f"{out}/float", Switch(graph, name, "approximation", name, None, f"switch/{name}"))
        else:
            nodes.append(node)
    g.ClearField("node")
    g.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    g.ClearField("initializer")
    g.initializer.extend(kept)
    g.input.extend(inputs)
    onnx.checker.check_model(model)
    return model, switches


@dataclasses.dataclass(frozen=True)
class Unit:
    """What one experiment switches: one tensor, or the early output with the later input it becomes."""

    switches: tuple[Switch, ...]

    @property
    def first(self) -> Switch:
        return self.switches[0]


def units(early: Sequence[Switch], later: Sequence[Switch], early_output: str, later_input: str) -> list[Unit]:
    """Every switch as its own unit, except the later graph's input, which joins the early output's."""
    tied = next(s for s in later if s.kind == "input" and s.name == later_input)
    found = [Unit((s, tied) if s.name == early_output and s.kind == "activation" else (s,)) for s in early]
    if not any(len(u.switches) == 2 for u in found):
        raise UserError(f"the early graph's output {early_output!r} is not quantized: the streaming split's int8 "
                        f"hand-over is missing; re-run the quantize step")
    return found + [Unit((s,)) for s in later if s is not tied]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The logits of one experiment against float: SQNR (dB, pooled over clips), top-1 agreement and top-1 (%)."""

    sqnr_db: float
    top1_agreement: float
    top1: float | None


def outcome(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> Outcome:
    f, q = reference.astype(np.float64), logits.astype(np.float64)
    noise, signal = float(np.sum((q - f) ** 2)), float(np.sum(f * f))
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    agreement = float(100.0 * np.mean(q.argmax(1) == f.argmax(1)))
    top1 = None if labels is None else float(100.0 * np.mean(q.argmax(1) == labels))
    return Outcome(sqnr, agreement, top1)


@dataclasses.dataclass(frozen=True)
class TensorSensitivity:
    """One unit's two experiments."""

    graph: str
    tensor: str
    kind: str
    node: str
    fix_point: int | None
    alone: Outcome
    kept_float: Outcome

    def recovery_db(self, int8: Outcome) -> float:
        """How many dB of logit SQNR leaving this tensor float wins back over the all-INT8 graphs."""
        return self.kept_float.sqnr_db - int8.sqnr_db


@dataclasses.dataclass
class Sensitivity:
    """Every unit's experiments, in graph order (early, then later)."""

    clips: int
    float_top1: float | None
    int8: Outcome
    tensors: list[TensorSensitivity]

    @property
    def ranked(self) -> list[TensorSensitivity]:
        """Most sensitive first: lowest logit SQNR quantized alone, then most SQNR won back kept float."""
        return sorted(self.tensors, key=lambda t: (t.alone.sqnr_db, -t.kept_float.sqnr_db))

    def to_dict(self) -> dict[str, Any]:
        """The manifest's record: the all-INT8 outcome and every unit, ranked."""
        return {"clips": self.clips, "labelled": self.float_top1 is not None, "float_top1": self.float_top1,
                "int8": dataclasses.asdict(self.int8),
                "ranked": [{**dataclasses.asdict(t), "recovery_db": t.recovery_db(self.int8)} for t in self.ranked]}


class _Experiments:
    """The two switch graphs in one ONNX Runtime session each; clip logits for any set of switches on."""

    def __init__(self, grid: tuple[int, int], models: Mapping[str, onnx.ModelProto], switches: Mapping[str, Sequence[Switch]],
                 clips: Sequence[np.ndarray]) -> None:
        self.grid = grid
        self.sessions = {g: ort_session(m) for g, m in models.items()}
        self.switches = switches
        self.inputs = {g: self.sessions[g].get_inputs()[0].name for g in GRAPHS}
        self.frames = [np.ascontiguousarray(f[None], dtype=np.float32) for clip in clips for f in clip]
        self.cells = grid[0] * grid[1]
        self._early: dict[frozenset[str], list[np.ndarray]] = {}

    def _run(self, graph: str, data: np.ndarray, on: frozenset[str]) -> np.ndarray:
        feed = {self.inputs[graph]: data, **{s.input: s.feed(s.input in on) for s in self.switches[graph]}}
        return self.sessions[graph].run(None, feed)[0]

    def early(self, on: frozenset[str]) -> list[np.ndarray]:
        """The early output of every frame with ``on`` switched on (kept: one early set serves many experiments)."""
        if on not in self._early:
            self._early[on] = [self._run("early", frame, on) for frame in self.frames]
        return self._early[on]

    def logits(self, on: Mapping[str, frozenset[str]]) -> np.ndarray:
        """``(clips, classes)`` with the switches ``on[graph]`` on and every other one off."""
        features = self.early(on["early"])
        return np.concatenate([self._run("later", collage(features[i:i + self.cells], self.grid), on["later"])
                               for i in range(0, len(features), self.cells)])


def sensitivity(float_graphs: Mapping[str, onnx.ModelProto], quant: Mapping[str, QuantResult], grid: tuple[int, int],
                clips: Sequence[np.ndarray], labels: Sequence[int] | None = None, progress: Subtask = no_subtask
                ) -> Sensitivity:
    """Each unit quantized alone and kept float, on ``clips`` ``(L, 3, H, W)`` through the streaming split on ``grid``.

    ``float_graphs`` and ``quant``: the split's float graphs and their QDQ graphs (``early``, ``later``);
    ``labels``: the clips' classes, for top-1 accuracy. Raises UserError without clips.
    """
    if not clips:
        raise UserError("sensitivity needs at least one clip: give sensitivity.clips >= 1 in the recipe")
    built = {g: switch_graph(float_graphs[g], quant[g], g) for g in GRAPHS}
    switches = {g: built[g][1] for g in GRAPHS}
    found = units(switches["early"], switches["later"], float_graphs["early"].graph.output[0].name,
                  float_graphs["later"].graph.input[0].name)
    runs = _Experiments(grid, {g: built[g][0] for g in GRAPHS}, switches, clips)
    every = {g: frozenset(s.input for s in switches[g]) for g in GRAPHS}
    none = {g: frozenset[str]() for g in GRAPHS}
    truth = None if labels is None else np.asarray(labels)
    with progress("sensitivity", 2 + 2 * len(found)) as advance:
        reference = runs.logits(none)
        advance(1)
        int8 = outcome(runs.logits(every), reference, truth)
        advance(1)
        rows = []
        for unit in found:
            mine = {g: frozenset(s.input for s in unit.switches if s.graph == g) for g in GRAPHS}
            alone = outcome(runs.logits(mine), reference, truth)
            advance(1)
            kept = outcome(runs.logits({g: every[g] - mine[g] for g in GRAPHS}), reference, truth)
            advance(1)
            s = unit.first
            rows.append(TensorSensitivity(s.graph, s.name, s.kind, s.node, s.fix_point, alone, kept))
    float_top1 = None if truth is None else float(100.0 * np.mean(reference.argmax(1) == truth))
    return Sensitivity(len(clips), float_top1, int8, rows)


def labelled_clips(dataset: Path, frames: int, image_size: tuple[int, int], count: int) -> tuple[list[np.ndarray], list[int]]:
    """The first test view of up to ``count`` videos of ``dataset``'s test split, and their labels."""
    source = open_split(dataset, "test")
    found = EvalClips(source.items[: count * 2], protocol_for(source, frames, None), image_size, progress=False)
    pairs = [(views[0].numpy(), int(label)) for views, label in found][:count]
    if not pairs:
        raise UserError(f"no usable test videos in {dataset}: give --eval a dataset with readable test videos")
    return [c for c, _ in pairs], [label for _, label in pairs]


# ---- what to do about the worst tensors on a DPU -----------------------------------------------------


def cpu_move(model: onnx.ModelProto, rules: RuleSet, node: str) -> dict[str, Any] | None:
    """The partition if ``node``'s op (and the ops fused into it) ran on the CPU: subgraphs per device and the
    bytes crossing into and out of its CPU subgraph per run; None when the op is not on the DPU."""
    graph = load_graph(model)
    ops = build_ops(graph)
    placement, _ = check_dpu(graph, ops, rules)
    op = next((o for o in ops if any(n.name == node for n in o.nodes)), None)
    if op is None or op.name not in placement or placement[op.name].device != DPU:
        return None
    devices = {name: p.device for name, p in placement.items()}
    moved = [name for name, p in placement.items() if p is placement[op.name]]
    devices.update({name: "CPU" for name in moved})
    split = partition(ops, devices, graph)
    mine = next(sg for sg in split["subgraphs"] if op.name in sg["ops"])
    return {"ops": moved, "subgraphs": {d: f["subgraphs"] for d, f in split["devices"].items()},
            "dpu_to_cpu_bytes": mine["dpu_to_cpu_bytes"], "cpu_to_dpu_bytes": mine["cpu_to_dpu_bytes"]}


#: What to try per kind of tensor. Fine-tuning first, as UG1414 advises, then a different lowering.
_FINETUNE = ("fine-tune: re-export with --quant-recovery fast_finetune (vai_q_pytorch's AdaQuant), QAT if that is "
             f"not enough ({FAST_FINETUNE_SOURCE})")
_KIND_ADVICE: dict[str, Callable[[TensorSensitivity], str]] = {
    "weight": lambda t: (f"{_FINETUNE}; different lowering: one power-of-two scale covers every output channel "
                         f"(fix point {t.fix_point}), so a few large channels coarsen the rest: split the conv along "
                         f"output channels or equalize its channels with its neighbour's before quantizing"),
    "bias": lambda t: (f"--quant-recovery bias_correction, or {_FINETUNE}; the bias fix point {t.fix_point} is bounded "
                       f"by the conv's shift_bias rule (quant_info.json adjustments)"),
    "activation": lambda t: (f"{_FINETUNE}; check the calibration: fix point {t.fix_point} is one scale for the whole "
                             f"tensor (quant_info.json calibration history)"),
    "constant": lambda t: f"a constant operand at fix point {t.fix_point}: fold it into the neighbouring conv (different lowering)",
    "input": lambda t: (f"the host quantizes the input at fix point {t.fix_point}: a preprocessing whose range fits "
                        f"int8 better (different normalisation) is the lowering to change"),
    "approximation": lambda t: ("the DPU computes this op approximately (quant_info.json approximations): a lowering it "
                                "computes exactly (e.g. a pool window whose size is a power of two), or the op on the CPU"),
}


def advice(result: Sensitivity, graphs: Mapping[str, onnx.ModelProto], rules: RuleSet, performance: Mapping[str, Any],
           top: int = 3) -> list[dict[str, Any]]:
    """For the ``top`` most sensitive units: what to try (fine-tune, a different lowering), and what moving the
    op to a CPU subgraph costs (the predicted partition, bytes across, DPU time freed by the performance model)."""
    rows = []
    for t in result.ranked[:top]:
        row: dict[str, Any] = {"graph": t.graph, "tensor": t.tensor, "kind": t.kind, "node": t.node,
                               "advice": _KIND_ADVICE[t.kind](t)}
        moved = None if t.kind == "input" else cpu_move(graphs[t.graph], rules, t.node)
        if moved is not None:
            layers = {layer["layer"]: layer for layer in performance["graphs"][t.graph]["layers"]}
            costed = [layers[name] for name in moved["ops"] if name in layers]
            moved.update(dpu_ms_freed=sum(layer["ms"] for layer in costed), macs=sum(layer["macs"] for layer in costed))
            row["cpu"] = moved
        rows.append(row)
    return rows


def save_sensitivity_plot(result: Sensitivity, path: str | Path, title: str, worst: int = 3, shown: int = 30) -> None:
    """Logit SQNR with each unit alone in INT8 for the ``shown`` most sensitive units, most sensitive first
    (a bar per tensor of a whole graph pair is too many to read); the ``worst`` in red."""
    order = result.ranked[:shown]
    if len(result.ranked) > shown:
        title = f"{title} ({shown} most sensitive of {len(result.ranked)})"
    save_layer_bars([f"{t.graph}:{t.tensor}" for t in order],
                    [t.alone.sqnr_db if math.isfinite(t.alone.sqnr_db) else np.nan for t in order], path, title,
                    "logit SQNR (dB), only this tensor INT8",
                    colors=["tab:red" if rank < worst else "tab:blue" for rank in range(len(order))])
