"""Runners: each equals its engine called directly; the streaming split equals the whole-clip model."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from vidconv_deploy import build_model
from vidconv_deploy.errors import UserError
from vidconv_deploy.export.deploy_model import to_deploy
from vidconv_deploy.export.onnx_export import MethodModule, relative_error
from vidconv_deploy.onnx_session import ort_session
from vidconv_deploy.export.passes import STANDARD_PASSES, apply_passes
from vidconv_deploy.models.collage import frames_to_collage
from vidconv_deploy.quant import quantize_onnx
from vidconv_deploy.reference import run_reference
from vidconv_deploy.runners import (
    FinnRunner, IntegerReferenceRunner, OnnxRuntimeRunner, QonnxRunner, StreamingSplit, TorchRunner, VartRunner, collage,
)

#: The streaming split against the whole-clip model (the export's rewrite tolerance).
REWRITE_TOLERANCE = 1e-5


def conv_relu():
    """x (1, 2, 4, 4) -> Conv 3x3 (3 channels, pad 1) -> Relu -> y: a float graph every engine runs."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "conv_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], [weight, bias],
        value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 3, 4, 4])])  # qonnx needs every shape
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feed(seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 2, 4, 4)).astype(np.float32)}


def test_onnxruntime_runner_equals_the_session_from_every_source(tmp_path):
    model = conv_relu()
    expected = ort_session(model).run(None, feed())[0]
    (tmp_path / "g.onnx").write_bytes(model.SerializeToString())
    for source in (model, model.SerializeToString(), tmp_path / "g.onnx"):
        runner = OnnxRuntimeRunner(source)
        assert runner.session is None  # nothing heavy before it is needed
        assert (runner.input_names, runner.output_names) == (["x"], ["y"])
        np.testing.assert_array_equal(runner.run(feed())["y"], expected)  # the same engine: exact
    single = OnnxRuntimeRunner(model, threads=1)
    np.testing.assert_array_equal(single.run(feed())["y"], expected)
    assert single.session.get_session_options().intra_op_num_threads == 1
    assert OnnxRuntimeRunner(tmp_path / "g.onnx").name == "onnxruntime:g.onnx"
    with pytest.raises(UserError, match=r"do not match the model's inputs \['x'\] \(missing \['x'\], unknown \['z'\]\)"):
        OnnxRuntimeRunner(model).run({"z": feed()["x"]})
    with pytest.raises(UserError, match="missing.onnx not found"):
        OnnxRuntimeRunner(tmp_path / "missing.onnx").load()


class TwoHeads(nn.Module):
    """Dropout (so eval mode shows) and two outputs (so naming shows)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.drop = nn.Linear(4, 3), nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.drop(self.linear(x))
        return y, y.sum(1)


def test_torch_runner_is_the_module_in_eval_mode_without_grad():
    torch.manual_seed(0)
    module = TwoHeads().train()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out = TorchRunner(module, ["x"], ["y", "total"]).run({"x": x})
    assert not module.training
    with torch.no_grad():
        y, total = module(torch.from_numpy(x))
    np.testing.assert_array_equal(out["y"], y.numpy())  # the same engine: exact
    np.testing.assert_array_equal(out["total"], total.numpy())


def test_torch_runner_unwraps_brevitas_quant_tensors():
    import brevitas.nn as qnn

    quant = qnn.QuantIdentity(return_quant_tensor=True)
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(1, 3, 2, 2)
    quant(torch.from_numpy(x))  # one calibration pass in training mode
    out = TorchRunner(quant).run({"input": x})["output"]
    with torch.no_grad():
        expected = quant.eval()(torch.from_numpy(x)).value.numpy()
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, expected)


@pytest.fixture(scope="module")
def qdq():
    """conv_relu quantized by our quantizer (power-of-two scales, what the integer reference takes)."""
    return quantize_onnx(conv_relu(), [feed(s) for s in range(4)]).model


@pytest.mark.parametrize("rounding", ["onnxruntime", "dpu"])
def test_integer_reference_runner_equals_run_reference(qdq, rounding):
    runner = IntegerReferenceRunner(qdq, rounding)
    for seed in (5, 6):  # one executor, several runs
        expected = run_reference(qdq, feed(seed), rounding=rounding)
        np.testing.assert_array_equal(runner.run(feed(seed))["y"], expected.outputs["y"])  # bit for bit
        trace = runner.trace(feed(seed))
        assert trace.tensors.keys() == expected.tensors.keys()
        for name, tensor in trace.tensors.items():
            assert tensor.fix_point == expected.tensors[name].fix_point
            np.testing.assert_array_equal(tensor.values, expected.tensors[name].values)
    with pytest.raises(UserError, match=r"unknown rounding 'ort'; use one of \['dpu', 'onnxruntime'\]"):
        IntegerReferenceRunner(qdq, "ort")


def test_qonnx_and_finn_runners_equal_execute_onnx(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    model = conv_relu()
    expected = execute_onnx(ModelWrapper(model), feed())["y"]
    (tmp_path / "g.onnx").write_bytes(model.SerializeToString())
    for source in (model, ModelWrapper(model), tmp_path / "g.onnx"):
        np.testing.assert_array_equal(QonnxRunner(source).run(feed())["y"], expected)  # the same engine: exact
    pytest.importorskip("finn", reason="finn-plus not installed (scripts/finn-install.sh)")
    from finn.core.onnx_exec import execute_onnx as execute_finn

    runner = FinnRunner(model)
    assert runner.name == "finn" and runner.input_names == ["x"]
    np.testing.assert_array_equal(runner.run(feed())["y"], execute_finn(ModelWrapper(model), feed())["y"])


def test_finn_runner_without_finn_plus_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "finn.core.onnx_exec", None)  # any import of it now fails
    with pytest.raises(UserError, match=r"finn: running FINN graphs needs finn-plus .*scripts/finn-install.sh"):
        FinnRunner(conv_relu()).load()


def test_vart_runner_without_vart_names_the_missing_module(monkeypatch, tmp_path):
    for name in ("vart", "xir"):
        monkeypatch.setitem(sys.modules, name, None)
    runner = VartRunner(tmp_path / "early.xmodel")  # construction needs nothing
    with pytest.raises(UserError, match=r"vart:early.xmodel: the VART runner needs Vitis AI's `vart` and `xir` Python "
                                        r"modules \(.*vart.*\); run it on the board"):
        runner.load()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_collage_puts_frame_t_at_row_t_div_cols_column_t_mod_cols(layout):
    rows, cols, c, h, w = 2, 3, 2, 3, 4
    frames = [np.full((1, c, h, w), t, np.int8) + np.arange(c * h * w, dtype=np.int8).reshape(1, c, h, w) * 8
              for t in range(rows * cols)]
    if layout == "NHWC":
        frames = [f.transpose(0, 2, 3, 1) for f in frames]
    tiled = collage(frames, (rows, cols), layout)
    assert tiled.dtype == np.int8
    if layout == "NHWC":
        assert tiled.shape == (1, rows * h, cols * w, c)
        tiled, frames = tiled.transpose(0, 3, 1, 2), [f.transpose(0, 3, 1, 2) for f in frames]
    assert tiled.shape == (1, c, rows * h, cols * w)
    for t in range(rows * cols):
        r, col = t // cols, t % cols
        np.testing.assert_array_equal(tiled[:, :, r * h : (r + 1) * h, col * w : (col + 1) * w], frames[t])
    np.testing.assert_array_equal(tiled, frames_to_collage(torch.from_numpy(np.concatenate(frames)), (rows, cols)).numpy())
    with pytest.raises(ValueError, match=r"5 frame maps .* do not tile a 2x3 collage"):
        collage(frames[:5], (rows, cols))


@pytest.fixture(scope="module")
def tiny_vic():
    """A tiny ViC-T on a 2x3 grid and its exact deploy rewrite."""
    torch.manual_seed(0)
    model = build_model("vic-t", num_classes=5, image_size=64, frames=6, grid=(2, 3), dims=(8, 16, 24, 32),
                        depths=(1, 1, 2, 1), neck_dim=40).eval()
    deploy = apply_passes(to_deploy(model), STANDARD_PASSES)
    return model, deploy


def test_streaming_split_equals_the_whole_clip_model(tiny_vic):
    model, deploy = tiny_vic
    split = StreamingSplit((2, 3), TorchRunner(MethodModule(deploy, deploy.early), ["frame"], ["features"]),
                           TorchRunner(MethodModule(deploy, deploy.later), ["collage"], ["logits"]))
    clips = [torch.randn(1, 6, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    for clip in clips:
        with torch.no_grad():
            expected = model(clip).numpy()
        result = split.run_clip(clip.numpy())
        assert result.logits.shape == (1, 5) and len(result.early_outputs) == 6
        assert result.collage.shape == deploy.collage_shape() == (1, 24, 8, 12)
        assert relative_error(result.logits, expected) <= REWRITE_TOLERANCE
        np.testing.assert_array_equal(split.run_clip(clip.numpy()[0]).logits, result.logits)  # (L, 3, H, W) too
    early_feeds, later_feeds = split.feeds([c.numpy()[0] for c in clips])
    assert len(early_feeds) == 12 and early_feeds[7]["frame"].dtype == np.float32
    np.testing.assert_array_equal(early_feeds[7]["frame"], clips[1].numpy()[0, 1:2])
    np.testing.assert_array_equal(later_feeds[1]["collage"], split.run_clip(clips[1].numpy()).collage)
    with ThreadPoolExecutor(2) as pool:  # the frames on a core pool: the same feeds, in order, bit for bit
        pooled = split.feeds([c.numpy()[0] for c in clips], lambda fn, items: list(pool.map(fn, items)))
    for got, want in zip(pooled, (early_feeds, later_feeds), strict=True):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match=r"clip of shape \(4, 3, 64, 64\) does not fit a 2x3 collage: expected \(6, 3, H, W\)"):
        split.frame_feeds(clips[0].numpy()[0, :4])


def test_training_imports_no_quantizer_or_finn_engine():
    # Training evaluates with the runners; importing them must not pull qonnx, finn, Brevitas, Quark or the
    # Quark cross-check (a GPU training host without qonnx failed at import before the runners loaded it lazily).
    import subprocess

    code = ("import sys, vidconv_deploy.cli.train; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('qonnx', 'finn', 'brevitas', 'quark') "
            "or m.startswith(('vidconv_deploy.quark.crosscheck', 'vidconv_deploy.quark.quantize'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout
