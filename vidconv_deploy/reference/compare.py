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


def compare_with_onnxruntime(qdq_model: onnx.ModelProto, feeds: Feeds) -> ComparisonReport:
    """The integer reference (ORT rounding) against ONNX Runtime's fake-quant run, tensor by tensor.

    ``feeds`` is one feed (input name -> array) or an iterable of feeds. Bit-exact is expected wherever
    ``float32_exact`` holds; elsewhere the row says ORT's float32 arithmetic is not exact.
    """
    executor = Executor(qdq_model)
    report = ComparisonReport("integer reference vs ONNX Runtime fake-quant")
    session, names = None, []
    rows: dict[str, TensorDiff] = {}
    for feed in _feed_list(feeds):
        ref = executor.run(feed, "onnxruntime")
        if session is None:
            session, names = _session(qdq_model, {q: TensorProto.INT8 for q in ref.quantize_outputs.values()})
        got = _run(session, names, feed)
        for key, t in ref.tensors.items():
            row = rows.setdefault(key, TensorDiff(key, t.fix_point))
            row.add(t.values, got[ref.quantize_outputs[key]])
            if not t.float32_exact:
                row.float32_exact, row.note = False, t.note
        for name, value in ref.outputs.items():
            d = float(np.max(np.abs(value.astype(np.float64) - got[name].astype(np.float64)))) if value.size else 0.0
            report.outputs_max_abs_diff[name] = max(report.outputs_max_abs_diff.get(name, 0.0), d)
    report.rows = list(rows.values())
    return report


def rounding_differences(qdq_model: onnx.ModelProto, feeds: Feeds) -> ComparisonReport:
    """Where the DPU's half-up rounding gives other int8 codes than ONNX Runtime's half-to-even rounding.

    Only tensors that differ are listed; a tie rounded differently early also shows in the tensors after it.
    """
    executor = Executor(qdq_model)
    report = ComparisonReport("DPU rounding (half up) vs ONNX Runtime rounding (half to even)")
    rows: dict[str, TensorDiff] = {}
    for feed in _feed_list(feeds):
        ort_run, dpu_run = executor.run(feed, "onnxruntime"), executor.run(feed, "dpu")
        for key, t in ort_run.tensors.items():
            rows.setdefault(key, TensorDiff(key, t.fix_point)).add(t.values, dpu_run.tensors[key].values)
    report.rows = [r for r in rows.values() if r.differing]
    return report


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
    names = tensor_map(qdq_model)
    executor = Executor(qdq_model)
    float_names = {n for node in float_model.graph.node for n in node.output} | {i.name for i in float_model.graph.input}
    acc: dict[str, dict[str, float]] = {}
    order: list[str] = []
    session, outs = None, []
    for feed in _feed_list(feeds_list):
        ref: ReferenceRun = executor.run(feed, rounding)
        pairs = {k: names.get(k, k) for k in ref.tensors if names.get(k, k) in float_names}
        if session is None:
            session, outs = _session(float_model, {f: TensorProto.FLOAT for f in pairs.values()})
            order = list(pairs)
        got = _run(session, outs, feed)
        for key in order:
            t = ref.tensors[key]
            f = got[pairs[key]].astype(np.float64).reshape(-1)
            q = t.dequantized().astype(np.float64).reshape(-1)
            a = acc.setdefault(key, {"signal": 0.0, "noise": 0.0, "dot": 0.0, "qq": 0.0, "n": 0, "lsb": 0.0, "fp": t.fix_point})
            err = q - f
            a["signal"] += float(f @ f)
            a["noise"] += float(err @ err)
            a["dot"] += float(q @ f)
            a["qq"] += float(q @ q)
            a["n"] += f.size
            a["lsb"] = max(a["lsb"], float(np.max(np.abs(err))) * 2.0 ** t.fix_point if f.size else 0.0)
    stats = []
    for key in order:
        a = acc[key]
        sqnr = math.inf if a["noise"] == 0 else (10 * math.log10(a["signal"] / a["noise"]) if a["signal"] > 0 else -math.inf)
        denom = math.sqrt(a["signal"] * a["qq"])
        cosine = a["dot"] / denom if denom > 0 else (1.0 if a["signal"] == a["qq"] == 0 else 0.0)
        stats.append(LayerStats(key, names.get(key, key), int(a["fp"]), int(a["n"]), sqnr, cosine, a["lsb"]))
    return stats


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
