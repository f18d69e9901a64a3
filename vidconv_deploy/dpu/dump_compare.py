"""Where the board and the host part ways: a board dump against a DPU bundle's golden vectors.

The bundle's golden vectors (:mod:`vidconv_deploy.dpu.golden`) hold every int8 tensor of one clip as
the integer reference computes it with the DPU's rounding. A dump taken on the board
(:mod:`vidconv_deploy.dpu.dump_reader`: VART's ``XLNX_ENABLE_DUMP``, ``xdputil run``, vai_q's
``deploy_check``) is matched to them by name, and the tensors are walked in the order the board
computes them: the early graph frame by frame, then the later graph, each in the topological order
of the bundle's quantized graph. The first tensor whose difference exceeds the tolerance is the
divergence; a divergent tensor further along the walk is "after the first divergence", because an
error upstream spreads to it and says nothing of its own.

For the first divergence the data name the likely cause, checked in this order:

- ``size``: the dump holds another number of values than the tensor;
- ``layout swapped``: the bytes match the host tensor read as NCHW (the board writes NHWC);
- ``fix position differs``: the dump matches the host codes moved by k bits (saturated to
  [-128, 127], half-up rounding), i.e. the board used fix point ``fp + k``; a dump that states its
  fix points (deploy_check) is checked against the bundle's as well;
- ``saturation``: the values that differ are clipped at -128/127 on one side only;
- ``rounding mode``: every difference is 1 LSB and sits where the host's unrounded value is exactly
  halfway (a .5 tie), found by rerunning the integer reference on the golden input of that run;
- ``unexplained`` otherwise.

The tolerance defaults to the golden dir's (``TOLERANCE_LSB``, with the reason in ``TOLERANCE_SOURCE``).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from rich.table import Table

from vidconv_deploy.bundle import read_manifest
from vidconv_deploy.dpu.dump_reader import GRAPHS, Dump, DumpFile, read_dump_dir, sanitize
from vidconv_deploy.dpu.golden import Golden, GoldenEntry, read_golden, to_layout
from vidconv_deploy.errors import UserError
from vidconv_deploy.fixpoint import arithmetic as fixpoint
from vidconv_deploy.progress import progress_bar
from vidconv_deploy.reference.executor import Executor, Fx, Raw

#: Fix-point moves tried when a tensor diverges (an int8 code moved by 8 bits or more is 0 or saturated).
MAX_SHIFT = 7
AFTER = "after the first divergence"


class TieRecorder(Executor):
    """The integer reference, also recording where each QuantizeLinear's input lies exactly halfway between two codes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__(model)
        self.ties: dict[str, np.ndarray] = {}

    def _quantize(self, proto: onnx.NodeProto, args: list) -> list:
        x, fp = args[0], self._fix_points[id(proto)]
        if isinstance(x, (Raw, Fx)):  # anything else is refused by the executor itself
            scaled = x.v.to(torch.float64) * 2.0 ** (fp - (x.e if isinstance(x, Fx) else 0))  # exact below 2**53
            tie = scaled - torch.floor(scaled) == 0.5
            if self.lowest_code(proto) == 0:  # a ReLU folded in: what is below 0 is quantized as 0, no tie
                tie &= scaled > 0
            self.ties[self.key_of_q[proto.output[0]]] = tie.numpy()
        return super()._quantize(proto, args)


@dataclasses.dataclass(frozen=True)
class HostTensor:
    """One golden tensor with what names it on the board: its ONNX node and vai_q module (from the compile spec)."""

    entry: GoldenEntry
    order: tuple[int, int, int]
    node: str | None
    module: str | None

    @property
    def key(self) -> str:
        return self.entry.key

    def matches(self, file: DumpFile) -> bool:
        if file.role is not None:
            return file.role == self.entry.role
        if file.name in (sanitize(self.entry.name), sanitize(self.node or self.entry.name)):
            return True
        return self.module is not None and f"_{self.module}_" in f"_{file.name}_"


@dataclasses.dataclass(frozen=True)
class DpuBundle:
    """What a DPU bundle holds for the comparison: golden vectors, quantized graphs, tensors in walk order."""

    directory: Path
    golden: Golden
    graphs: dict[str, onnx.ModelProto]
    tensors: tuple[HostTensor, ...]


def topological_positions(model: onnx.ModelProto) -> dict[str, int]:
    """Each tensor name -> the position of its producer in a topological order of the graph (Kahn's)."""
    nodes = list(model.graph.node)
    produced = {o: i for i, n in enumerate(nodes) for o in n.output}
    waiting = [sum(1 for t in set(n.input) if t in produced) for n in nodes]
    readers: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in set(n.input):
            if t in produced:
                readers.setdefault(produced[t], []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    positions: dict[str, int] = {}
    while ready:
        i = ready.pop(0)
        for o in nodes[i].output:
            positions[o] = len(positions)
        for j in readers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    return positions


def _spec_names(directory: Path, graph: str) -> tuple[dict[str, tuple[str, str]], str | None]:
    """The compile spec's tensor name -> (ONNX node, vai_q module), and its input name; empty without a spec."""
    path = directory / "compile" / "model" / f"{graph}.json"
    if not path.is_file():
        return {}, None
    spec = json.loads(path.read_text(encoding="utf-8"))
    return {layer["output"]: (layer["onnx_node"], layer["module"]) for layer in spec["layers"]}, spec["input"]["name"]


def load_bundle(directory: Path) -> DpuBundle:
    """Read a DPU bundle; anything that is not one is a :class:`UserError` naming the fix."""
    if not directory.is_dir():
        raise UserError(f"bundle {directory} is not a folder: give the folder vidconv-export --target dpu-<board> wrote")
    manifest = read_manifest(directory, "give the folder vidconv-export --target dpu-<board> wrote")
    family = manifest.get("recipe", {}).get("family")
    if family != "dpu":
        raise UserError(f"{directory} is a bundle of target {manifest.get('target')!r} ({family}), not a DPU bundle: "
                        f"export one with vidconv-export --target dpu-kv260 (or another dpu-<board>)")
    golden = read_golden(directory / "golden")
    graphs = {}
    for graph in GRAPHS:
        path = directory / "quant" / f"{graph}.onnx"
        if not path.is_file():
            raise UserError(f"{directory} has no quant/{graph}.onnx: the bundle is incomplete, export it again")
        graphs[graph] = onnx.load(str(path))
    tensors = []
    for graph_index, graph in enumerate(GRAPHS):
        positions = topological_positions(graphs[graph])
        names, input_name = _spec_names(directory, graph)
        for entry in (e for e in golden.entries if e.graph == graph):
            node, module = names.get(entry.name, (input_name if entry.role == "input" else None, None))
            order = (graph_index, entry.frame or 0, positions.get(entry.name, len(positions)))
            tensors.append(HostTensor(entry, order, node, module))
    return DpuBundle(directory, golden, graphs, tuple(sorted(tensors, key=lambda t: t.order)))


def _belongs(file: DumpFile, tensor: HostTensor) -> bool:
    """A file belongs to a graph run when its graph and frame agree; an early file without a frame is frame 0."""
    entry = tensor.entry
    if file.graph not in (None, entry.graph):
        return False
    if entry.frame is None:
        return file.frame is None
    return file.frame == entry.frame or (file.frame is None and entry.frame == 0)


def match_files(bundle: DpuBundle, dump: Dump) -> tuple[dict[str, DumpFile], tuple[DumpFile, ...]]:
    """Golden key -> the dump file that holds that tensor; and the files nothing matched."""
    matched: dict[str, DumpFile] = {}
    used: set[Path] = set()
    for tensor in bundle.tensors:
        file = next((f for f in dump.files if f.path not in used and _belongs(f, tensor) and tensor.matches(f)), None)
        if file is not None:
            matched[tensor.key] = file
            used.add(file.path)
    return matched, tuple(f for f in dump.files if f.path not in used)


# ---- diagnosis ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cause:
    """The likely cause of a divergence, and the numbers that show it."""

    name: str  # size | layout swapped | fix position differs | saturation | rounding mode | unexplained
    detail: str
    shift: int | None = None  # fix position differs: dump fix point - bundle fix point


def rescale(codes: np.ndarray, shift: int) -> np.ndarray:
    """int8 codes moved to fix point ``fp + shift``: times 2**shift, DPU rounding (half up), saturated."""
    moved = np.floor(codes.astype(np.float64) * 2.0**shift + 0.5)
    return np.clip(moved, fixpoint.QMIN, fixpoint.QMAX).astype(np.int16)


def _largest(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) if a.size else 0


def _rounding_direction(dump: np.ndarray, host: np.ndarray, differ: np.ndarray) -> str:
    diff = dump[differ].astype(np.int16) - host[differ]
    if np.all(dump[differ] % 2 == 0):
        return "to even (as ONNX Runtime), the bundle half up (DPU_ROUND)"
    if np.all(diff == -1) and np.all(host[differ] <= 0):
        return "away from zero, the bundle half up (DPU_ROUND)"
    if np.all(diff == -1):
        return "down, the bundle up (DPU_ROUND)"
    return "differently from the bundle's half up (DPU_ROUND)"


def diagnose(raw: np.ndarray, host: np.ndarray, fix_point: int, tolerance: int,
             ties: Callable[[], np.ndarray | None], dump_fix_point: int | None = None) -> Cause:
    """Why ``raw`` (the dumped bytes, flat) differs from ``host`` (int8, board layout NHWC or NC)."""
    if raw.size != host.size:
        return Cause("size", f"the dump holds {raw.size} values, the tensor {host.size} ({'x'.join(map(str, host.shape))})")
    dump = raw.reshape(host.shape)
    if host.ndim == 4:
        n, h, w, c = host.shape
        as_nchw = raw.reshape(n, c, h, w).transpose(0, 2, 3, 1)
        if _largest(as_nchw, host) <= tolerance:
            return Cause("layout swapped", "the dump holds the tensor in NCHW order; read as NCHW it matches the bundle "
                                           "(the DPU's tensors are NHWC: transpose before writing, or dump on the board)")
    shifts = [dump_fix_point - fix_point] if dump_fix_point not in (None, fix_point) else [
        k for k in sorted(range(-MAX_SHIFT, MAX_SHIFT + 1), key=abs) if k]
    fits = [(_largest(dump, rescale(host, k)), k) for k in shifts]
    best, k = min(fits, key=lambda f: (f[0], abs(f[1])))
    if best <= tolerance:
        bits = f"{k:+d} bit{'s' if abs(k) > 1 else ''}"
        return Cause("fix position differs", f"the dump matches the bundle's codes moved by {bits}: "
                     f"the board uses fix point {fix_point + k}, the bundle {fix_point}", k)
    diff = dump.astype(np.int16) - host
    differ = np.abs(diff) > 0
    count = int(differ.sum())
    clipped_dump, clipped_host = np.isin(dump, (fixpoint.QMIN, fixpoint.QMAX)), np.isin(host, (fixpoint.QMIN, fixpoint.QMAX))
    if np.all(clipped_dump[differ] & ~clipped_host[differ]):
        return Cause("saturation", f"{count} values are clipped at -128/127 in the dump where the bundle's are not")
    if np.all(clipped_host[differ] & ~clipped_dump[differ]):
        return Cause("saturation", f"{count} values are clipped at -128/127 in the bundle where the dump's are not")
    if int(np.abs(diff).max()) == 1:
        tie = ties()
        if tie is not None and np.all(tie[differ]):
            direction = _rounding_direction(dump, host, differ)
            return Cause("rounding mode", f"{count} values differ by 1 LSB, each at a .5 tie of the host "
                         f"({int(tie.sum())} ties in the tensor): the board rounds them {direction}")
    return Cause("unexplained", f"{count} values differ, by up to {int(np.abs(diff).max())} LSB; no single cause (layout, "
                                f"fix position, saturation, rounding mode) explains them")


# ---- report ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorRow:
    """One tensor of the walk: the dump file that holds it, the LSB differences, the fix points, the verdict."""

    key: str
    file: str | None
    shape: tuple[int, ...]
    fix_point: int
    dump_fix_point: int | None
    max_lsb: int | None
    histogram: dict[int, int]  # signed difference (dump - bundle) in LSB -> count; 0 included
    status: str  # exact | within | over | size | fix point | missing
    verdict: str  # ok | missing | first divergence | after the first divergence

    @property
    def diverges(self) -> bool:
        return self.status in ("over", "size", "fix point")


@dataclasses.dataclass(frozen=True)
class DumpReport:
    """The walk: every tensor in order, the first divergence and its cause, the dump files nothing matched."""

    bundle: str
    dump: str
    tolerance_lsb: int
    rows: tuple[TensorRow, ...]
    first: str | None
    cause: Cause | None
    unmatched: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.first is None

    @property
    def missing(self) -> list[str]:
        return [r.key for r in self.rows if r.status == "missing"]

    def to_dict(self) -> dict[str, Any]:
        rows = [{**dataclasses.asdict(r), "shape": list(r.shape), "histogram": {str(k): v for k, v in r.histogram.items()}}
                for r in self.rows]
        first = None if self.first is None else {"tensor": self.first, **dataclasses.asdict(self.cause)}
        return {"ok": self.ok, "bundle": self.bundle, "dump": self.dump, "tolerance_lsb": self.tolerance_lsb,
                "compared": sum(r.status != "missing" for r in self.rows), "first_divergence": first,
                "missing": self.missing, "unmatched_files": list(self.unmatched), "tensors": rows}

    def table(self) -> Table:
        table = Table(title=f"board dump vs golden vectors (tolerance {self.tolerance_lsb} LSB), walk order")
        for column in ("tensor", "dump file", "fix point (bundle/dump)", "max |LSB|", "|LSB| histogram", "verdict"):
            table.add_column(column, overflow="fold")
        for r in self.rows:
            fix = f"{r.fix_point}/{'-' if r.dump_fix_point is None else r.dump_fix_point}"
            bins = " ".join(f"{label}:{n}" for label, n in octaves(r.histogram).items())
            verdict = {"first divergence": f"[red]first divergence: {self.cause.name if self.cause else ''}[/red]",
                       AFTER: f"[yellow]{AFTER}[/yellow]", "missing": "[dim]missing[/dim]"}.get(r.verdict, r.status)
            table.add_row(r.key, r.file or "-", fix, "-" if r.max_lsb is None else str(r.max_lsb), bins or "-", verdict)
        return table

    def summary(self) -> str:
        compared = sum(r.status != "missing" for r in self.rows)
        tail = (f"{compared} tensors compared, {len(self.missing)} missing from the dump, "
                f"{len(self.unmatched)} dump files unmatched")
        if self.ok:
            return f"MATCH: every dumped tensor within {self.tolerance_lsb} LSB ({tail})"
        return f"DIVERGES at {self.first}: {self.cause.name}: {self.cause.detail} ({tail})"


def octaves(histogram: dict[int, int]) -> dict[str, int]:
    """A signed LSB histogram folded into |difference| octaves for a table: ``0``, ``1``, ``2-3``, ``4-7``, ..."""
    folded: dict[str, int] = {}
    for diff, count in sorted(histogram.items(), key=lambda item: abs(item[0])):
        size = abs(diff)
        low = 1 << (size.bit_length() - 1) if size else 0
        label = str(size) if size < 2 else f"{low}-{2 * low - 1}"
        folded[label] = folded.get(label, 0) + count
    return folded


def _host_ties(bundle: DpuBundle, tensor: HostTensor) -> np.ndarray | None:
    """Where the host's unrounded values of ``tensor`` are .5 ties: the reference rerun on the golden input of its run."""
    entry = tensor.entry
    source = next((t.entry for t in bundle.tensors
                   if t.entry.role == "input" and t.entry.graph == entry.graph and t.entry.frame == entry.frame), None)
    if source is None:
        return None
    model = bundle.graphs[entry.graph]
    feed = bundle.golden.load(source).astype(np.float32) * np.float32(2.0**-source.fix_point)
    recorder = TieRecorder(model)
    recorder.run({recorder.inputs[0]: feed}, rounding="dpu")
    tie = recorder.ties.get(entry.name)
    return None if tie is None else to_layout(tie, "NCHW", entry.layout)


def _histogram(diff: np.ndarray) -> dict[int, int]:
    return {int(k): int(v) for k, v in sorted(Counter(diff.ravel().tolist()).items())}


def compare_dump(bundle_dir: Path, dump_dir: Path, tolerance_lsb: int | None = None) -> DumpReport:
    """Walk the bundle's tensors in board order against the dump; the first divergence gets a diagnosed cause."""
    bundle = load_bundle(bundle_dir)
    dump = read_dump_dir(dump_dir)
    tolerance = bundle.golden.tolerance_lsb if tolerance_lsb is None else tolerance_lsb
    if tolerance < 0:
        raise UserError(f"--tolerance {tolerance}: give a number of LSB >= 0")
    matched, unmatched = match_files(bundle, dump)
    if not matched:
        names = ", ".join(sorted({f.name for f in dump.files})[:3])
        raise UserError(f"no file in {dump_dir} matches a tensor of {bundle_dir} (dump names such as {names}): dump the "
                        f"xmodel compiled from this bundle, and keep each graph's files in a folder named early/later")
    rows: list[TensorRow] = []
    first: HostTensor | None = None
    cause: Cause | None = None
    with progress_bar() as bar:
        task = bar.add_task("comparing tensors", total=len(bundle.tensors), info="")
        for tensor in bundle.tensors:
            bar.update(task, advance=1, info=tensor.key)
            rows.append(_row(bundle, dump, tensor, matched.get(tensor.key), tolerance, first is not None))
            if first is None and rows[-1].diverges:
                first = tensor
                raw = matched[tensor.key].values()
                host = bundle.golden.load(tensor.entry, tensor.entry.layout)
                cause = diagnose(raw, host, tensor.entry.fix_point, tolerance, lambda t=tensor: _host_ties(bundle, t),
                                 rows[-1].dump_fix_point)
    files = tuple(str(f.path.relative_to(dump_dir)) for f in unmatched)
    return DumpReport(str(bundle_dir), str(dump_dir), tolerance, tuple(rows), first.key if first else None, cause, files)


def _row(bundle: DpuBundle, dump: Dump, tensor: HostTensor, file: DumpFile | None, tolerance: int, after: bool) -> TensorRow:
    entry = tensor.entry
    dump_fp = dump.fix_points.get(entry.graph, {}).get(tensor.node) if tensor.node else None
    if file is None:
        return TensorRow(entry.key, None, entry.shape, entry.fix_point, dump_fp, None, {}, "missing", "missing")
    name = str(file.path.relative_to(dump.directory))
    raw = file.values()
    host = bundle.golden.load(entry, entry.layout)
    if raw.size != host.size:
        status, largest, histogram = "size", None, {}
    else:
        diff = raw.reshape(host.shape).astype(np.int16) - host
        largest, histogram = int(np.abs(diff).max()), _histogram(diff)
        status = "exact" if largest == 0 else ("within" if largest <= tolerance else "over")
        if dump_fp is not None and dump_fp != entry.fix_point:
            status = "fix point"
    diverges = status in ("over", "size", "fix point")
    verdict = (AFTER if after else "first divergence") if diverges else "ok"
    return TensorRow(entry.key, name, entry.shape, entry.fix_point, dump_fp, largest, histogram, status, verdict)
