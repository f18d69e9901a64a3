"""Which engines can stream a bundle, and the :class:`StreamingSplit` of each (its two graphs as runners).

A bundle's family (the manifest's recipe) says which forms of the model it holds: every bundle has
the float streaming graphs (ONNX Runtime); a DPU bundle adds the INT8 QDQ graphs (fake-quant in ONNX
Runtime, or the integer reference with the DPU's rounding, the codes the board computes); a FINN
bundle streams on its Brevitas model in float64, bit-exact with the FINN graphs, or on the float
PyTorch model it keeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from vidconv_deploy.bundle import read_manifest
from vidconv_deploy.errors import UserError
from vidconv_deploy.runners import GRAPHS, IntegerReferenceRunner, OnnxRuntimeRunner, StreamingSplit, TorchRunner, VartRunner
from vidconv_deploy.stream.recognizer import FloatBuffer, Int8Buffer, StreamingRecognizer

#: Backends whose early outputs are int8 codes: their ring buffer keeps the codes, as the board does.
INTEGER_BACKENDS = ("reference", "onnxruntime-int8", "vart")
#: Backends by family, in preference order (the first is the default).
FAMILY_BACKENDS = {
    "onnx": ("onnxruntime",),
    "dpu": ("reference", "onnxruntime-int8", "onnxruntime", "vart"),
    "finn": ("brevitas", "pytorch"),
}


def backends_of(manifest: dict) -> tuple[str, ...]:
    """The backends a bundle can stream on, the default first."""
    family = manifest.get("recipe", {}).get("family")
    if family not in FAMILY_BACKENDS:
        raise UserError("the bundle's manifest names no target family (written by an older vidconv-export): export it again")
    return FAMILY_BACKENDS[family]


def _file(bundle: Path, manifest: dict, role: str) -> Path:
    art = manifest["artifacts"].get(role)
    if art is None:
        raise UserError(f"{bundle} has no {role} (its export stopped before the step that writes it): export it "
                        f"without --stop-after")
    return bundle / art.get("file", art.get("dir", ""))


class Float64Graph(torch.nn.Module):
    """One graph of a FINN model in float64, channels-last at the host boundary, as the accelerator hands it over.

    Brevitas accumulates dequantized values in floating point; in float32 a frame run alone and the
    same frame in a batch of nine round differently at ties, so windows would differ from the whole
    clip by a few LSB. In float64 the accumulation is exact, as the integer hardware's (and as the FINN
    chain checks it), so every window equals the whole clip bit for bit.
    """

    def __init__(self, model: torch.nn.Module, part: str) -> None:
        super().__init__()
        self.model, self.part = model, part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = getattr(self.model, self.part)(x.double())
        out = getattr(out, "value", out)
        return out.permute(0, 2, 3, 1) if self.part == "early" else out


def _brevitas(bundle: Path, manifest: dict, grid: tuple[int, int]) -> StreamingSplit:
    from vidconv_deploy.finn.checkpoint import load_finn_checkpoint

    model = load_finn_checkpoint(_file(bundle, manifest, "finn_checkpoint")).eval().double()
    return StreamingSplit(grid, TorchRunner(Float64Graph(model, "early"), ("frame",), ("features",), name="brevitas early"),
                          TorchRunner(Float64Graph(model, "later"), ("collage",), ("logits",), name="brevitas later"),
                          layout="NHWC")


def _pytorch(bundle: Path, manifest: dict, grid: tuple[int, int]) -> StreamingSplit:
    """The bundle's float PyTorch model (FINN bundles keep it), rewritten to its early and later nets."""
    from vidconv_deploy.checkpoints import load_model
    from vidconv_deploy.export.deploy_model import to_deploy
    from vidconv_deploy.export.onnx_export import MethodModule

    deploy = to_deploy(load_model(_file(bundle, manifest, "float_checkpoint"))[0].eval())
    return StreamingSplit(grid, TorchRunner(MethodModule(deploy, deploy.early), ("frame",), ("features",), name="pytorch early"),
                          TorchRunner(MethodModule(deploy, deploy.later), ("collage",), ("logits",), name="pytorch later"))


def _vart(bundle: Path, manifest: dict, grid: tuple[int, int]) -> StreamingSplit:
    """The compiled xmodels on the board's DPU (VART): only where vai_c_xir ran and VART is installed."""
    xmodels = [bundle / "compile" / "xmodel" / g / f"{g}.xmodel" for g in GRAPHS]
    if not all(x.is_file() for x in xmodels):
        raise UserError(f"{bundle} holds no compiled xmodels (compile/xmodel/early|later): build them with "
                        f"compile/docker_run.sh, or stream with --backend reference (the same integers here)")
    return StreamingSplit(grid, VartRunner(xmodels[0]), VartRunner(xmodels[1]))


@dataclasses.dataclass
class Backend:
    """A bundle opened on one backend: its split, how the ring buffer keeps early outputs, the manifest."""

    name: str
    split: StreamingSplit
    buffer: FloatBuffer | Int8Buffer
    manifest: dict

    def recognizer(self, stride: int = 1, clips: int = 1) -> StreamingRecognizer:
        return StreamingRecognizer(self.split, stride=stride, clips=clips, buffer=self.buffer)


def _int8_buffer(bundle: Path, manifest: dict) -> Int8Buffer:
    """The board's buffer: int8 codes at the quantized early graph's output fix point."""
    import onnx

    from vidconv_deploy.dpu.board_dir import io_fix_points

    return Int8Buffer(io_fix_points(onnx.load(str(_file(bundle, manifest, "quant_onnx") / "early.onnx")))[1])


def open_backend(bundle: Path, backend: str | None = None) -> Backend:
    """``bundle`` opened on ``backend`` (``None``: the bundle's default backend)."""
    manifest = read_manifest(bundle)
    available = backends_of(manifest)
    name = backend or available[0]
    if name not in available:
        raise UserError(f"backend {name!r} is not one this {manifest['target']} bundle has: choose "
                        f"{', '.join(available)} (--backend)")
    grid = tuple(manifest["model"]["config"]["grid"])
    makers: dict[str, Callable[[], StreamingSplit]] = {
        "onnxruntime": lambda: StreamingSplit(grid, OnnxRuntimeRunner(_file(bundle, manifest, "early_onnx")),
                                              OnnxRuntimeRunner(_file(bundle, manifest, "later_onnx"))),
        "onnxruntime-int8": lambda: StreamingSplit(grid, *(OnnxRuntimeRunner(_file(bundle, manifest, "quant_onnx") / f"{g}.onnx")
                                                           for g in GRAPHS)),
        "reference": lambda: StreamingSplit(grid, *(IntegerReferenceRunner(_file(bundle, manifest, "quant_onnx") / f"{g}.onnx",
                                                                           "dpu") for g in GRAPHS)),
        "brevitas": lambda: _brevitas(bundle, manifest, grid),
        "vart": lambda: _vart(bundle, manifest, grid),
        "pytorch": lambda: _pytorch(bundle, manifest, grid),
    }
    split = makers[name]()
    buffer = _int8_buffer(bundle, manifest) if name in INTEGER_BACKENDS else FloatBuffer()
    return Backend(name, split, buffer, manifest)
