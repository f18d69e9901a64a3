#!/usr/bin/env python3
"""Run a VidConv streaming split on a DPU board (VART) or on any host (integer reference); check it against golden vectors.

The early graph runs once per frame; its int8 outputs go into a ring buffer of the last L frames,
tiled row-major into the collage that the later graph turns into logits. Modes: a clip (L frames
in, logits out: ``--clip``, or the golden clip) or a stream (``--stream`` a .npy of frames or a
video: the sliding window of ``vidconv-stream``, a prediction every ``--stride`` frames once L
frames are in, ``--clips`` windows averaged). ``--golden DIR`` compares every tensor the backend
sees with the golden vectors and exits 0 (all within tolerance) or 1 (a mismatch).

This file is standalone: on the board it needs only numpy and Vitis AI's ``xir``/``vart`` Python
modules (a video for ``--stream`` also needs PyAV or OpenCV's ``cv2``); ``--backend reference``
imports vidconv-deploy (Python >= 3.11) for its integer reference.
Bad input exits 2 with one line naming the problem and the fix.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

BOARD_JSON = "board.json"
BOARD_FORMAT = "vidconv-board/1"
GOLDEN_FORMAT = "vidconv-golden/1"


class BoardError(Exception):
    """Bad input: printed as one line, exit code 2."""


# --- int8 fix-point arithmetic, as the DPU does it ---------------------------------------------

def quantize(x: np.ndarray, fix_point: int) -> np.ndarray:
    """float -> int8 at ``fix_point``: round half up (vai_q_pytorch's DPU rounding for activations,
    ``_vai_round_cpu`` method 2 in ``include/cpu/nndct_fix_kernels_cpu.h``), clamp to [-128, 127]."""
    return np.clip(np.floor(np.asarray(x, dtype=np.float64) * 2.0**fix_point + 0.5), -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, fix_point: int) -> np.ndarray:
    """int8 -> float: value = int * 2**-fix_point (exact in float32)."""
    return q.astype(np.float32) * np.float32(2.0**-fix_point)


def to_layout(values: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert a 4-D map between NCHW (our graphs) and NHWC (the DPU); 2-D tensors are the same in both."""
    if src == dst or values.ndim != 4:
        return values
    return np.ascontiguousarray(values.transpose(0, 2, 3, 1) if dst == "NHWC" else values.transpose(0, 3, 1, 2))


def collage(frames: list, grid: tuple, layout: str) -> np.ndarray:
    """Tile L per-frame maps ``(1, ...)`` row-major: frame t at grid row t // cols, column t % cols."""
    rows, cols = grid
    x = np.concatenate(frames)
    if layout == "NCHW":
        _, c, h, w = x.shape
        return x.reshape(rows, cols, c, h, w).transpose(2, 0, 3, 1, 4).reshape(1, c, rows * h, cols * w)
    _, h, w, c = x.shape
    return x.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(1, rows * h, cols * w, c)


class Seen:
    """One int8 tensor a backend saw during one graph run, in the backend's layout."""

    def __init__(self, graph: str, frame, role: str, name: str, values: np.ndarray, fix_point: int, layout: str) -> None:
        self.graph, self.frame, self.role, self.name = graph, frame, role, name
        self.values, self.fix_point, self.layout = values, fix_point, layout

    @property
    def key(self) -> str:
        where = "%s[%s]" % (self.graph, self.frame) if self.frame is not None else self.graph
        return "%s/%s" % (where, self.name)


# --- backends ----------------------------------------------------------------------------------

class ReferenceBackend:
    """Our bit-accurate integer reference on the QDQ ONNX graphs, with DPU rounding (any host)."""

    layout = "NCHW"

    def __init__(self, board_dir: Path, board: dict) -> None:
        try:
            import onnx
            from vidconv_deploy.reference import run_reference
        except ImportError as err:
            raise BoardError("the reference backend needs vidconv-deploy with its integer reference (%s): "
                             "pip install vidconv-deploy on this host, or use --backend vart on the board" % err)
        self.run_reference = run_reference
        self.models, self.io = {}, {}
        for graph, info in board["graphs"].items():
            path = board_dir / info["onnx"]
            if not path.is_file():
                raise BoardError("%s not found: write the board dir again (vidconv-export --target %s)" % (path, board["target"]))
            model = onnx.load(str(path))
            self.models[graph] = model
            self.io[graph] = _quantized_io(model)
        self.fix_points = {g: (i["input_fix_point"], i["output_fix_point"]) for g, i in board["graphs"].items()}

    def run(self, graph: str, x: np.ndarray, fix_point: int, frame) -> tuple:
        model = self.models[graph]
        result = self.run_reference(model, {model.graph.input[0].name: dequantize(x, fix_point)}, rounding="dpu")
        inputs, outputs = self.io[graph]
        in_key = next((k for k in inputs if k in result.tensors), None)
        out_key = next((k for k in outputs if k in result.tensors), None)
        if in_key is None or out_key is None:
            raise RuntimeError("the reference reports no int8 tensor for the %s graph's input or output" % graph)
        roles = {in_key: "input", out_key: "output"}
        seen = [Seen(graph, frame, roles.get(name, "tensor"), name, np.asarray(t.values, dtype=np.int8), int(t.fix_point),
                     self.layout) for name, t in result.tensors.items()]
        out = result.tensors[out_key]
        return np.asarray(out.values, dtype=np.int8), int(out.fix_point), seen


def _quantized_io(model) -> tuple:
    """Names under which the reference may report the graph's int8 input and output (see vidconv_deploy.dpu.golden)."""
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


class VartBackend:
    """The compiled xmodels on the board's DPU through VART (Vitis-AI 3.5 ``examples/vai_runtime/resnet50_mt_py``).

    DPU subgraphs are the children of the root subgraph whose ``device`` attr is ``DPU``. A graph
    that is one DPU subgraph runs on ``vart.Runner``; a mixed CPU/DPU graph runs on
    ``vitis_ai_library.GraphRunner`` (``src/vai_library/graph_runner/samples/resnet_v1_50_tf_graph_runner_py``).
    Tensors are NHWC int8; input scale 2**fix_point, output scale 2**-fix_point.
    """

    layout = "NHWC"

    def __init__(self, board_dir: Path, board: dict, mode: str = "run") -> None:
        try:
            import vart
            import xir
        except ImportError as err:
            raise BoardError("the vart backend needs Vitis AI's xir and vart Python modules (%s): run it on the board, "
                             "or use --backend reference on a host" % err)
        self.runners, self.xgraphs = {}, []  # a runner must not outlive its graph
        self.fallback_fix = {g: i["output_fix_point"] for g, i in board["graphs"].items()}
        parsed = {}
        for graph, info in board["graphs"].items():
            path = board_dir / info["xmodel"]
            if not path.is_file():
                raise BoardError("%s not found: compile it (compile/docker_run.sh in the bundle) and copy "
                                 "compile/xmodel/%s/%s.xmodel into the board dir" % (path, graph, graph))
            xgraph = xir.Graph.deserialize(str(path))
            self.xgraphs.append(xgraph)
            children = xgraph.get_root_subgraph().toposort_child_subgraph()
            devices = [c.get_attr("device").upper() if c.has_attr("device") else "" for c in children]
            parsed[graph] = (xgraph, devices, [c for c, d in zip(children, devices) if d == "DPU"])
        compiled = {g: dpu[0].get_attr("dpu_fingerprint") for g, (_, _, dpu) in parsed.items()
                    if dpu and dpu[0].has_attr("dpu_fingerprint")}
        problem = fingerprint_problem(board, board_fingerprints(), compiled)
        if problem:  # before VART's own check aborts the process ("CHECK fingerprint fail")
            raise BoardError(problem)
        for graph, (xgraph, devices, dpu) in parsed.items():
            if len(dpu) == 1 and "CPU" not in devices:
                self.runners[graph] = ("vart", vart.Runner.create_runner(dpu[0], mode))
            else:
                import vitis_ai_library

                self.runners[graph] = ("graph", vitis_ai_library.GraphRunner.create_graph_runner(xgraph))

    def run(self, graph: str, x: np.ndarray, fix_point: int, frame) -> tuple:
        kind, runner = self.runners[graph]
        if kind == "vart":
            t_in, t_out = runner.get_input_tensors()[0], runner.get_output_tensors()[0]
            inputs = [np.empty(tuple(t_in.dims), dtype=np.int8, order="C")]
            outputs = [np.empty(tuple(t_out.dims), dtype=np.int8, order="C")]
            buf_in, buf_out = inputs[0], outputs[0]
        else:
            inputs, outputs = runner.get_inputs(), runner.get_outputs()
            t_in, t_out = inputs[0].get_tensor(), outputs[0].get_tensor()
            buf_in, buf_out = np.asarray(inputs[0]), np.asarray(outputs[0])
        in_fix = t_in.get_attr("fix_point")
        if in_fix != fix_point:  # the compiler may pick its own input position
            x = quantize(dequantize(x, fix_point), in_fix)
        buf_in[...] = x.reshape(buf_in.shape)
        runner.wait(runner.execute_async(inputs, outputs))
        out_fix = t_out.get_attr("fix_point") if t_out.has_attr("fix_point") else None
        out = np.array(buf_out)
        if out_fix is None:  # a CPU op at the end gives float: back to int8 at board.json's position
            out_fix = self.fallback_fix[graph]
            out = quantize(out, out_fix)
        seen = [Seen(graph, frame, "input", t_in.name, x.reshape(buf_in.shape).copy(), int(in_fix), self.layout),
                Seen(graph, frame, "output", t_out.name, out, int(out_fix), self.layout)]
        return out, int(out_fix), seen


def board_fingerprints() -> list:
    """The DPU fingerprints ``xdputil query`` reports on this board (its JSON ``kernels[].fingerprint``);
    empty without xdputil or when it reports none (0: the Vivado flow, where VART skips its check too)."""
    import subprocess

    try:
        proc = subprocess.run(["xdputil", "query"], capture_output=True, text=True, timeout=120)
        kernels = json.loads(proc.stdout).get("kernels", []) if proc.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    found = []
    for kernel in kernels:
        try:
            value = int(str(kernel.get("fingerprint", "0")), 16)
        except ValueError:
            continue
        if value:
            found.append(value)
    return found


def fingerprint_problem(board: dict, on_board: list, compiled: dict):
    """One line saying what to rebuild when the board's DPU (``on_board``, from xdputil query), the bundle
    (board.json ``dpu_fingerprint``) and the xmodels' ``dpu_fingerprint`` attrs (``compiled``) disagree;
    None when they agree. VART compares all 64 bits and ignores a zero (dpu_runner_base_imp.cpp), so do we."""
    bundle = int(board["dpu_fingerprint"], 16) if board.get("dpu_fingerprint") else 0
    dpu = next((f for f in on_board if f), 0)
    target = board.get("target", "dpu-<board>")
    if dpu and bundle and dpu != bundle:
        return ("this board's DPU has fingerprint %#x (xdputil query) but the bundle was built for %#x: rebuild it "
                "with vidconv-export --target %s --fingerprint %#x, then compile it (compile/docker_run.sh)"
                % (dpu, bundle, target, dpu))
    for graph, value in sorted(compiled.items()):
        if value and bundle and value != bundle:
            return ("%s.xmodel was compiled for DPU fingerprint %#x but the bundle was built for %#x: compile it again "
                    "with the bundle's compile/compile.sh (it checks the arch.json) and copy the xmodels here"
                    % (graph, value, bundle))
        if value and dpu and value != dpu:
            return ("%s.xmodel was compiled for DPU fingerprint %#x but this board's DPU has %#x: rebuild the bundle "
                    "with vidconv-export --target %s --fingerprint %#x and compile it again" % (graph, value, dpu, target, dpu))
    return None


# --- the streaming split -----------------------------------------------------------------------

class Stream:
    """Ring buffer of the last L early-net outputs (int8); the later net runs once the buffer is full,
    then every ``stride`` frames (as ``vidconv_deploy.stream.StreamingRecognizer``)."""

    def __init__(self, backend, board: dict, stride: int = 1) -> None:
        self.backend, self.grid, self.stride = backend, tuple(board["grid"]), stride
        self.buffer = collections.deque(maxlen=self.grid[0] * self.grid[1])  # (features, fix point, frame index)
        self.in_fix = board["graphs"]["early"]["input_fix_point"]
        self.seconds = {"early": 0.0, "later": 0.0}
        self.runs = {"early": 0, "later": 0}
        self.pushed = 0
        self.logits_fix = None  # the later graph's output fix point, once it ran

    def timed(self, graph: str, x: np.ndarray, fix_point: int, frame) -> tuple:
        start = time.perf_counter()
        result = self.backend.run(graph, x, fix_point, frame)
        self.seconds[graph] += time.perf_counter() - start
        self.runs[graph] += 1
        return result

    def timing(self) -> dict:
        """Measured wall time per early run and per later run, in ms."""
        return {"ms_per_%s" % g: 1e3 * self.seconds[g] / max(self.runs[g], 1) for g in ("early", "later")}

    def window(self) -> tuple:
        """The frame indices of the oldest and the newest buffered frame (the window's first and last)."""
        return self.buffer[0][2], self.buffer[-1][2]

    def push(self, frame: np.ndarray, index) -> tuple:
        """One preprocessed frame ``(1, 3, H, W)`` float -> (logits, or None while filling or between
        windows; the tensors seen). Logits are the later graph's int8 codes times 2**-``logits_fix``."""
        x = to_layout(quantize(frame, self.in_fix), "NCHW", self.backend.layout)
        features, fix, seen = self.timed("early", x, self.in_fix, index)
        if self.buffer and self.buffer[-1][1] != fix:
            raise RuntimeError("the early graph's output fix point changed between frames")
        self.buffer.append((features, fix, index))
        self.pushed += 1
        if len(self.buffer) < self.buffer.maxlen or (self.pushed - self.buffer.maxlen) % self.stride:
            return None, seen
        tiled = collage([f for f, _, _ in self.buffer], self.grid, self.backend.layout)
        logits, self.logits_fix, later_seen = self.timed("later", tiled, fix, None)
        return dequantize(logits, self.logits_fix).reshape(-1), seen + later_seen


# --- golden vectors (the format of vidconv_deploy.dpu.golden) ----------------------------------

def read_golden(directory: Path) -> dict:
    path = directory / "index.json"
    if not path.is_file():
        raise BoardError("%s not found: copy the bundle's golden dir (it has index.json) to the board" % path)
    index = json.loads(path.read_text())
    if index.get("format") != GOLDEN_FORMAT:
        raise BoardError("%s has format %r, not %r: write it with the same vidconv-deploy" % (path, index.get("format"), GOLDEN_FORMAT))
    return index


def golden_values(directory: Path, entry: dict, layout: str) -> np.ndarray:
    raw = np.fromfile(str(directory / entry["file"]), dtype="<i1")
    if raw.size != int(np.prod(entry["shape"])):
        raise BoardError("%s: %d bytes, the index says shape %s: copy the golden dir again" % (entry["file"], raw.size, entry["shape"]))
    values = raw.reshape(entry["shape"]).astype(np.int8)
    return to_layout(values, "NCHW" if entry["layout"] == "NCHW" else "NHWC", layout) if values.ndim == 4 else values


def golden_clip(directory: Path, index: dict, frames: int) -> np.ndarray:
    """The golden clip's frames as floats ``(L, 3, H, W)``: the early graph's int8 inputs, dequantized."""
    inputs = sorted((e for e in index["input"] if e["graph"] == "early"), key=lambda e: e["frame"])
    if len(inputs) != frames:
        raise BoardError("the golden dir has %d early inputs, the board's collage needs %d frames" % (len(inputs), frames))
    return np.concatenate([dequantize(golden_values(directory, e, "NCHW"), e["fix_point"]) for e in inputs])


def _squeezed(shape) -> list:
    return [d for d in shape if d != 1]


def compare(directory: Path, index: dict, seen: list, tolerance: int) -> tuple:
    """Each seen tensor against its golden (inputs/outputs by role, other tensors by name): rows, unseen keys."""
    by_role, by_name = {}, {}
    for section, role in (("input", "input"), ("output", "output"), ("tensors", "tensor")):
        for e in index[section]:
            by_name[(e["graph"], e["frame"], e["name"])] = e
            if role != "tensor":
                by_role[(e["graph"], e["frame"], role)] = e
    rows, used = [], set()
    for s in seen:
        entry = by_role.get((s.graph, s.frame, s.role)) if s.role != "tensor" else by_name.get((s.graph, s.frame, s.name))
        row = {"tensor": s.key, "shape": list(s.values.shape), "fix_point": s.fix_point, "max_lsb": None,
               "within": 0, "over": 0}
        if entry is None:
            row["status"] = "no golden"
        else:
            used.add(id(entry))
            golden = golden_values(directory, entry, s.layout)
            if golden.shape != s.values.shape and _squeezed(golden.shape) == _squeezed(s.values.shape):
                golden = golden.reshape(s.values.shape)  # e.g. logits (1, 5) that XIR holds as (1, 1, 1, 5)
            if golden.shape != s.values.shape:
                row["status"] = "shape"
            elif entry["fix_point"] != s.fix_point:
                row["status"] = "fix_point"
            else:
                diff = np.abs(s.values.astype(np.int16) - golden.astype(np.int16))
                row["max_lsb"] = int(diff.max()) if diff.size else 0
                row["over"] = int(np.count_nonzero(diff > tolerance))
                row["within"] = int(np.count_nonzero(diff)) - row["over"]
                row["status"] = "exact" if row["max_lsb"] == 0 else ("within" if row["over"] == 0 else "over")
        rows.append(row)
    unseen = [e["name"] for e in by_name.values() if id(e) not in used]
    return rows, unseen


# --- inputs ------------------------------------------------------------------------------------

def load_board(board_dir: Path) -> dict:
    path = board_dir / BOARD_JSON
    if not path.is_file():
        raise BoardError("%s not found: give the board dir written by vidconv-export --target dpu-... (it has %s)" % (path, BOARD_JSON))
    try:
        board = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BoardError("%s is not JSON (%s): write the board dir again" % (path, err))
    if board.get("format") != BOARD_FORMAT:
        raise BoardError("%s has format %r, not %r: write it with the same vidconv-deploy" % (path, board.get("format"), BOARD_FORMAT))
    return board


def preprocess(rgb: np.ndarray, board: dict) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` at the model's image size -> ``(1, 3, H, W)`` float32, normalised with
    board.json's mean/std on the 0-255 scale (as ``vidconv_deploy.data.video.to_tensor``)."""
    x = (rgb.astype(np.float32) - np.float32(board["mean"])) / np.float32(board["std"])
    return x.transpose(2, 0, 1)[None]


def resized_size(width: int, height: int, board: dict) -> tuple:
    """(width, height) with the shorter side at board.json's ``short_side``, never smaller than the
    crop (as ``vidconv_deploy.data.video``)."""
    (crop_h, crop_w), short = board["image_size"], board["short_side"]
    scale = max(short / min(width, height), crop_h / height, crop_w / width)
    return max(crop_w, round(width * scale)), max(crop_h, round(height * scale))


def center_crop(rgb: np.ndarray, board: dict) -> np.ndarray:
    crop_h, crop_w = board["image_size"]
    top, left = (rgb.shape[0] - crop_h) // 2, (rgb.shape[1] - crop_w) // 2
    return rgb[top : top + crop_h, left : left + crop_w]


def resize_crop(frame, board: dict) -> np.ndarray:
    """A decoded PyAV frame -> uint8 RGB at the image size: shorter side to board.json's
    ``short_side`` (bilinear, libswscale), then a center crop, as ``vidconv_deploy.data.video.read_frames``."""
    width, height = resized_size(frame.width, frame.height, board)
    return center_crop(frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR").to_ndarray(), board)


def resize_crop_cv2(cv2, bgr: np.ndarray, board: dict) -> np.ndarray:
    """A frame OpenCV decoded (BGR) -> uint8 RGB at the image size: the same geometry as :func:`resize_crop`
    with ``cv2.resize`` (bilinear), whose pixel values may differ from libswscale's by rounding."""
    width, height = resized_size(bgr.shape[1], bgr.shape[0], board)
    rgb = cv2.cvtColor(cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    return center_crop(rgb, board)


def frames_from(path: Path, board: dict, step: int = 1):
    """``(index, seconds or None, frame (1, 3, H, W) float32)`` for every ``step``-th frame of a .npy
    (float (N, 3, H, W) preprocessed, or uint8 RGB (N, H, W, 3)) or of a video (PyAV, else OpenCV).
    Bad input raises :class:`BoardError` here, before any backend is loaded, or at the first frame."""
    h, w = board["image_size"]
    if not path.is_file():
        raise BoardError("%s not found: give a .npy of frames or a video file" % path)
    if path.suffix.lower() == ".npy":
        try:
            with open(str(path), "rb") as f:
                if f.read(6) != b"\x93NUMPY":
                    raise BoardError("cannot read %s as a .npy (no .npy header): save the frames with numpy.save" % path)
            frames = np.load(str(path), mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise BoardError("cannot read %s as a .npy (%s): save the frames with numpy.save"
                             % (path, " ".join(str(err).split()) or type(err).__name__))
        if frames.ndim == 4 and frames.shape[1:] == (3, h, w) and frames.dtype.kind == "f":
            convert = lambda i: np.asarray(frames[i : i + 1], dtype=np.float32)  # noqa: E731
        elif frames.ndim == 4 and frames.shape[1:] == (h, w, 3) and frames.dtype == np.uint8:
            convert = lambda i: preprocess(np.asarray(frames[i]), board)  # noqa: E731
        else:
            raise BoardError("%s holds %s %s: give float32 (N, 3, %d, %d) frames or uint8 RGB (N, %d, %d, 3)"
                             % (path, frames.dtype, frames.shape, h, w, h, w))
        return ((i, None, convert(i)) for i in range(0, len(frames), step))
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        return _frames_pyav(av, path, board, step)
    try:
        import cv2
    except ImportError:
        raise BoardError("decoding %s needs PyAV (pip install av) or OpenCV (cv2): install one, or give the frames "
                         "as a .npy" % path)
    return _frames_cv2(cv2, path, board, step)


def _frames_pyav(av, path: Path, board: dict, step: int):
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise BoardError("cannot decode %s (%s): give another video or a .npy of frames" % (path, err))
    if not container.streams.video:
        container.close()
        raise BoardError("%s holds no video stream: give a video or a .npy of frames" % path)
    stream = container.streams.video[0]

    def frames():
        with container:
            try:
                for i, frame in enumerate(container.decode(stream)):
                    if i % step == 0:
                        seconds = float(frame.time) if frame.time is not None else None
                        yield i, seconds, preprocess(resize_crop(frame, board), board)
            except av.error.FFmpegError as err:
                raise BoardError("cannot decode %s (%s): give another video or a .npy of frames" % (path, err))

    return frames()


def _frames_cv2(cv2, path: Path, board: dict, step: int):
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise BoardError("OpenCV cannot open %s as a video: give another video or a .npy of frames" % path)
    rate = capture.get(cv2.CAP_PROP_FPS) or 0.0

    def frames():
        try:
            i = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                if i % step == 0:
                    yield i, (i / rate if rate > 0 else None), preprocess(resize_crop_cv2(cv2, bgr, board), board)
                i += 1
        finally:
            capture.release()

    return frames()


def top_k(logits: np.ndarray, names: list, k: int = 5) -> list:
    z = np.exp(logits - logits.max())
    prob = z / z.sum()
    order = np.argsort(-logits, kind="stable")[:k]
    return [{"class": int(i), "name": names[i], "logit": float(logits[i]), "prob": float(prob[i])} for i in order]


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run_xmodel.py", description=__doc__.splitlines()[0],
        epilog="exit codes: 0 ran (clip: matched the golden vectors; stream: at least one window predicted), "
               "1 golden mismatch, 2 bad input. A video for --stream needs PyAV (import av) or OpenCV (import cv2) "
               "on this host; without either, give the frames as a .npy.")
    parser.add_argument("board_dir", type=Path, help="the board dir (board.json, xmodels or QDQ ONNX graphs, golden/)")
    parser.add_argument("--backend", choices=("vart", "reference"), default="vart",
                        help="vart: the DPU through VART (on the board); reference: our integer reference (any host)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--clip", type=Path, help="one clip: .npy of L preprocessed frames, float32 (L, 3, H, W)")
    source.add_argument("--stream", type=Path, metavar="FRAMES",
                        help="the sliding window over FRAMES: a .npy of float32 (T, 3, H, W) preprocessed frames or "
                             "uint8 RGB (T, H, W, 3) at the image size (normalised with board.json's mean/std), or a "
                             "video file (needs PyAV or OpenCV's cv2: shorter side to board.json's short_side, "
                             "center crop); a prediction every --stride frames once L frames are in")
    parser.add_argument("--golden", type=Path, help="golden dir to compare every tensor with (clip mode; default clip: its own)")
    parser.add_argument("--tolerance", type=int, help="allowed |difference| in LSB (default: the golden dir's)")
    parser.add_argument("--stride", type=int, metavar="K", default=1,
                        help="stream mode: a prediction every K (used) frames once L are in (default 1)")
    parser.add_argument("--clips", type=int, metavar="N", default=1,
                        help="stream mode: score = mean logits of the last N windows (default 1)")
    parser.add_argument("--topk", type=int, metavar="K", default=5, help="stream mode: classes shown per window (default 5)")
    parser.add_argument("--frame-step", type=int, metavar="K", default=1,
                        help="stream mode: use every K-th frame of FRAMES only (default 1: all)")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stream mode: stop after this many (used) frames")
    parser.add_argument("--vart-mode", default="run", choices=("run", "ref", "sim"),
                        help="vart runner mode as in xdputil run -r (default run)")
    parser.add_argument("--json", action="store_true",
                        help="clip mode: one JSON report instead of text; stream mode: one JSON object per window, a line each")
    return parser.parse_args(argv)


def make_backend(args: argparse.Namespace, board: dict):
    if args.backend == "reference":
        return ReferenceBackend(args.board_dir, board)
    return VartBackend(args.board_dir, board, args.vart_mode)


def run_clip(args: argparse.Namespace, board: dict) -> int:
    frames = board["frames"]
    index = read_golden(args.golden) if args.golden else None
    if args.clip is not None:
        if not args.clip.is_file():
            raise BoardError("%s not found: give a .npy of %d preprocessed frames (%d, 3, H, W)" % (args.clip, frames, frames))
        clip = np.load(str(args.clip), allow_pickle=False).astype(np.float32)
        clip = clip[0] if clip.ndim == 5 else clip
    elif index is not None:
        clip = golden_clip(args.golden, index, frames)
    else:
        raise BoardError("nothing to run: give --clip FILE.npy, --stream FILE or --golden DIR")
    h, w = board["image_size"]
    if clip.shape != (frames, 3, h, w):
        raise BoardError("clip of shape %s: the model takes %d frames of (3, %d, %d)" % (clip.shape, frames, h, w))
    backend = make_backend(args, board)
    stream = Stream(backend, board)
    seen, logits = [], None
    for t in range(frames):
        logits, frame_seen = stream.push(clip[t : t + 1], t)
        seen += frame_seen
    report = {"backend": args.backend, "top5": top_k(logits, board["class_names"]), "logits": logits.tolist(), **stream.timing()}
    code = 0
    if index is not None:
        tolerance = index["tolerance_lsb"] if args.tolerance is None else args.tolerance
        rows, unseen = compare(args.golden, index, seen, tolerance)
        ok = all(r["status"] in ("exact", "within") for r in rows)
        report["golden"] = {"ok": ok, "tolerance_lsb": tolerance, "tensors": rows, "unseen": len(unseen)}
        code = 0 if ok else 1
    print_report(report, args.json)
    return code


def run_stream(args: argparse.Namespace, board: dict) -> int:
    """The sliding window of ``vidconv-stream`` on this backend: one early run per frame, a window every
    ``--stride`` frames once L are buffered; a line (or a JSON object) per window."""
    if args.golden:
        raise BoardError("golden vectors hold one clip: compare them in clip mode (drop --stream)")
    for flag, value in (("--stride", args.stride), ("--clips", args.clips), ("--topk", args.topk),
                        ("--frame-step", args.frame_step), ("--max-frames", args.max_frames)):
        if value is not None and value < 1:
            raise BoardError("%s %d: give 1 or more" % (flag, value))
    frames = frames_from(args.stream, board, args.frame_step)
    stream = Stream(make_backend(args, board), board, args.stride)
    names, length = board["class_names"], stream.buffer.maxlen
    k = min(args.topk, len(names))
    recent = collections.deque(maxlen=args.clips)
    used, windows, start = 0, 0, time.perf_counter()
    try:
        for index, seconds, frame in frames:
            logits, _ = stream.push(frame, index)
            used += 1
            if logits is not None:
                recent.append(logits)
                score = np.mean(np.stack(recent), axis=0)  # as StreamingRecognizer's multi-clip score
                fps = used / (time.perf_counter() - start)
                first, last = stream.window()
                top = top_k(score, names, k)
                if args.json:
                    line = {"window": windows, "frames": [first, last], "time_s": None if seconds is None else round(seconds, 3),
                            "top": [[p["name"], round(p["prob"], 4)] for p in top], "logits": logits.tolist(),
                            "fix_point": stream.logits_fix, "fps": round(fps, 2), "backend": args.backend}
                    if args.clips > 1:
                        line["score"] = score.tolist()
                    print(json.dumps(line), flush=True)
                else:
                    when = "" if seconds is None else "%8.2fs  " % seconds
                    print("%sframes %d-%d  %s  (%.1f frames/s)" % (when, first, last, "  ".join(
                        "%s %.2f" % (p["name"], p["prob"]) for p in top), fps), flush=True)
                windows += 1
            if args.max_frames is not None and used >= args.max_frames:
                break
    finally:
        frames.close()
    if windows == 0:
        raise BoardError("%s gave %d frames, fewer than the %d one window needs (a %dx%d collage): give more frames"
                         % (args.stream, used, length, stream.grid[0], stream.grid[1]))
    if not args.json:
        timing = stream.timing()
        print("%d frames, %d windows (L %d, stride %d, clips %d); early %.2f ms/frame, later %.2f ms/window"
              % (used, windows, length, args.stride, args.clips, timing["ms_per_early"], timing["ms_per_later"]))
    return 0


def print_report(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print("backend %s; early %.2f ms/frame, later %.2f ms/collage" % (report["backend"], report["ms_per_early"], report["ms_per_later"]))
    for rank, p in enumerate(report["top5"], 1):
        print("%d. %-30s %.3f (logit %.4f)" % (rank, p["name"], p["prob"], p["logit"]))
    golden = report.get("golden")
    if golden is None:
        return
    print("\n%-60s %-14s %5s %9s %8s %8s  %s" % ("tensor", "shape", "fix", "max|LSB|", "within", "over", "status"))
    for r in golden["tensors"]:
        print("%-60s %-14s %5s %9s %8d %8d  %s" % (r["tensor"][-60:], "x".join(map(str, r["shape"])), r["fix_point"],
                                                 "-" if r["max_lsb"] is None else r["max_lsb"], r["within"], r["over"], r["status"]))
    verdict = "MATCH" if golden["ok"] else "MISMATCH"
    print("\n%s: %d tensors compared, tolerance %d LSB; %d golden tensors not seen by this backend"
          % (verdict, len(golden["tensors"]), golden["tolerance_lsb"], golden["unseen"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        board = load_board(args.board_dir)
        return run_stream(args, board) if args.stream is not None else run_clip(args, board)
    except BoardError as err:
        print("run_xmodel.py: error: %s" % err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
