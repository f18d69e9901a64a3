"""The board runner end to end on a tiny quantized DPU variant: reference backend, a VART stand-in, golden checks."""

from __future__ import annotations

import importlib.util
import json
import math
import runpy
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from vidconv_deploy import build_model
from vidconv_deploy.data.video import IMAGENET_MEAN, IMAGENET_STD, load_clips, to_tensor
from vidconv_deploy.dpu.board_dir import io_fix_points, write_board_dir
from vidconv_deploy.dpu.golden import clip_golden, compare_golden, read_golden, write_clip_golden
from vidconv_deploy.export.deploy_model import to_deploy
from vidconv_deploy.export.onnx_export import MethodModule, export_graph
from vidconv_deploy.export.passes import apply_passes, dpu_passes
from vidconv_deploy.models.collage import frames_to_collage
from vidconv_deploy.quant import quantize_onnx
from vidconv_deploy.reference import run_reference
from vidconv_deploy.runners import OnnxRuntimeRunner, StreamingSplit

RUNNER = Path(__file__).parents[1] / "hw" / "board" / "run_xmodel.py"
CLASSES = ["walk", "run", "jump", "sit", "wave"]


def load_runner():
    spec = importlib.util.spec_from_file_location("run_xmodel", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = load_runner()


def randomise(model: nn.Module) -> nn.Module:
    """Weights of unit gain and non-trivial BatchNorms, so that activations and logits are far from zero."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A 3x3-collage vic-nano-dpu, quantized with our quantizer: its board dir with the golden vectors of one clip."""
    model = randomise(build_model("vic-nano-dpu", num_classes=5, image_size=64, dims=(16, 16, 16, 16),
                                  depths=(1, 1, 1, 1), neck_dim=16))
    deploy = apply_passes(to_deploy(model), dpu_passes(16))
    early = export_graph(MethodModule(deploy, deploy.early), torch.randn(deploy.frame_shape()), "frame", "features").model
    later = export_graph(MethodModule(deploy, deploy.later), torch.randn(deploy.collage_shape()), "collage", "logits").model
    gen = torch.Generator().manual_seed(0)
    clips = [torch.randn(9, 3, 64, 64, generator=gen).numpy() for _ in range(2)]
    frames, collages = StreamingSplit((3, 3), OnnxRuntimeRunner(early), OnnxRuntimeRunner(later)).feeds(clips)
    early_q = quantize_onnx(early, frames).model
    out_fix = io_fix_points(early_q)[1]
    later_q = quantize_onnx(later, collages, fixed_fix_points={"collage": out_fix}).model
    root = tmp_path_factory.mktemp("board")
    clip = clips[0]
    write_clip_golden(root / "golden", early_q, later_q, clip, (3, 3), meta={"clip": "random clip 0"})
    write_board_dir(root / "board", target="dpu-kv260", arch="vic-nano-dpu", grid=(3, 3), image_size=(64, 64),
                    early=early_q, later=later_q, class_names=CLASSES, golden_dir=root / "golden")
    np.save(root / "clip.npy", clip)
    tensors, logits = clip_golden(early_q, later_q, clip, (3, 3))
    return types.SimpleNamespace(root=root, dir=root / "board", golden=root / "board" / "golden", clip=clip,
                                 early=early_q, later=later_q, stream=np.concatenate([clip, clips[1][:2]]),
                                 tensors=tensors, logits=logits)


def run(argv, capsys) -> tuple[int, str, str]:
    code = runner.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_board_dir_contents(board):
    info = json.loads((board.dir / "board.json").read_text())
    assert (info["format"], info["board"], info["dpu"], info["grid"], info["frames"]) == (
        "vidconv-board/1", "KV260", "DPUCZDX8G_ISA1_B4096", [3, 3], 9)
    assert info["feature_shape"] == [16, 4, 4] and info["class_names"] == CLASSES and info["golden"] == "golden"
    assert (info["short_side"], info["mean"], info["std"]) == (73, IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist())
    early = info["graphs"]["early"]
    assert (early["xmodel"], early["onnx"], early["input_shape"]) == ("early.xmodel", "early.onnx", [1, 3, 64, 64])
    assert (early["input_fix_point"], early["output_fix_point"]) == io_fix_points(board.early)
    assert info["graphs"]["later"]["input_fix_point"] == early["output_fix_point"]
    assert not (board.dir / "early.xmodel").exists()  # only vai_c_xir makes xmodels
    assert (board.dir / "run_xmodel.py").read_bytes() == RUNNER.read_bytes()
    with pytest.raises(ValueError, match="4 class names for a model with 5 classes"):
        write_board_dir(board.root / "x", target="dpu-kv260", arch="a", grid=(3, 3), image_size=(64, 64), early=board.early,
                        later=board.later, class_names=CLASSES[:4])


def test_golden_holds_every_tensor_of_the_clip(board):
    tensors, logits = board.tensors, board.logits
    golden = read_golden(board.golden)
    early_keys = {t.key for t in tensors if t.graph == "early"}
    assert len(early_keys) == 9 * len(run_reference(board.early, {"frame": board.clip[:1]}, rounding="dpu").tensors)
    assert {e.key for e in golden.entries} == {t.key for t in tensors}
    assert compare_golden(board.golden, tensors).ok
    assert np.abs(logits).max() > 0.1 and golden.meta["logits"] == [round(float(v), 6) for v in logits.ravel()]
    assert [e.frame for e in golden.entries if e.role == "input" and e.graph == "early"] == list(range(9))


def test_reference_backend_matches_the_golden_clip(board, capsys):
    code, out, err = run([board.dir, "--backend", "reference", "--golden", board.golden, "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and err == ""
    golden = report["golden"]
    assert golden["ok"] and golden["unseen"] == 0 and golden["tolerance_lsb"] == 1
    assert len(golden["tensors"]) == len(read_golden(board.golden).entries)
    assert {r["status"] for r in golden["tensors"]} == {"exact"}
    np.testing.assert_allclose(report["logits"], board.logits.ravel(), rtol=0, atol=1e-6)
    assert report["top5"][0]["name"] == CLASSES[int(np.argmax(board.logits))]
    # the clip from a file gives the same logits; text output ends with the verdict
    code, out, _ = run([board.dir, "--backend", "reference", "--clip", board.root / "clip.npy", "--golden", board.golden],
                       capsys)
    assert code == 0 and "MATCH: " in out and "tolerance 1 LSB; 0 golden tensors not seen" in out


def test_a_tensor_off_by_more_than_the_tolerance_fails(board, capsys, tmp_path):
    golden = tmp_path / "golden"
    shutil.copytree(board.golden, golden)
    entry = next(e for e in read_golden(golden).entries if e.key == "later//stage4/stage4.0/pw2/Conv_output_0")
    values = np.fromfile(golden / entry.file, np.int8)
    values[7] = values[7] + 5 if values[7] <= 122 else values[7] - 5
    values.tofile(golden / entry.file)
    code, out, _ = run([board.dir, "--backend", "reference", "--golden", golden, "--json"], capsys)
    report = json.loads(out)["golden"]
    bad = [r for r in report["tensors"] if r["status"] != "exact"]
    assert code == 1 and not report["ok"]
    assert bad == [{"tensor": "later//stage4/stage4.0/pw2/Conv_output_0", "shape": [1, 16, 6, 6], "fix_point": entry.fix_point,
                    "max_lsb": 5, "within": 0, "over": 1, "status": "over"}]
    code, _, _ = run([board.dir, "--backend", "reference", "--golden", golden, "--tolerance", "5"], capsys)
    assert code == 0


def test_stream_mode_keeps_the_last_frames_in_order(board, capsys, tmp_path):
    np.save(tmp_path / "frames.npy", board.stream)  # 11 frames: windows after frames 8, 9, 10
    code, out, _ = run([board.dir, "--backend", "reference", "--stream", tmp_path / "frames.npy", "--json"], capsys)
    steps = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [s["frames"] for s in steps] == [[0, 8], [1, 9], [2, 10]]
    _, last = clip_golden(board.early, board.later, board.stream[2:], (3, 3))  # the last 9 frames, oldest first
    for step, logits in ((steps[0], board.logits), (steps[2], last)):
        z = np.exp(logits.ravel() - logits.max())
        assert step["top"][0] == [CLASSES[int(np.argmax(logits))], pytest.approx(z.max() / z.sum(), abs=1e-4)]
        np.testing.assert_array_equal(np.array(step["logits"]), logits.ravel().astype(np.float64))
    code, _, err = run([board.dir, "--backend", "reference", "--stream", tmp_path / "frames.npy", "--frame-step", "2"],
                       capsys)
    one_line_error(code, err, "frames.npy gave 6 frames, fewer than the 9 one window needs (a 3x3 collage)")  # 6 of 11


@pytest.fixture(scope="module")
def bundle(board, tmp_path_factory) -> Path:
    """The package's view of the same graphs: a DPU bundle manifest whose quant_onnx dir holds the board's QDQ graphs."""
    root = tmp_path_factory.mktemp("bundle")
    (root / "quant").mkdir()
    for graph in ("early", "later"):
        shutil.copyfile(board.dir / f"{graph}.onnx", root / "quant" / f"{graph}.onnx")
    (root / "manifest.json").write_text(json.dumps({
        "target": "dpu-kv260", "recipe": {"family": "dpu"}, "model": {"config": {"grid": [3, 3]}},
        "artifacts": {"quant_onnx": {"dir": "quant"}}}))
    return root


def test_stream_windows_equal_vidconv_stream_on_the_reference_bit_for_bit(board, bundle, capsys, tmp_path):
    """Issue 13: the board script's sliding window gives the logits of vidconv_deploy.stream's recognizer, exactly."""
    from vidconv_deploy.stream import StreamingRecognizer, open_backend

    rng = np.random.default_rng(7)
    frames = np.concatenate([board.clip, rng.standard_normal((5, 3, 64, 64)).astype(np.float32)])  # 14 frames
    np.save(tmp_path / "frames.npy", frames)
    code, out, err = run([board.dir, "--backend", "reference", "--stream", tmp_path / "frames.npy", "--stride", "2",
                          "--clips", "2", "--topk", "3", "--json"], capsys)
    lines = [json.loads(line) for line in out.splitlines()]
    backend = open_backend(bundle, "reference")  # as vidconv-stream --backend reference: int8 codes in the ring buffer
    expected = [p for p in map(backend.recognizer(stride=2, clips=2).push, frames) if p is not None]
    floats = [p for p in map(StreamingRecognizer(backend.split, stride=2, clips=2).push, frames) if p is not None]
    assert code == 0 and err == "" and backend.name == "reference" and len(lines) == len(expected) == len(floats)
    assert [line["frames"] for line in lines] == [[p.first_frame, p.last_frame] for p in expected] == [[0, 8], [2, 10], [4, 12]]
    assert [line["window"] for line in lines] == [0, 1, 2]
    for line, p, f in zip(lines, expected, floats):
        logits, score = np.array(line["logits"]), np.array(line["score"])
        assert np.array_equal(logits, p.logits.astype(np.float64)) and np.array_equal(score, p.score.astype(np.float64))
        assert np.array_equal(p.logits, f.logits)  # a float ring buffer gives the same windows
        codes = logits * 2.0 ** line["fix_point"]  # the later graph's int8 codes, exactly
        assert np.array_equal(codes, np.round(codes)) and np.abs(codes).max() <= 128
        assert [n for n, _ in line["top"]] == [CLASSES[i] for i, _ in p.topk(3)]
        assert [q for _, q in line["top"]] == pytest.approx([q for _, q in p.topk(3)], abs=1e-4)
        assert line["backend"] == "reference" and line["fps"] > 0 and line["time_s"] is None
    assert np.array_equal(lines[0]["logits"], board.logits.ravel().astype(np.float64))  # the golden clip's first window


class IndexBackend:
    """A stand-in backend: the early output of frame t is the code t, the later output the collage's codes in order,
    so each window's logits are the frame indices it tiled, row-major."""

    layout = "NCHW"

    def __init__(self, board_dir, board):
        pass

    def run(self, graph, x, fix_point, frame):
        if graph == "early":
            return np.full((1, 1, 1, 1), frame, np.int8), 0, []
        return np.ascontiguousarray(x).reshape(1, -1), 0, []


def test_stream_stride_frame_step_and_window_numbering(board, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "ReferenceBackend", IndexBackend)
    board_dir = tmp_path / "board"
    board_dir.mkdir()
    info = json.loads((board.dir / "board.json").read_text())
    info["class_names"] = [f"c{i}" for i in range(9)]  # the stand-in's 9 logits
    (board_dir / "board.json").write_text(json.dumps(info))
    np.save(tmp_path / "frames.npy", np.zeros((20, 3, 64, 64), np.float32))

    def windows(*flags):
        code, out, err = run([board_dir, "--backend", "reference", "--stream", tmp_path / "frames.npy", "--json", *flags],
                             capsys)
        assert code == 0 and err == ""
        lines = [json.loads(line) for line in out.splitlines()]
        assert [line["window"] for line in lines] == list(range(len(lines)))
        for line in lines:  # the window's frames, oldest first, tiled row-major
            first, last = line["frames"]
            assert line["logits"] == list(range(first, last + 1, (last - first) // 8))
        return lines

    assert [line["frames"] for line in windows()] == [[t - 8, t] for t in range(8, 20)]
    assert [line["frames"] for line in windows("--stride", "4")] == [[0, 8], [4, 12], [8, 16]]
    assert [line["frames"] for line in windows("--stride", "5")] == [[0, 8], [5, 13], [10, 18]]
    assert [line["frames"] for line in windows("--max-frames", "10")] == [[0, 8], [1, 9]]
    assert [line["frames"] for line in windows("--frame-step", "2")] == [[0, 16], [2, 18]]  # frames 0, 2, ... 18
    lines = windows("--stride", "2", "--clips", "3", "--topk", "2")
    assert len(lines) == 6 and "score" in lines[0] and len(lines[0]["top"]) == 2
    for i, line in enumerate(lines):
        recent = [w["logits"] for w in lines[max(0, i - 2) : i + 1]]
        assert line["score"] == pytest.approx(np.mean(recent, axis=0).tolist(), abs=1e-5)
        assert line["top"][0][0] == "c8"  # the newest frame has the largest code
    # text: a line per window (frames, top classes, frames/s), then the totals
    code, out, _ = run([board_dir, "--backend", "reference", "--stream", tmp_path / "frames.npy", "--stride", "4",
                        "--topk", "2"], capsys)
    text = out.splitlines()
    assert code == 0 and len(text) == 4 and text[1].startswith("frames 4-12  c8 ") and " c7 " in text[1]
    assert text[1].endswith(" frames/s)") and text[3].startswith("20 frames, 3 windows (L 9, stride 4, clips 1); early ")


class FakeCv2:
    """OpenCV's VideoCapture over a saved uint8 BGR array, with nearest-neighbour resizing (the wiring, not the pixels)."""

    INTER_LINEAR, COLOR_BGR2RGB, CAP_PROP_FPS = 1, 4, 5
    sizes = []

    class VideoCapture:
        def __init__(self, path):
            try:
                self.frames = list(np.load(path, allow_pickle=False))
            except ValueError:
                self.frames = None

        def isOpened(self):
            return self.frames is not None

        def get(self, prop):
            assert prop == FakeCv2.CAP_PROP_FPS
            return 10.0

        def read(self):
            return (True, self.frames.pop(0)) if self.frames else (False, None)

        def release(self):
            pass

    @staticmethod
    def resize(img, dsize, interpolation):
        assert interpolation == FakeCv2.INTER_LINEAR
        FakeCv2.sizes.append(dsize)
        return nearest(img, dsize)

    @staticmethod
    def cvtColor(img, code):
        assert code == FakeCv2.COLOR_BGR2RGB
        return img[..., ::-1]


def nearest(img, dsize):
    width, height = dsize
    return img[np.arange(height) * img.shape[0] // height][:, np.arange(width) * img.shape[1] // width]


def test_stream_decodes_a_video_with_opencv_without_pyav(tmp_path, monkeypatch):
    from vidconv_deploy.data.video import _resized_size

    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setitem(sys.modules, "cv2", FakeCv2)
    board = {"image_size": [16, 24], "short_side": 18, "mean": IMAGENET_MEAN.tolist(), "std": IMAGENET_STD.tolist()}
    bgr = np.random.default_rng(5).integers(0, 256, (5, 32, 64, 3), dtype=np.uint8)
    with open(tmp_path / "clip.avi", "wb") as f:
        np.save(f, bgr)
    frames = list(runner.frames_from(tmp_path / "clip.avi", board, step=2))
    assert [(i, t) for i, t, _ in frames] == [(0, 0.0), (2, 0.2), (4, 0.4)]
    assert FakeCv2.sizes[-1] == _resized_size(64, 32, 18, (16, 24)) == (36, 18)
    rgb = nearest(bgr[2][..., ::-1], (36, 18))[1:17, 6:30]  # the center 16x24
    np.testing.assert_array_equal(frames[1][2][0], to_tensor(rgb).numpy())
    (tmp_path / "bad.avi").write_bytes(b"not a video")
    with pytest.raises(runner.BoardError, match="OpenCV cannot open .*bad.avi as a video"):
        runner.frames_from(tmp_path / "bad.avi", board)


def test_stream_frames_are_preprocessed_as_the_data_pipeline_does(tmp_path):
    av = pytest.importorskip("av")
    board = {"image_size": [16, 24], "short_side": 18, "mean": IMAGENET_MEAN.tolist(), "std": IMAGENET_STD.tolist()}
    rgb = np.random.default_rng(3).integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    frames = list(runner.frames_from(tmp_path / "rgb.npy", board, step=2))
    assert [(i, t) for i, t, _ in frames] == [(0, None), (2, None), (4, None)] and frames[1][2].shape == (1, 3, 16, 24)
    np.testing.assert_array_equal(frames[1][2][0], to_tensor(rgb[2]).numpy())
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:  # 7 frames at another size: resized and center-cropped
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        noise = np.random.default_rng(4).integers(0, 256, (7, 32, 64, 3), dtype=np.uint8)
        for i in range(7):
            for packet in stream.encode(av.VideoFrame.from_ndarray(noise[i], format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    decoded = list(runner.frames_from(video, board, step=1))
    assert [i for i, _, _ in decoded] == list(range(7)) and decoded[3][1] == pytest.approx(0.3)
    np.testing.assert_array_equal(np.concatenate([f for _, _, f in decoded]),
                                  load_clips(video, np.arange(7), (16, 24), short_side=18).numpy())


def test_collage_and_rounding_match_the_package():
    frames = np.arange(9 * 2 * 3 * 4, dtype=np.int8).reshape(9, 2, 3, 4)
    expected = frames_to_collage(torch.from_numpy(frames), (3, 3)).numpy()
    got = runner.collage([frames[t : t + 1] for t in range(9)], (3, 3), "NCHW")
    np.testing.assert_array_equal(got, expected)
    nhwc = runner.collage([frames[t : t + 1].transpose(0, 2, 3, 1) for t in range(9)], (3, 3), "NHWC")
    np.testing.assert_array_equal(nhwc, expected.transpose(0, 2, 3, 1))
    # DPU rounding (half up) and saturation: fix point 1 scales by 2
    x = np.array([-1.25, 1.25, -1.3, 0.74, 100.0, -100.0])
    np.testing.assert_array_equal(runner.quantize(x, 1), np.array([-2, 3, -3, 1, 127, -128], np.int8))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_the_board_scripts_collage_is_the_streaming_splits(layout):
    """The board script keeps its own collage (it runs without the package): identical tensors, on a 2x3 grid too."""
    rng = np.random.default_rng(1)
    for grid in ((3, 3), (2, 3)):
        frames = [rng.integers(-128, 128, (1, 5, 2, 3), dtype=np.int8) for _ in range(grid[0] * grid[1])]
        if layout == "NHWC":
            frames = [f.transpose(0, 2, 3, 1) for f in frames]
        split = StreamingSplit(grid, OnnxRuntimeRunner(b""), OnnxRuntimeRunner(b""), layout=layout)  # never loaded
        ours, theirs = split.collage(frames), runner.collage(frames, grid, layout)
        assert ours.dtype == theirs.dtype == np.int8 and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)


class FakeVart:
    """VART's Python API as VART runs a compiled graph, computed by our reference: int8 NHWC tensors with fix points.

    The xmodel is stood in for by the QDQ ONNX graph (board.json points "xmodel" at it): no fake xmodel is written.
    """

    class Tensor:
        def __init__(self, name, dims, fix_point):
            self.name, self.dims, self.fix_point = name, dims, fix_point

        def get_attr(self, name):
            assert name == "fix_point"
            return self.fix_point

        def has_attr(self, name):
            return name == "fix_point"

    class Subgraph:
        def __init__(self, device, model=None, children=()):
            self.device, self.model, self.children = device, model, list(children)

        def has_attr(self, name):
            return name == "device" and self.device is not None

        def get_attr(self, name):
            return self.device

        def toposort_child_subgraph(self):
            return self.children

    class Graph:
        def __init__(self, model):
            self.root = FakeVart.Subgraph(None, children=[FakeVart.Subgraph("USER"), FakeVart.Subgraph("DPU", model)])

        @staticmethod
        def deserialize(path):
            return FakeVart.Graph(onnx.load(path))

        def get_root_subgraph(self):
            return self.root

    class Runner:
        @staticmethod
        def create_runner(subgraph, mode):
            assert mode == "run"
            return FakeVart.Runner(subgraph.model)

        def __init__(self, model):
            self.model = model
            in_fix, out_fix = io_fix_points(model)
            shape_in = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
            shape_out = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
            nhwc = (lambda s: [s[0], s[2], s[3], s[1]] if len(s) == 4 else s)
            self.t_in = FakeVart.Tensor("xir_in", nhwc(shape_in), in_fix)
            self.t_out = FakeVart.Tensor("xir_out", nhwc(shape_out), out_fix)

        def get_input_tensors(self):
            return [self.t_in]

        def get_output_tensors(self):
            return [self.t_out]

        def execute_async(self, inputs, outputs):
            x = runner.to_layout(inputs[0], "NHWC", "NCHW")
            result = run_reference(self.model, {self.model.graph.input[0].name: runner.dequantize(x, self.t_in.fix_point)},
                                   rounding="dpu")
            out = result.tensors[self.model.graph.output[0].name].values
            outputs[0][...] = runner.to_layout(out, "NCHW", "NHWC")
            return 7

        def wait(self, job):
            assert job == 7
            return 0


def test_vart_backend_with_a_stand_in_compares_inputs_and_outputs(board, capsys, tmp_path, monkeypatch):
    board_dir = tmp_path / "board"
    shutil.copytree(board.dir, board_dir)
    info = json.loads((board_dir / "board.json").read_text())
    for graph in ("early", "later"):
        info["graphs"][graph]["xmodel"] = f"{graph}.onnx"
    (board_dir / "board.json").write_text(json.dumps(info))
    monkeypatch.setitem(sys.modules, "xir", types.SimpleNamespace(Graph=FakeVart.Graph))
    monkeypatch.setitem(sys.modules, "vart", types.SimpleNamespace(Runner=FakeVart.Runner))
    code, out, _ = run([board_dir, "--golden", board.golden, "--json"], capsys)
    report = json.loads(out)["golden"]
    assert code == 0 and report["ok"]
    keys = [r["tensor"] for r in report["tensors"]]
    assert keys[:2] == ["early[0]/xir_in", "early[0]/xir_out"] and keys[-2:] == ["later/xir_in", "later/xir_out"]
    assert len(keys) == 20 and report["unseen"] == len(read_golden(board.golden).entries) - 20
    assert report["tensors"][-1]["shape"] == [1, 5] and report["tensors"][1]["shape"] == [1, 4, 4, 16]  # NHWC
    # the sliding window through the VART code path (NHWC ring buffer and collage) = the reference backend's windows
    np.save(tmp_path / "frames.npy", board.stream)
    windows = {}
    for backend in ("vart", "reference"):
        code, out, _ = run([board_dir, "--backend", backend, "--stream", tmp_path / "frames.npy", "--stride", "2", "--json"],
                           capsys)
        windows[backend] = [{k: v for k, v in json.loads(line).items() if k not in ("fps", "backend")}
                            for line in out.splitlines()]
        assert code == 0 and [w["frames"] for w in windows[backend]] == [[0, 8], [2, 10]]
    assert windows["vart"] == windows["reference"]


def test_help_needs_neither_vart_nor_the_package(capsys, monkeypatch):
    for name in ("vart", "xir", "vitis_ai_library", "vidconv_deploy", "onnx", "torch"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of these now fails
    monkeypatch.setattr(sys, "argv", [str(RUNNER), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(RUNNER), run_name="__main__")
    out = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0 and "--backend {vart,reference}" in out
    assert "--stream FRAMES" in out and "--stride K" in out and "needs PyAV (import av) or OpenCV (import cv2)" in out


def one_line_error(code: int, err: str, text: str) -> None:
    assert code == 2 and err.count("\n") == 1 and err.startswith("run_xmodel.py: error: ") and text in err


def test_bad_inputs_give_one_line_errors(board, capsys, tmp_path):
    code, _, err = run([tmp_path, "--backend", "reference"], capsys)
    one_line_error(code, err, f"{tmp_path / 'board.json'} not found: give the board dir written by vidconv-export")
    broken = tmp_path / "broken"
    shutil.copytree(board.dir, broken)
    (broken / "early.onnx").unlink()
    code, _, err = run([broken, "--backend", "reference", "--golden", board.golden], capsys)
    one_line_error(code, err, f"{broken / 'early.onnx'} not found: write the board dir again")
    code, _, err = run([board.dir, "--golden", board.golden], capsys)  # default backend: VART, not on this host
    one_line_error(code, err, "the vart backend needs Vitis AI's xir and vart Python modules")
    code, _, err = run([board.dir, "--backend", "reference"], capsys)
    one_line_error(code, err, "nothing to run: give --clip FILE.npy, --stream FILE or --golden DIR")
    np.save(tmp_path / "short.npy", board.clip[:4])
    code, _, err = run([board.dir, "--backend", "reference", "--clip", tmp_path / "short.npy"], capsys)
    one_line_error(code, err, "clip of shape (4, 3, 64, 64): the model takes 9 frames of (3, 64, 64)")
    code, _, err = run([board.dir, "--backend", "reference", "--stream", tmp_path / "short.npy", "--golden", board.golden],
                       capsys)
    one_line_error(code, err, "golden vectors hold one clip: compare them in clip mode")
    code, _, err = run([board.dir, "--backend", "reference", "--golden", tmp_path], capsys)
    one_line_error(code, err, f"{tmp_path / 'index.json'} not found: copy the bundle's golden dir")
    code, _, err = run([board.dir, "--backend", "reference", "--stream", tmp_path / "missing.mp4"], capsys)
    one_line_error(code, err, "missing.mp4 not found: give a .npy of frames or a video file")


def test_bad_stream_inputs_give_one_line_errors(board, capsys, tmp_path, monkeypatch):
    def stream_error(frames, text, *flags):
        code, out, err = run([board.dir, "--backend", "reference", "--stream", frames, *flags], capsys)
        one_line_error(code, err, text)
        assert out == ""

    np.save(tmp_path / "short.npy", board.clip[:4])
    stream_error(tmp_path / "short.npy", "short.npy gave 4 frames, fewer than the 9 one window needs (a 3x3 collage)")
    np.save(tmp_path / "frames.npy", board.stream)
    stream_error(tmp_path / "frames.npy", "frames.npy gave 8 frames, fewer than the 9", "--max-frames", "8")
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage" * 10)
    stream_error(tmp_path / "garbage.npy", "cannot read %s as a .npy (" % (tmp_path / "garbage.npy"))
    (tmp_path / "text.npy").write_text("1, 2, 3\n")
    stream_error(tmp_path / "text.npy", "cannot read %s as a .npy (no .npy header): save the frames with numpy.save"
                 % (tmp_path / "text.npy"))
    np.save(tmp_path / "ints.npy", board.clip[:9].astype(np.int16))
    stream_error(tmp_path / "ints.npy", "ints.npy holds int16 (9, 3, 64, 64): give float32 (N, 3, 64, 64) frames or uint8 RGB")
    for flag in ("--stride", "--clips", "--topk", "--frame-step", "--max-frames"):
        stream_error(tmp_path / "frames.npy", "%s 0: give 1 or more" % flag, flag, "0")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00not a video" * 100)
    if importlib.util.find_spec("av") is not None:
        stream_error(tmp_path / "garbage.mp4", "cannot decode %s (" % (tmp_path / "garbage.mp4"))
    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    stream_error(tmp_path / "garbage.mp4", "decoding %s needs PyAV (pip install av) or OpenCV (cv2): install one, "
                                           "or give the frames as a .npy" % (tmp_path / "garbage.mp4"))
    monkeypatch.setitem(sys.modules, "cv2", FakeCv2)
    stream_error(tmp_path / "garbage.mp4", "OpenCV cannot open %s as a video" % (tmp_path / "garbage.mp4"))
