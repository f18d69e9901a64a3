"""Golden vectors: every DPU-side tensor of one clip, in the board's layout, as raw int8 files.

A golden dir holds one ``.bin`` per tensor, written the way ``xdputil run`` dumps DPU tensors
(``ndarray.tofile`` of the tensor in its XIR shape: raw bytes, C order, 4-D maps NHWC; Vitis-AI 3.5
``src/vai_library/usefultools/python/xdputil_component/run.py``), and ``index.json``, written
last, so a dir with an index is complete. Index sections ``input``, ``output`` and ``tensors``
list entries ``{"name", "file", "dtype": "int8", "shape", "layout", "fix_point", "graph",
"frame"}``; a value is ``int * 2**-fix_point``. File names follow VART's dump names (characters
other than ``[0-9A-Za-z_]`` become ``_``; ``dpu_runner_base_imp.cpp``, ``layer_name``).

The streaming split runs the early graph once per frame and the later graph once per collage, so
one clip gives the early tensors of each of its L frames (``frame`` = 0..L-1) and the later
tensors once (``frame`` = null).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from rich.table import Table

from vidconv_deploy.atomic import write_bytes, write_text
from vidconv_deploy.errors import UserError
from vidconv_deploy.reference import ReferenceRun
from vidconv_deploy.runners import IntegerReferenceRunner, StreamingSplit

FORMAT = "vidconv-golden/1"
INDEX = "index.json"
SECTIONS = {"input": "input", "output": "output", "tensor": "tensors"}

#: Board-vs-host tolerance in LSB of each tensor's own fix point.
TOLERANCE_LSB = 1
TOLERANCE_SOURCE = (
    "Xilinx states no number. VART's own golden check (XLNX_GOLDEN_DIR) compares md5 sums, i.e. bit-exact "
    "(Vitis-AI 3.5 src/vai_runtime/vart/dpu-runner/src/dpu_runner_base_imp.cpp, compare_tensor), while its "
    "maintainers say board dumps are expected to differ from the quantizer's because the compiler optimises the "
    "graph (Vitis-AI issue 1182). 1 LSB is our default; exact matches are counted separately."
)


def tensor_key(graph: str, frame: int | None, name: str) -> str:
    """The unique name of one tensor of one graph run: ``early[3]/x`` (frame 3), ``later/x``."""
    return f"{graph}[{frame}]/{name}" if frame is not None else f"{graph}/{name}"


def vart_file_name(key: str) -> str:
    """VART's dump name for a tensor: every character outside ``[0-9A-Za-z_]`` becomes ``_``."""
    return re.sub(r"[^0-9A-Za-z_]", "_", key) + ".bin"


def to_layout(values: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert a 4-D map between NCHW and NHWC (2-D ``NC`` tensors are the same in both)."""
    if src == dst or values.ndim == 2:
        return values
    return np.ascontiguousarray(values.transpose(0, 2, 3, 1) if dst == "NHWC" else values.transpose(0, 3, 1, 2))


def board_layout(ndim: int) -> str:
    """The DPU's layout for a tensor of this rank: NHWC maps, ``NC`` vectors (logits)."""
    if ndim not in (2, 4):
        raise ValueError(f"golden vectors hold 2-D or 4-D tensors, not {ndim}-D")
    return "NHWC" if ndim == 4 else "NC"


@dataclasses.dataclass(frozen=True)
class GoldenTensor:
    """One int8 tensor of one graph run; ``values`` in our graphs' layout (NCHW); value = int * 2**-fix_point."""

    name: str
    values: np.ndarray
    fix_point: int
    graph: str
    frame: int | None = None
    role: str = "tensor"

    @property
    def key(self) -> str:
        return tensor_key(self.graph, self.frame, self.name)


@dataclasses.dataclass(frozen=True)
class GoldenEntry:
    """One index entry: where a tensor's bytes are and how to read them."""

    name: str
    file: str
    shape: tuple[int, ...]
    layout: str
    fix_point: int
    graph: str
    frame: int | None
    role: str

    @property
    def key(self) -> str:
        return tensor_key(self.graph, self.frame, self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "dtype": "int8", "shape": list(self.shape), "layout": self.layout,
                "fix_point": self.fix_point, "graph": self.graph, "frame": self.frame}


def write_golden(
    directory: Path, tensors: Iterable[GoldenTensor], *, tolerance_lsb: int = TOLERANCE_LSB, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write ``tensors`` (NCHW) as board-layout ``.bin`` files and ``index.json`` (last); return the index path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / INDEX).unlink(missing_ok=True)  # an old index must not vouch for files this run rewrites
    sections: dict[str, list[dict[str, Any]]] = {section: [] for section in SECTIONS.values()}
    used: set[str] = set()
    for tensor in tensors:
        if tensor.role not in SECTIONS:
            raise ValueError(f"{tensor.key}: role {tensor.role!r} is not one of {sorted(SECTIONS)}")
        values = np.asarray(tensor.values)
        if values.dtype != np.int8:
            raise ValueError(f"{tensor.key}: golden tensors are int8, got {values.dtype}")
        layout = board_layout(values.ndim)
        data = to_layout(values, "NCHW", layout)
        file = vart_file_name(tensor.key)
        stem = file[: -len(".bin")]
        n = 1
        while file in used:  # two keys that differ only in characters VART replaces
            file, n = f"{stem}_{n}.bin", n + 1
        used.add(file)
        write_bytes(directory / file, data.astype("<i1").tobytes(order="C"))
        entry = GoldenEntry(tensor.name, file, tuple(data.shape), layout, int(tensor.fix_point), tensor.graph,
                            tensor.frame, tensor.role)
        sections[SECTIONS[tensor.role]].append(entry.to_dict())
    index = {
        "format": FORMAT,
        "byte_order": "little",
        "value": "int * 2**-fix_point",
        "tolerance_lsb": tolerance_lsb,
        "tolerance_source": TOLERANCE_SOURCE,
        "meta": dict(meta or {}),
        **sections,
    }
    path = directory / INDEX
    write_text(path, json.dumps(index, indent=2) + "\n")
    return path


@dataclasses.dataclass(frozen=True)
class Golden:
    """A read golden dir: its entries (all sections) and tolerance."""

    directory: Path
    entries: tuple[GoldenEntry, ...]
    tolerance_lsb: int
    meta: dict[str, Any]

    def by_key(self) -> dict[str, GoldenEntry]:
        return {e.key: e for e in self.entries}

    def load(self, entry: GoldenEntry, layout: str = "NCHW") -> np.ndarray:
        """The entry's int8 values, converted to ``layout`` (NCHW by default, our graphs' layout)."""
        raw = np.fromfile(self.directory / entry.file, dtype="<i1")
        if raw.size != int(np.prod(entry.shape)):
            raise UserError(
                f"{self.directory / entry.file} has {raw.size} bytes, the index says shape {list(entry.shape)}: "
                f"the golden dir is damaged, write it again"
            )
        return to_layout(raw.reshape(entry.shape).astype(np.int8), entry.layout, layout)


def read_golden(directory: Path) -> Golden:
    """Read ``directory/index.json``; a missing or foreign index is a :class:`UserError`."""
    path = directory / INDEX
    if not path.is_file():
        raise UserError(f"{directory} has no {INDEX}: it is not a complete golden dir (write it with write_golden)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not JSON ({err.msg} at line {err.lineno}): write the golden dir again") from None
    if index.get("format") != FORMAT:
        raise UserError(f"{path} has format {index.get('format')!r}, not {FORMAT!r}: write it with this vidconv-deploy")
    entries = [
        GoldenEntry(e["name"], e["file"], tuple(e["shape"]), e["layout"], int(e["fix_point"]), e["graph"], e["frame"], role)
        for role, section in SECTIONS.items()
        for e in index[section]
    ]
    return Golden(directory, tuple(entries), int(index["tolerance_lsb"]), index.get("meta", {}))


@dataclasses.dataclass(frozen=True)
class TensorComparison:
    """One tensor against its golden: the largest |difference| in LSB and how many elements differ."""

    key: str
    shape: tuple[int, ...]
    fix_point: int | None
    max_lsb: int | None
    within: int
    over: int
    status: str  # exact | within | over | shape | fix_point | no golden

    @property
    def ok(self) -> bool:
        return self.status in ("exact", "within")


@dataclasses.dataclass(frozen=True)
class GoldenReport:
    """The comparison of a set of tensors with a golden dir; golden entries nobody compared are ``unseen``."""

    tolerance_lsb: int
    rows: tuple[TensorComparison, ...]
    unseen: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "tolerance_lsb": self.tolerance_lsb,
                "tensors": [dataclasses.asdict(r) for r in self.rows], "unseen": list(self.unseen)}

    def table(self) -> Table:
        table = Table(title=f"golden comparison (tolerance {self.tolerance_lsb} LSB)")
        for column in ("tensor", "shape", "fix point", "max |LSB|", "within", "over", "status"):
            table.add_column(column)
        for r in self.rows:
            table.add_row(r.key, "x".join(map(str, r.shape)), str(r.fix_point), "-" if r.max_lsb is None else str(r.max_lsb),
                          str(r.within), str(r.over), r.status if r.ok else f"[red]{r.status}[/red]")
        return table


def compare_tensor(key: str, values: np.ndarray, fix_point: int, golden: np.ndarray | None, golden_fix_point: int | None,
                   tolerance_lsb: int) -> TensorComparison:
    """Compare one int8 tensor with its golden (same layout); a different shape or fix point fails outright."""
    shape = tuple(values.shape)
    if golden is None or golden_fix_point is None:
        return TensorComparison(key, shape, fix_point, None, 0, 0, "no golden")
    if golden.shape != values.shape:
        return TensorComparison(key, shape, fix_point, None, 0, 0, "shape")
    if golden_fix_point != fix_point:
        return TensorComparison(key, shape, fix_point, None, 0, 0, "fix_point")
    diff = np.abs(values.astype(np.int16) - golden.astype(np.int16))
    largest = int(diff.max()) if diff.size else 0
    over = int(np.count_nonzero(diff > tolerance_lsb))
    within = int(np.count_nonzero(diff)) - over
    status = "exact" if largest == 0 else ("within" if over == 0 else "over")
    return TensorComparison(key, shape, fix_point, largest, within, over, status)


def compare_golden(directory: Path, tensors: Iterable[GoldenTensor], tolerance_lsb: int | None = None) -> GoldenReport:
    """Compare ``tensors`` (NCHW) with the golden dir, by key; the dir's own tolerance unless one is given."""
    golden = read_golden(directory)
    tolerance = golden.tolerance_lsb if tolerance_lsb is None else tolerance_lsb
    entries = golden.by_key()
    rows, seen = [], set()
    for tensor in tensors:
        entry = entries.get(tensor.key)
        seen.add(tensor.key)
        expected = golden.load(entry) if entry else None
        rows.append(compare_tensor(tensor.key, np.asarray(tensor.values), tensor.fix_point, expected,
                                   entry.fix_point if entry else None, tolerance))
    unseen = tuple(k for k in entries if k not in seen)
    return GoldenReport(tolerance, tuple(rows), unseen)


def quantized_io(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Names under which the integer reference may report a QDQ graph's int8 input and output.

    ``vidconv_deploy.reference`` names each QuantizeLinear result after the DequantizeLinear that
    reads it; the candidates also cover the QuantizeLinear's own output and the float tensor it
    reads. Each list is ordered by preference.
    """
    graph_in, graph_out = model.graph.input[0].name, model.graph.output[0].name
    by_output = {o: n for n in model.graph.node for o in n.output}
    quantized = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph_in]
    inputs = [graph_in, *quantized] + [n.output[0] for n in model.graph.node
                                       if n.op_type == "DequantizeLinear" and n.input[0] in quantized]
    outputs = [graph_out]
    dq = by_output.get(graph_out)
    if dq is not None and dq.op_type == "DequantizeLinear":
        outputs.append(dq.input[0])
        q = by_output.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            outputs.append(q.input[0])
    return inputs, outputs


def _run_tensors(run: ReferenceRun, model: onnx.ModelProto, graph: str, frame: int | None) -> list[GoldenTensor]:
    """Every int8 tensor of one reference run, with the graph's input and output marked."""
    inputs, outputs = quantized_io(model)
    in_key = next((k for k in inputs if k in run.tensors), None)
    out_key = next((k for k in outputs if k in run.tensors), None)
    if in_key is None or out_key is None:
        raise RuntimeError(f"the {graph} reference run reports no int8 tensor for the graph input or output "
                           f"(looked for {inputs} and {outputs})")
    role = {in_key: "input", out_key: "output"}
    return [GoldenTensor(name, np.asarray(t.values, dtype=np.int8), int(t.fix_point), graph, frame, role.get(name, "tensor"))
            for name, t in run.tensors.items()]


def clip_golden(
    early: onnx.ModelProto, later: onnx.ModelProto, clip: np.ndarray, grid: tuple[int, int],
) -> tuple[list[GoldenTensor], np.ndarray]:
    """Run the streaming split on one clip ``(L, 3, H, W)`` as the board does, with DPU rounding.

    Each frame goes through the early graph; the int8 early outputs are tiled row-major into the
    collage (the board keeps them int8 and hands the later graph their values); the later graph
    runs once. Returns every tensor of every run and the logits.
    """
    early_run, later_run = IntegerReferenceRunner(early, "dpu"), IntegerReferenceRunner(later, "dpu")
    split = StreamingSplit(grid, early_run, later_run)
    tensors: list[GoldenTensor] = []
    features = []
    for t, feed in enumerate(split.frame_feeds(clip)):
        frame_tensors = _run_tensors(early_run.trace(feed), early, "early", t)
        tensors += frame_tensors
        features.append(next(x for x in frame_tensors if x.role == "output"))
    fix_point = features[0].fix_point
    collage = split.collage([f.values for f in features])
    result = later_run.trace({later_run.input_names[0]: collage.astype(np.float32) * np.float32(2.0**-fix_point)})
    tensors += _run_tensors(result, later, "later", None)
    logits = np.asarray(result.outputs[later.graph.output[0].name], dtype=np.float32)
    return tensors, logits


def write_clip_golden(
    directory: Path, early: onnx.ModelProto, later: onnx.ModelProto, clip: np.ndarray, grid: tuple[int, int], *,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """:func:`clip_golden` written with :func:`write_golden`; ``meta`` says where the clip came from."""
    tensors, logits = clip_golden(early, later, clip, grid)
    info = {"rounding": "dpu", "grid": list(grid), "frames": grid[0] * grid[1],
            "logits": [round(float(v), 6) for v in logits.ravel()], **(meta or {})}
    return write_golden(directory, tensors, meta=info)
