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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from rich.table import Table

from vidconv_deploy.fixpoint.qdq_metadata import TENSOR_MAP_KEY
from vidconv_deploy.parallel import chunks, core_pool
from vidconv_deploy.plots import save_layer_bars
from vidconv_deploy.reference.executor import Executor, ReferenceRun

#: One feed (graph input name -> array) or several.
Feeds = Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]]


def _feed_list(feeds: Feeds) -> list[Mapping[str, np.ndarray]]:
    return [feeds] if isinstance(feeds, Mapping) else list(feeds)


def _session(model: onnx.ModelProto, extra: Mapping[str, int]) -> tuple[ort.InferenceSession, list[str]]:
    """An ORT CPU session without graph optimisations, with ``extra`` tensors (name -> elem type) as outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    for name, elem in extra.items():
        if name not in present:
            model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting between runs
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, [o.name for o in model.graph.output]


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

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        self.elements += diff.size
        self.differing += int(np.count_nonzero(diff))
        self.max_lsb = max(self.max_lsb, int(diff.max()) if diff.size else 0)


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
    """Accumulates :func:`compare_with_onnxruntime` feed by feed (the ORT session opens on the first run)."""

    def __init__(self, qdq_model: onnx.ModelProto) -> None:
        self.model = qdq_model
        self.report = ComparisonReport("integer reference vs ONNX Runtime fake-quant")
        self.session: ort.InferenceSession | None = None
        self.names: list[str] = []
        self.rows: dict[str, TensorDiff] = {}

    def add(self, feed: Mapping[str, np.ndarray], ref: ReferenceRun) -> None:
        if self.session is None:
            self.session, self.names = _session(self.model, {q: TensorProto.INT8 for q in ref.quantize_outputs.values()})
        got = _run(self.session, self.names, feed)
        for key, t in ref.tensors.items():
            row = self.rows.setdefault(key, TensorDiff(key, t.fix_point))
            row.add(t.values, got[ref.quantize_outputs[key]])
            if not t.float32_exact:
                row.float32_exact, row.note = False, t.note
        outputs = self.report.outputs_max_abs_diff
        for name, value in ref.outputs.items():
            d = float(np.max(np.abs(value.astype(np.float64) - got[name].astype(np.float64)))) if value.size else 0.0
            outputs[name] = max(outputs.get(name, 0.0), d)

    def result(self) -> ComparisonReport:
        self.report.rows = list(self.rows.values())
        return self.report


class _RoundingCheck:
    """Accumulates :func:`rounding_differences` from each feed's two runs."""

    def __init__(self) -> None:
        self.rows: dict[str, TensorDiff] = {}

    def add(self, ort_run: ReferenceRun, dpu_run: ReferenceRun) -> None:
        for key, t in ort_run.tensors.items():
            self.rows.setdefault(key, TensorDiff(key, t.fix_point)).add(t.values, dpu_run.tensors[key].values)

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


class _LayerCheck:
    """Accumulates :func:`layer_report` feed by feed: float tensors from ONNX Runtime, quantized ones given."""

    def __init__(self, float_model: onnx.ModelProto, qdq_model: onnx.ModelProto) -> None:
        self.float_model = float_model
        self.names = tensor_map(qdq_model)
        self.float_names = {n for node in float_model.graph.node for n in node.output} | {i.name for i in float_model.graph.input}
        self.acc: dict[str, dict[str, float]] = {}
        self.order: list[str] = []
        self.pairs: dict[str, str] = {}
        self.session: ort.InferenceSession | None = None
        self.outs: list[str] = []

    def add(self, feed: Mapping[str, np.ndarray], ref: ReferenceRun) -> None:
        if self.session is None:
            self.pairs = {k: self.names.get(k, k) for k in ref.tensors if self.names.get(k, k) in self.float_names}
            self.session, self.outs = _session(self.float_model, {f: TensorProto.FLOAT for f in self.pairs.values()})
            self.order = list(self.pairs)
        got = _run(self.session, self.outs, feed)
        for key in self.order:
            t = ref.tensors[key]
            f = got[self.pairs[key]].astype(np.float64).reshape(-1)
            q = t.dequantized().astype(np.float64).reshape(-1)
            a = self.acc.setdefault(key, {"signal": 0.0, "noise": 0.0, "dot": 0.0, "qq": 0.0, "n": 0, "lsb": 0.0, "fp": t.fix_point})
            err = q - f
            a["signal"] += float(f @ f)
            a["noise"] += float(err @ err)
            a["dot"] += float(q @ f)
            a["qq"] += float(q @ q)
            a["n"] += f.size
            a["lsb"] = max(a["lsb"], float(np.max(np.abs(err))) * 2.0 ** t.fix_point if f.size else 0.0)

    def result(self) -> list[LayerStats]:
        stats = []
        for key in self.order:
            a = self.acc[key]
            sqnr = math.inf if a["noise"] == 0 else (10 * math.log10(a["signal"] / a["noise"]) if a["signal"] > 0 else -math.inf)
            denom = math.sqrt(a["signal"] * a["qq"])
            cosine = a["dot"] / denom if denom > 0 else (1.0 if a["signal"] == a["qq"] == 0 else 0.0)
            stats.append(LayerStats(key, self.names.get(key, key), int(a["fp"]), int(a["n"]), sqnr, cosine, a["lsb"]))
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
    in one pass: each feed runs through the integer reference once per rounding, not four times, the feeds
    of a chunk at once on the core pool (ONNX Runtime's runs stay on this thread, with its own threads)."""
    executor = Executor(qdq_model)
    exact, rounding, layers = _OnnxRuntimeCheck(qdq_model), _RoundingCheck(), _LayerCheck(float_model, qdq_model)
    feeds = _feed_list(feeds)
    with core_pool(max((np.asarray(v).size for f in feeds[:1] for v in f.values()), default=0)) as pool:
        for chunk in chunks(feeds, pool.workers):
            runs = pool.map(lambda feed: (executor.run(feed, "onnxruntime"), executor.run(feed, "dpu")), chunk)
            for feed, (ort_run, dpu_run) in zip(chunk, runs, strict=True):
                exact.add(feed, ort_run)
                rounding.add(ort_run, dpu_run)
                layers.add(feed, dpu_run)
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
