"""A DPU performance model: per-layer cycles and bytes of an ONNX graph, its latency and fps per board.

What the rule checker places on the DPU (``check_dpu``: engine per op, activations and BatchNorm
fused into their producer) is costed layer by layer from the target's resolved rule set, so the
model follows any DPU configuration written there:

* conv engine (Conv, Gemm/MatMul as a 1x1 conv): the array computes PP output pixels along the
  width x ICP input channels x OCP output channels per cycle (PG338 "Architecture of the
  DPUCZDX8G"); a layer takes ``N x rows x ceil(W_out/PP) x kh x kw x ceil(C_in/ICP) x
  ceil(C_out/OCP)`` cycles, so channel counts that are not multiples of ICP/OCP and output widths
  that are not multiples of PP waste lanes exactly as on the array;
* ALU (depthwise conv, pooling): ``N x rows x ceil(W_out/ALU_PP) x kh x kw x ceil(C/ICP)``
  cycles, ALU_PP = PP/2 on DPUCZDX8G (PG338 "DepthwiseConv");
* element-wise engine (Add/Mul of feature maps): each input read at ``PP x ICP`` per cycle (a
  model assumption: PG338 gives no figure);
* Concat, Split, Slice, Reshape, Flatten: data movement by addressing, no cycles (PG338 features:
  "Concat ... supported by tool-chain");
* memory: int8 weights (and one int8 bias per output channel) are loaded once per frame, feature
  maps are read from and written back to DDR (one byte per element), through the core's data
  ports (PG338 "Port Descriptions": two 128-bit AXI masters at the DPU clock);
* a layer costs ``max(compute, memory) + overhead``: compute cycles / (efficiency x clock), bytes /
  port bandwidth, and a fixed per-layer overhead (instruction issue, pipeline fill);
* a frame on one core takes the sum of its layers; ``cores`` cores (x batch engines) run frames in
  parallel (multi-thread), bounded by the board's shared DDR bandwidth; a single thread also waits
  for the host's per-frame work (the ARM's pre/post-processing and the runtime's calls).

The efficiency, overhead and host figures are not in any datasheet: they are fitted against the
Vitis AI Model Zoo's published throughput by ``bench/dpu_cost_validation.py`` and written, with
that provenance, under ``perf`` in the rule set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from vidconv_deploy.check.dpu import DPU, Placement, attr, check_dpu
from vidconv_deploy.check.graph import ModelGraph, load_graph
from vidconv_deploy.check.ops import Op, build_ops
from vidconv_deploy.check.ruleset import RuleSet
from vidconv_deploy.errors import UserError

_MOVEMENT = frozenset({"Concat", "Split", "Slice", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Pad", "Transpose"})
_POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"})


@dataclasses.dataclass(frozen=True)
class DpuConfig:
    """The figures the model reads from a resolved DPU rule set (see the module docstring for each)."""

    target: str
    arch: str
    pp: int
    icp: int
    ocp: int
    alu_pp: int
    clock_hz: float
    cores: int
    port_bytes_per_s: float
    ddr_bytes_per_s: float
    conv_efficiency: float
    layer_overhead_cycles: int
    host_s_per_frame: float

    @classmethod
    def from_rules(cls, rules: RuleSet) -> DpuConfig:
        data = rules.data
        board, conv, perf = data["board"], data["engines"]["conv"], data["perf"]
        clock = board["clock_mhz"] * 1e6
        ports = perf["data_ports"]
        ddr = board["ddr"]
        return cls(
            target=rules.name, arch=data.get("arch", {}).get("name", rules.name),
            pp=int(conv["pixel_parallel"]), icp=int(data["channel_parallel"]), ocp=int(conv["output_channel_parallel"]),
            alu_pp=int(perf["alu_pixel_parallel"]), clock_hz=clock,
            cores=int(board.get("cores", 1)) * int(board.get("batch", 1)),
            port_bytes_per_s=ports["count"] * ports["bits"] / 8 * clock,
            ddr_bytes_per_s=ddr["bits"] / 8 * ddr["mega_transfers_s"] * 1e6 * perf["ddr_efficiency"],
            conv_efficiency=float(perf["conv_efficiency"]), layer_overhead_cycles=int(perf["layer_overhead_cycles"]),
            host_s_per_frame=float(perf["host_ms_per_frame"]) / 1e3)

    @property
    def peak_macs_per_s(self) -> float:
        """All cores' conv arrays at full use (PG338: peak ops = 2 x PP x ICP x OCP per cycle)."""
        return self.pp * self.icp * self.ocp * self.clock_hz * self.cores


@dataclasses.dataclass(frozen=True)
class LayerWork:
    """One op's work on the DPU, independent of efficiency figures: cycles at full rate, bytes moved."""

    name: str
    op_type: str
    engine: str          # conv | alu | eltwise | movement | fused | CPU | unsupported
    macs: int
    cycles: int
    weight_bytes: int
    feature_bytes: int


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """A layer's time on one core: the larger of compute and memory time, plus the per-layer overhead."""

    work: LayerWork
    compute_s: float
    memory_s: float
    seconds: float

    @property
    def bound(self) -> str:
        if self.seconds == 0:
            return "-"
        return "memory" if self.memory_s > self.compute_s else "compute"


@dataclasses.dataclass(frozen=True)
class GraphEstimate:
    """One graph (one inference) on one board: per-layer costs and the totals the fps figures use."""

    config: DpuConfig
    layers: list[LayerCost]

    @property
    def seconds(self) -> float:
        """Latency of one inference on one core."""
        return sum(c.seconds for c in self.layers)

    @property
    def bytes(self) -> int:
        return sum(c.work.weight_bytes + c.work.feature_bytes for c in self.layers)

    @property
    def macs(self) -> int:
        return sum(c.work.macs for c in self.layers)

    @property
    def off_dpu(self) -> list[str]:
        """Ops the model does not cost: they run on the board CPU (or nowhere)."""
        return [c.work.name for c in self.layers if c.work.engine in ("CPU", "unsupported")]

    def bottlenecks(self, top: int = 5) -> list[LayerCost]:
        return sorted((c for c in self.layers if c.seconds > 0), key=lambda c: -c.seconds)[:top]


def dpu_cores(count: int) -> str:
    """``1 DPU core`` / ``3 DPU cores``: how the tables name a board's cores."""
    return f"{count} DPU core{'s' if count != 1 else ''}"


def _prod(values: Sequence[int]) -> int:
    return math.prod(int(v) for v in values)


def _rows_width(shape: Sequence[int]) -> tuple[int, int]:
    """(N x every spatial dim but the last, the last spatial dim = width) of an N, C, ... tensor."""
    if len(shape) <= 2:
        return int(shape[0]) if shape else 1, 1
    return int(shape[0]) * _prod(shape[2:-1]), int(shape[-1])


class _Coster:
    """Turns each placed op into :class:`LayerWork` with the array sizes of one DPU configuration."""

    def __init__(self, graph: ModelGraph, config: DpuConfig) -> None:
        self.g, self.c = graph, config

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.g.static_shape(name)
        if shape is None:
            raise UserError(f"tensor {name!r} has no static shape: export the model with fixed input sizes to estimate its performance")
        return shape

    def features(self, op: Op) -> int:
        return sum(_prod(self.shape(t)) for t in [*op.inputs, *op.outputs])

    def work(self, op: Op, placement: Placement, fused: bool) -> LayerWork:
        base = dict(name=op.name, op_type=op.op_type, macs=0, cycles=0, weight_bytes=0, feature_bytes=0)
        if placement.device != DPU:
            return LayerWork(engine=placement.device, **base)
        if fused:
            return LayerWork(engine="fused", **base)
        if op.op_type in _MOVEMENT or placement.engine is None:
            return LayerWork(engine="movement", **base)
        if op.op_type in ("Gemm", "MatMul"):
            return self.matmul(op, base)
        if op.op_type in _POOLS:
            return self.pool(op, base)
        if placement.engine == "conv":
            return self.conv(op, base)
        if placement.engine == "alu":  # depthwise conv, or a per-channel affine op as a 1x1 depthwise conv
            return self.depthwise(op, base)
        return self.eltwise(op, base)

    def conv(self, op: Op, base: dict[str, Any]) -> LayerWork:
        node = op.node
        w, y = self.shape(node.input[1]), self.shape(node.output[0])
        cin, cout, kernel = w[1], w[0], _prod(w[2:])
        rows, width = _rows_width(y)
        # A 3-D conv (conv3d cores) runs its depth taps as extra kernel positions.
        cycles = rows * math.ceil(width / self.c.pp) * kernel * math.ceil(cin / self.c.icp) * math.ceil(cout / self.c.ocp)
        return LayerWork(engine="conv", **{**base, "macs": _prod(y) * cin * kernel, "cycles": cycles,
                                           "weight_bytes": _prod(w) + cout, "feature_bytes": self.features(op)})

    def matmul(self, op: Op, base: dict[str, Any]) -> LayerWork:
        node = op.node
        w, y = self.shape(node.input[1]), self.shape(node.output[0])
        trans_b = op.op_type == "Gemm" and int(attr(node, "transB", 0))
        k, n = (w[1], w[0]) if trans_b else (w[0], w[1])
        pixels = _prod(y) // n  # rows of the product, laid along the width like conv output pixels
        cycles = math.ceil(pixels / self.c.pp) * math.ceil(k / self.c.icp) * math.ceil(n / self.c.ocp)
        return LayerWork(engine="conv", **{**base, "macs": pixels * k * n, "cycles": cycles,
                                           "weight_bytes": _prod(w) + n, "feature_bytes": self.features(op)})

    def depthwise(self, op: Op, base: dict[str, Any]) -> LayerWork:
        y = self.shape(op.outputs[0])
        kernel = _prod(self.shape(op.node.input[1])[2:]) if op.op_type == "Conv" else 1
        rows, width = _rows_width(y)
        channels = y[1]
        cycles = rows * math.ceil(width / self.c.alu_pp) * kernel * math.ceil(channels / self.c.icp)
        return LayerWork(engine="alu", **{**base, "macs": _prod(y) * kernel, "cycles": cycles,
                                          "weight_bytes": channels * (kernel + 1), "feature_bytes": self.features(op)})

    def pool(self, op: Op, base: dict[str, Any]) -> LayerWork:
        x, y = self.shape(op.inputs[0]), self.shape(op.outputs[0])
        if op.op_type.startswith(("Global", "Reduce")):
            kernel = _prod(x[2:])
        else:
            kernel = _prod(attr(op.node, "kernel_shape", [1]))
        rows, width = _rows_width(y)
        cycles = rows * math.ceil(width / self.c.alu_pp) * kernel * math.ceil(y[1] / self.c.icp)
        return LayerWork(engine="alu", **{**base, "cycles": cycles, "feature_bytes": self.features(op)})

    def eltwise(self, op: Op, base: dict[str, Any]) -> LayerWork:
        y = self.shape(op.outputs[0])
        rows, width = _rows_width(y)
        cycles = len(op.inputs) * rows * math.ceil(width / self.c.pp) * math.ceil(y[1] / self.c.icp)
        return LayerWork(engine="eltwise", **{**base, "cycles": cycles, "feature_bytes": self.features(op)})


def graph_work(model: onnx.ModelProto | str | Path, rules: RuleSet) -> list[LayerWork]:
    """Every counted op of ``model`` with its work on the DPU of ``rules`` (CPU ops listed, not costed)."""
    graph = load_graph(model)
    ops = build_ops(graph)
    placement, _ = check_dpu(graph, ops, rules)
    coster = _Coster(graph, DpuConfig.from_rules(rules))
    seen: set[int] = set()
    works = []
    for op in ops:
        if op.elided or op.name not in placement:
            continue
        place = placement[op.name]
        # check_dpu hands a fused op (activation, BatchNorm) its producer's Placement object: seen before.
        works.append(coster.work(op, place, fused=id(place) in seen and place.engine is not None))
        seen.add(id(place))
    return works


def estimate(works: Sequence[LayerWork], config: DpuConfig) -> GraphEstimate:
    """Each layer's time on one core of ``config`` (see the module docstring for the formula)."""
    overhead = config.layer_overhead_cycles / config.clock_hz
    layers = []
    for w in works:
        if w.engine not in ("conv", "alu", "eltwise"):
            layers.append(LayerCost(w, 0.0, 0.0, 0.0))
            continue
        compute = w.cycles / (config.conv_efficiency * config.clock_hz)
        memory = (w.weight_bytes + w.feature_bytes) / config.port_bytes_per_s
        layers.append(LayerCost(w, compute, memory, max(compute, memory) + overhead))
    return GraphEstimate(config, layers)


def throughput(seconds: float, bytes_per_frame: int, config: DpuConfig) -> dict[str, float]:
    """Frames per second of work that takes ``seconds`` on one core and moves ``bytes_per_frame``.

    single thread: one frame at a time, the host's per-frame work not overlapped;
    multi-thread: every core busy, capped by the board's shared DDR bandwidth.
    """
    multi = min(config.cores / seconds, config.ddr_bytes_per_s / bytes_per_frame)
    return {"latency_ms": seconds * 1e3, "fps_single_thread": 1 / (seconds + config.host_s_per_frame),
            "fps_multi_thread": multi}


def perf_summary(est: GraphEstimate, top: int = 10) -> dict[str, Any]:
    """The JSON form of one graph's estimate: totals, throughput, every layer and the bottlenecks."""
    total = est.seconds
    return {
        "macs": est.macs, "bytes": est.bytes, **throughput(total, est.bytes, est.config),
        "off_dpu": est.off_dpu,
        "bottlenecks": [{"layer": c.work.name, "op_type": c.work.op_type, "ms": c.seconds * 1e3,
                         "share": c.seconds / total, "bound": c.bound} for c in est.bottlenecks(top)],
        "layers": [{"layer": c.work.name, "op_type": c.work.op_type, "engine": c.work.engine, "macs": c.work.macs,
                    "cycles": c.work.cycles, "bytes": c.work.weight_bytes + c.work.feature_bytes,
                    "compute_ms": c.compute_s * 1e3, "memory_ms": c.memory_s * 1e3, "ms": c.seconds * 1e3,
                    "bound": c.bound} for c in est.layers],
    }


def config_facts(config: DpuConfig) -> dict[str, Any]:
    """The configuration an estimate used, for the manifest and the report."""
    return {"target": config.target, "arch": config.arch, "pp_icp_ocp": [config.pp, config.icp, config.ocp],
            "alu_pixel_parallel": config.alu_pp, "clock_mhz": config.clock_hz / 1e6, "cores": config.cores,
            "port_gb_per_s": config.port_bytes_per_s / 1e9, "ddr_gb_per_s": config.ddr_bytes_per_s / 1e9,
            "conv_efficiency": config.conv_efficiency, "layer_overhead_cycles": config.layer_overhead_cycles,
            "host_ms_per_frame": config.host_s_per_frame * 1e3, "peak_macs_per_s": config.peak_macs_per_s}


def model_performance(model: onnx.ModelProto | str | Path, rules: RuleSet, top: int = 10) -> dict[str, Any]:
    """``vidconv-check --perf``: one ONNX model's estimate on one DPU target's resolved rule set."""
    config = DpuConfig.from_rules(rules)
    return {"config": config_facts(config), **perf_summary(estimate(graph_work(model, rules), config), top)}


def streaming_performance(graphs: Mapping[str, onnx.ModelProto], frames: int, rules: RuleSet, top: int = 10
                          ) -> dict[str, Any]:
    """A streaming split on one board: the full clip (``frames`` early runs + 1 later run) and streaming
    (1 early + 1 later run per new frame), each single- and multi-thread; per graph, its layers."""
    config = DpuConfig.from_rules(rules)
    est = {name: estimate(graph_work(model, rules), config) for name, model in graphs.items()}
    early, later = est["early"], est["later"]
    clip_s, clip_bytes = frames * early.seconds + later.seconds, frames * early.bytes + later.bytes
    stream_s, stream_bytes = early.seconds + later.seconds, early.bytes + later.bytes
    clip = throughput(clip_s, clip_bytes, config)
    # The host's per-frame work happens once per clip for a full clip and once per new frame when streaming.
    return {"config": config_facts(config),
            "full_clip": {"frames": frames, **{k.replace("fps", "clips_per_s"): v for k, v in clip.items()}},
            "streaming": throughput(stream_s, stream_bytes, config),
            "graphs": {name: perf_summary(e, top) for name, e in est.items()}}


def slowest_layers(performance: Mapping[str, Any], top: int = 20) -> list[dict[str, Any]]:
    """The ``top`` costliest layers of one streamed frame (one early and one later run), graph-qualified."""
    layers = [{**layer, "layer": f"{graph}:{layer['layer']}"} for graph, g in performance["graphs"].items()
              for layer in g["layers"] if layer["ms"] > 0]
    return sorted(layers, key=lambda layer: -layer["ms"])[:top]


def save_layer_chart(performance: Mapping[str, Any], path: str | Path, title: str, top: int = 20) -> None:
    """Bar chart of the slowest layers of a streamed frame: blue compute-bound, orange memory-bound."""
    from vidconv_deploy.plots import save_layer_bars

    layers = slowest_layers(performance, top)
    save_layer_bars([layer["layer"] for layer in layers], [layer["ms"] for layer in layers], path, title, "estimated ms",
                    colors=["tab:orange" if layer["bound"] == "memory" else "tab:blue" for layer in layers])


def print_performance(performance: Mapping[str, Any], console: Any, top: int = 10) -> None:
    """``vidconv-check --perf``'s table for people: the slowest layers, then latency and fps."""
    from rich.table import Table

    config = performance["config"]
    table = Table(title=f"estimated on {config['target']} ({config['arch']}, {config['clock_mhz']:g} MHz, {dpu_cores(config['cores'])})")
    for column in ("layer", "op", "engine", "ms", "share", "bound"):
        table.add_column(column)
    total = performance["latency_ms"]
    for layer in sorted(performance["layers"], key=lambda layer: -layer["ms"])[:top]:
        table.add_row(layer["layer"], layer["op_type"], layer["engine"], f"{layer['ms']:.4f}", f"{layer['ms'] / total:.0%}", layer["bound"])
    console.print(table)
    console.print(f"latency {total:.3f} ms per inference on one core; {performance['fps_single_thread']:.1f} fps single thread, "
                  f"{performance['fps_multi_thread']:.1f} fps multi-thread (an estimate: bench/dpu_cost_validation.py)")
    if performance["off_dpu"]:
        console.print(f"not costed (board CPU): {', '.join(performance['off_dpu'])}")
