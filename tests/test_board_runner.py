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
    early_q = quantize_onnx(early, frames, progress=False).model
    out_fix = io_fix_points(early_q)[1]
    later_q = quantize_onnx(later, collages, fixed_fix_points={"collage": out_fix}, progress=False).model
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
    np.save(tmp_path / "frames.npy", board.stream)  # 11 frames: predictions after frames 8, 9, 10
    code, out, _ = run([board.dir, "--backend", "reference", "--stream", tmp_path / "frames.npy", "--json"], capsys)
    steps = json.loads(out)["predictions"]
    assert code == 0 and [s["frame"] for s in steps] == [8, 9, 10]
    _, last = clip_golden(board.early, board.later, board.stream[2:], (3, 3))  # the last 9 frames, oldest first
    for step, logits in ((steps[0], board.logits), (steps[2], last)):
        z = np.exp(logits.ravel() - logits.max())
        assert step["name"] == CLASSES[int(np.argmax(logits))] and step["prob"] == pytest.approx(z.max() / z.sum(), abs=1e-6)
    code, _, err = run([board.dir, "--backend", "reference", "--stream", tmp_path / "frames.npy", "--stride", "2"], capsys)
    one_line_error(code, err, "frames.npy gave fewer than 9 frames: a prediction needs a full collage")  # 6 of 11


def test_stream_frames_are_preprocessed_as_the_data_pipeline_does(tmp_path):
    av = pytest.importorskip("av")
    board = {"image_size": [16, 24], "short_side": 18, "mean": IMAGENET_MEAN.tolist(), "std": IMAGENET_STD.tolist()}
    rgb = np.random.default_rng(3).integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    frames = list(runner.frames_from(tmp_path / "rgb.npy", board, stride=2))
    assert len(frames) == 3 and frames[1].shape == (1, 3, 16, 24)
    np.testing.assert_array_equal(frames[1][0], to_tensor(rgb[2]).numpy())
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
    frames = np.concatenate(list(runner.frames_from(video, board, stride=1)))
    np.testing.assert_array_equal(frames, load_clips(video, np.arange(7), (16, 24), short_side=18).numpy())


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


def test_help_needs_neither_vart_nor_the_package(capsys, monkeypatch):
    for name in ("vart", "xir", "vitis_ai_library", "vidconv_deploy", "onnx", "torch"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of these now fails
    monkeypatch.setattr(sys, "argv", [str(RUNNER), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(RUNNER), run_name="__main__")
    assert exit_info.value.code == 0 and "--backend {vart,reference}" in capsys.readouterr().out


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
