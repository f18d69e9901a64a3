"""Comparisons of the integer reference: with ONNX Runtime's fake-quant run, with DPU rounding, with float.

- :func:`compare_with_onnxruntime`: bit-exactness of every int8 tensor against ONNX Runtime's
  QuantizeLinear outputs (graph optimisations off, so ORT computes what the QDQ graph says). Tensors
  where ORT's float32 arithmetic cannot be exact are reported as such, not as mismatches.
- :func:`rounding_differences`: where the DPU's half-up rounding changes a tensor, and by how many LSB.
- :func:`layer_report` / :func:`save_sqnr_plot`: per quantized tensor, SQNR, cosine and the largest
  error in LSB against the float graph, and a PNG chart of the SQNR.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from rich.table import Table

from vidconv_deploy.fixpoint.qdq_metadata import TENSOR_MAP_KEY
from vidconv_deploy.onnx_session import ort_session
from vidconv_deploy.parallel import chunks, core_pool
from vidconv_deploy.plots import save_layer_bars
from vidconv_deploy.reference.executor import Executor, ReferenceRun

#: One feed (graph input name -> array) or several.
Feeds = Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]]


def _feed_list(feeds: Feeds) -> list[Mapping[str, np.ndarray]]:
    return [feeds] if isinstance(feeds, Mapping) else list(feeds)


def _session(model: onnx.ModelProto, extra: Mapping[str, int], threads: int) -> tuple[ort.InferenceSession, list[str]]:
    """:func:`ort_session` of ``model`` with ``extra`` tensors (name -> elem type) as outputs, on ``threads``
    intra-op threads (0: ONNX Runtime's default, every core; 1 inside the core pool), without the arena:
    these sessions return every tensor of the graph, and ORT's arena would keep that peak for the session's
    life (a ViC-T 224 collage: hundreds of MB per session)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # a third of serializing and parsing a 170 MB graph
    present = {o.name for o in copy.graph.output}
    for name, elem in extra.items():
        if name not in present:
            copy.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    session = ort_session(copy.SerializeToString(), threads=threads, arena=False)
    return session, [o.name for o in copy.graph.output]


def _run(session: ort.InferenceSession, names: list[str], feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    inputs = {i.name: np.asarray(feed[i.name], dtype=np.float32) for i in session.get_inputs()}
    return dict(zip(names, session.run(names, inputs), strict=True))


@dataclass
class TensorDiff:
    """One int8 tensor compared over all feeds: how many elements differ and by how many LSB at most."""

    tensor: str
    fix_point: int
    elements: int = 0
    differing: int = 0
    max_lsb: int = 0
    float32_exact: bool = True
    note: str = ""

    def merge(self, counts: tuple[int, int, int]) -> None:
        """Add one feed's :func:`lsb_counts`."""
        elements, differing, max_lsb = counts
        self.elements += elements
        self.differing += differing
        self.max_lsb = max(self.max_lsb, max_lsb)


def lsb_counts(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """Elements, elements that differ, and the largest difference in LSB of two int8 tensors."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return diff.size, int(np.count_nonzero(diff)), int(diff.max()) if diff.size else 0


#: One feed's int8 comparison, tensor by tensor: (fix point, :func:`lsb_counts`).
Counts = dict[str, tuple[int, tuple[int, int, int]]]


def _merge_counts(rows: dict[str, TensorDiff], counts: Counts) -> None:
    for key, (fix_point, part) in counts.items():
        rows.setdefault(key, TensorDiff(key, fix_point)).merge(part)


class _LazySession:
    """An ORT session opened by the first feed that needs it (its outputs depend on that feed's run), once,
    whichever core-pool thread gets there first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.session: ort.InferenceSession | None = None
        self.names: list[str] = []

    def open(self, make) -> None:
        with self._lock:
            if self.session is None:
                self.session, self.names = make()

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.session is not None
        return _run(self.session, self.names, feed)


@dataclass
class ComparisonReport:
    """Rows per int8 tensor; ``bit_exact`` holds when every float32-exact tensor matches."""

    title: str
    rows: list[TensorDiff] = field(default_factory=list)
    outputs_max_abs_diff: dict[str, float] = field(default_factory=dict)

    @property
    def bit_exact(self) -> bool:
        return all(r.differing == 0 for r in self.rows if r.float32_exact)

    @property
    def not_exact_in_float32(self) -> list[TensorDiff]:
        return [r for r in self.rows if not r.float32_exact]

    def to_dict(self) -> dict:
        return {"title": self.title, "bit_exact": self.bit_exact, "rows": [asdict(r) for r in self.rows],
                "outputs_max_abs_diff": self.outputs_max_abs_diff}

    def table(self, only_differing: bool = False) -> Table:
        table = Table(title=self.title)
        for col in ("tensor", "fp", "elements", "differing", "max LSB", "note"):
            table.add_column(col, justify="right" if col in ("fp", "elements", "differing", "max LSB") else "left")
        for r in self.rows:
            if only_differing and not r.differing:
                continue
            note = r.note or ("" if r.float32_exact else "fake-quant float32 not exact here")
            table.add_row(r.tensor, str(r.fix_point), str(r.elements), str(r.differing), str(r.max_lsb), note)
        return table


class _OnnxRuntimeCheck:
    """Accumulates :func:`compare_with_onnxruntime` feed by feed: :meth:`measure` (any thread) compares one
    feed, :meth:`merge` (in feed order) adds it up."""

    def __init__(self, qdq_model: onnx.ModelProto, threads: int = 0) -> None:
        self.model = qdq_model
        self.threads = threads
        self.report = ComparisonReport("integer reference vs ONNX Runtime fake-quant")
        self.session = _LazySession()
        self.rows: dict[str, TensorDiff] = {}

    def measure(self, feed: Mapping[str, np.ndarray], ref: ReferenceRun) -> tuple[Counts, dict[str, str], dict[str, float]]:
        self.session.open(lambda: _session(self.model, {q: TensorProto.INT8 for q in ref.quantize_outputs.values()}, self.threads))
        got = self.session.run(feed)
        counts = {key: (t.fix_point, lsb_counts(t.values, got[ref.quantize_outputs[key]])) for key, t in ref.tensors.items()}
        inexact = {key: t.note for key, t in ref.tensors.items() if not t.float32_exact}
        outputs = {name: float(np.max(np.abs(value.astype(np.float64) - got[name].astype(np.float64)))) if value.size else 0.0
                   for name, value in ref.outputs.items()}
        return counts, inexact, outputs

    def merge(self, part: tuple[Counts, dict[str, str], dict[str, float]]) -> None:
        counts, inexact, outputs = part
        _merge_counts(self.rows, counts)
        for key, note in inexact.items():
            self.rows[key].float32_exact, self.rows[key].note = False, note
        known = self.report.outputs_max_abs_diff
        for name, diff in outputs.items():
            known[name] = max(known.get(name, 0.0), diff)

    def add(self, feed: Mapping[str, np.ndarray], ref: ReferenceRun) -> None:
        self.merge(self.measure(feed, ref))

    def result(self) -> ComparisonReport:
        self.report.rows = list(self.rows.values())
        return self.report


class _RoundingCheck:
    """Accumulates :func:`rounding_differences` from each feed's two runs (:meth:`measure` in any thread)."""

    def __init__(self) -> None:
        self.rows: dict[str, TensorDiff] = {}

    @staticmethod
    def measure(ort_run: ReferenceRun, dpu_run: ReferenceRun) -> Counts:
        return {key: (t.fix_point, lsb_counts(t.values, dpu_run.tensors[key].values)) for key, t in ort_run.tensors.items()}

    def merge(self, counts: Counts) -> None:
        _merge_counts(self.rows, counts)

    def add(self, ort_run: ReferenceRun, dpu_run: ReferenceRun) -> None:
        self.merge(self.measure(ort_run, dpu_run))

    def result(self) -> ComparisonReport:
        report = ComparisonReport("DPU rounding (half up) vs ONNX Runtime rounding (half to even)")
        report.rows = [r for r in self.rows.values() if r.differing]
        return report


def compare_with_onnxruntime(qdq_model: onnx.ModelProto, feeds: Feeds) -> ComparisonReport:
    """The integer reference (ORT rounding) against ONNX Runtime's fake-quant run, tensor by tensor.

    ``feeds`` is one feed (input name -> array) or an iterable of feeds. Bit-exact is expected wherever
    ``float32_exact`` holds; elsewhere the row says ORT's float32 arithmetic is not exact.
    """
    executor, check = Executor(qdq_model), _OnnxRuntimeCheck(qdq_model)
    for feed in _feed_list(feeds):
        check.add(feed, executor.run(feed, "onnxruntime"))
    return check.result()


def rounding_differences(qdq_model: onnx.ModelProto, feeds: Feeds) -> ComparisonReport:
    """Where the DPU's half-up rounding gives other int8 codes than ONNX Runtime's half-to-even rounding.

    Only tensors that differ are listed; a tie rounded differently early also shows in the tensors after it.
    """
    executor, check = Executor(qdq_model), _RoundingCheck()
    for feed in _feed_list(feeds):
        check.add(executor.run(feed, "onnxruntime"), executor.run(feed, "dpu"))
    return check.result()


# ---- INT8 vs float ---------------------------------------------------------------------------------


@dataclass
class LayerStats:
    """A quantized tensor against the float graph's tensor of the same meaning."""

    tensor: str
    float_tensor: str
    fix_point: int
    elements: int
    sqnr_db: float
    cosine: float
    max_lsb_error: float


def tensor_map(qdq_model: onnx.ModelProto) -> dict[str, str]:
    """Dequantized tensor name -> float graph name, from the quantizer's metadata (identity if absent)."""
    for prop in qdq_model.metadata_props:
        if prop.key == TENSOR_MAP_KEY:
            return json.loads(prop.value)
    return {}


#: One feed's sums for a quantized tensor against float: signal, noise, dot, qq, n, max |error| in LSB, fix point.
LayerSums = dict[str, tuple[float, float, float, float, int, float, int]]
#: A float run whose tensors together exceed this is one worker's at a time (see :class:`_LayerCheck`).
LARGE_RUN_BYTES = 64 << 20
#: Elements per block of :func:`tensor_sums`: its float64 temporaries stay in the core's cache.
SUMS_BLOCK = 1 << 15


def tensor_sums(f: np.ndarray, codes: np.ndarray, fix_point: int) -> tuple[float, float, float, float, int, float]:
    """Float tensor ``f`` against the int8 ``codes`` at ``fix_point`` (both flat): f.f, err.err, q.f, q.q in
    float64 (q = codes * 2^-fix_point, err = q - f), the count, and max |err| in LSB.

    Summed block by block: whole-tensor float64 copies went through memory several times and cost more
    than the float run itself on a ViC-T 224 collage."""
    scale = 2.0 ** -fix_point
    signal = noise = dot = qq = worst = 0.0
    for start in range(0, f.size, SUMS_BLOCK):
        fb = f[start:start + SUMS_BLOCK].astype(np.float64)
        qb = codes[start:start + SUMS_BLOCK].astype(np.float64) * scale
        err = qb - fb
        signal += float(fb @ fb)
        noise += float(err @ err)
        dot += float(qb @ fb)
        qq += float(qb @ qb)
        worst = max(worst, float(np.max(np.abs(err))))
    return signal, noise, dot, qq, f.size, worst / scale


class _LayerCheck:
    """Accumulates :func:`layer_report` feed by feed: float tensors from ONNX Runtime, quantized ones given;
    :meth:`measure` (any thread) sums one feed, :meth:`merge` (in feed order) adds it up."""

    def __init__(self, float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, threads: int = 0) -> None:
        self.float_model = float_model
        self.threads = threads
        self.names = tensor_map(qdq_model)
        self.float_names = {n for node in float_model.graph.node for n in node.output} | {i.name for i in float_model.graph.input}
        self.acc: dict[str, list[float]] = {}
        self.order: list[str] = []
        self.pairs: dict[str, str] = {}
        self.session = _LazySession()
        #: One feed at a time where a float run is large: it returns every tensor of the graph at once (a
        #: ViC-T 224 collage's are about 270 MB), so workers take turns there; a frame's (30 MB) run at once.
        self._one_at_a_time = threading.Lock()
        self._large: bool | None = None

    def _open(self, ref: ReferenceRun) -> tuple[ort.InferenceSession, list[str]]:
        self.pairs = {k: self.names.get(k, k) for k in ref.tensors if self.names.get(k, k) in self.float_names}
        self.order = list(self.pairs)
        return _session(self.float_model, {f: TensorProto.FLOAT for f in self.pairs.values()}, self.threads)

    def measure(self, feed: Mapping[str, np.ndarray], ref: ReferenceRun) -> LayerSums:
        self.session.open(lambda: self._open(ref))
        if self._large is False:
            return self._sums(self.session.run(feed), ref)
        with self._one_at_a_time:
            got = self.session.run(feed)
            self._large = sum(v.nbytes for v in got.values()) > LARGE_RUN_BYTES
            return self._sums(got, ref)

    def _sums(self, got: dict[str, np.ndarray], ref: ReferenceRun) -> LayerSums:
        sums: LayerSums = {}
        for key in self.order:
            t = ref.tensors[key]
            sums[key] = (*tensor_sums(got[self.pairs[key]].reshape(-1), t.values.reshape(-1), t.fix_point), t.fix_point)
        return sums

    def merge(self, sums: LayerSums) -> None:
        for key, (signal, noise, dot, qq, n, lsb, fix_point) in sums.items():
            a = self.acc.setdefault(key, [0.0, 0.0, 0.0, 0.0, 0, 0.0, fix_point])
            a[0] += signal
            a[1] += noise
            a[2] += dot
            a[3] += qq
            a[4] += n
            a[5] = max(a[5], lsb)

    def add(self, feed: Mapping[str, np.ndarray], ref: ReferenceRun) -> None:
        self.merge(self.measure(feed, ref))

    def result(self) -> list[LayerStats]:
        stats = []
        for key in self.order:
            signal, noise, dot, qq, n, lsb, fix_point = self.acc[key]
            sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
            denom = math.sqrt(signal * qq)
            cosine = dot / denom if denom > 0 else (1.0 if signal == qq == 0 else 0.0)
            stats.append(LayerStats(key, self.names.get(key, key), int(fix_point), int(n), sqnr, cosine, lsb))
        return stats


def layer_report(
    float_model: onnx.ModelProto,
    qdq_model: onnx.ModelProto,
    feeds_list: Feeds,
    *,
    rounding: str = "dpu",
) -> list[LayerStats]:
    """Per quantized tensor, in graph order: SQNR (dB), cosine similarity and max |error| in LSB vs float.

    The float tensors come from ONNX Runtime on ``float_model``; the quantized ones from the integer
    reference with ``rounding`` (the DPU's by default: what the board computes). Statistics pool all feeds.
    """
    executor, check = Executor(qdq_model), _LayerCheck(float_model, qdq_model)
    for feed in _feed_list(feeds_list):
        check.add(feed, executor.run(feed, rounding))
    return check.result()


@dataclass
class IntegerChecks:
    """The three checks of an INT8 graph that the DPU export reports (see :func:`integer_checks`)."""

    exact: ComparisonReport
    dpu_rounding: ComparisonReport
    layers: list[LayerStats]


def integer_checks(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, feeds: Feeds) -> IntegerChecks:
    """:func:`compare_with_onnxruntime`, :func:`rounding_differences` and :func:`layer_report` (DPU rounding)
    in one pass: each feed runs through the integer reference once per rounding, not four times, and
    everything one feed needs (both reference runs, both ONNX Runtime runs, the comparisons) runs on a
    core-pool worker, ONNX Runtime single-threaded there; the small per-feed sums are added in feed order."""
    executor = Executor(qdq_model)
    feeds = _feed_list(feeds)
    with core_pool(max((np.asarray(v).size for f in feeds[:1] for v in f.values()), default=0)) as pool:
        threads = pool.engine_threads
        exact, rounding = _OnnxRuntimeCheck(qdq_model, threads), _RoundingCheck()
        layers = _LayerCheck(float_model, qdq_model, threads)

        def check(feed: Mapping[str, np.ndarray]):
            ort_run = executor.run(feed, "onnxruntime")
            exact_part = exact.measure(feed, ort_run)
            dpu_run = executor.run(feed, "dpu")
            rounding_part = rounding.measure(ort_run, dpu_run)
            del ort_run  # a ViC-T 224 collage's run is hundreds of MB: keep one per worker
            return exact_part, rounding_part, layers.measure(feed, dpu_run)

        for chunk in chunks(feeds, pool.workers):
            for exact_part, rounding_part, layer_part in pool.map(check, chunk):
                exact.merge(exact_part)
                rounding.merge(rounding_part)
                layers.merge(layer_part)
    return IntegerChecks(exact.result(), rounding.result(), layers.result())


def layer_table(stats: Sequence[LayerStats]) -> Table:
    table = Table(title="INT8 vs float, per quantized tensor")
    for col in ("tensor", "fp", "SQNR dB", "cosine", "max |err| LSB"):
        table.add_column(col, justify="left" if col == "tensor" else "right")
    for s in stats:
        table.add_row(s.tensor, str(s.fix_point), f"{s.sqnr_db:.1f}", f"{s.cosine:.5f}", f"{s.max_lsb_error:.2f}")
    return table


def save_sqnr_plot(stats: Sequence[LayerStats], path: str | os.PathLike[str], title: str = "INT8 vs float: SQNR per layer") -> None:
    """Bar chart of SQNR per quantized tensor (graph order), written atomically as PNG."""
    finite = [s.sqnr_db if math.isfinite(s.sqnr_db) else np.nan for s in stats]
    save_layer_bars([s.tensor for s in stats], finite, path, title, "SQNR (dB)")
