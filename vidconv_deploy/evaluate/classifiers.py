"""Every form a bundle's model takes, behind one call: ``clips (N, L, 3, H, W) float32 -> logits (N, classes)``.

An accuracy report compares the same clips through the float graph, the deploy variant, the
fake-quant INT8 graphs in ONNX Runtime and the integer reference, so each is a small class with
the same call. The streaming forms run as a host runs them: the early graph per frame, the collage
assembled on the host, then the later graph.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from vidconv_deploy.checkpoints import load_model
from vidconv_deploy.errors import UserError
from vidconv_deploy.export.bundle import MANIFEST
from vidconv_deploy.export.onnx_export import ort_session
from vidconv_deploy.models.collage import frames_to_collage

#: ``clips (N, L, 3, H, W) -> logits (N, classes)``.
ClipClassifier = Callable[[np.ndarray], np.ndarray]


class PerClip:
    """Adapts a one-clip call ``(L, 3, H, W) -> (classes,)`` (graphs have batch 1) to a batch of clips."""

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        return np.stack([self.one(clip) for clip in clips])

    def one(self, clip: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TorchClassifier:
    """A PyTorch VidConv (or the FINN variant, whose Brevitas logits carry a ``value``) in eval mode, a video's clips as one batch."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, clips: np.ndarray) -> np.ndarray:
        logits = self.model(torch.from_numpy(np.ascontiguousarray(clips)))
        return getattr(logits, "value", logits).numpy()


def collage(features: list[np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """Tile per-frame maps ``(1, C, h, w)`` row-major into ``(1, C, rows*h, cols*w)`` (the host's job)."""
    return frames_to_collage(torch.from_numpy(np.concatenate(features)), grid).numpy()


class WholeClipGraph(PerClip):
    """A graph whose input is the whole clip ``(1, L, 3, H, W)`` (``float.onnx``, ``deploy.onnx``)."""

    def __init__(self, path: Path) -> None:
        self.session = ort_session(path.read_bytes())
        self.input = self.session.get_inputs()[0].name

    def one(self, clip: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: clip[None]})[0][0]


class StreamingGraphs(PerClip):
    """The early graph per frame, the host collage, the later graph (float or fake-quant QDQ)."""

    def __init__(self, early: Path, later: Path, grid: tuple[int, int]) -> None:
        self.early, self.later = ort_session(early.read_bytes()), ort_session(later.read_bytes())
        self.early_input, self.later_input = self.early.get_inputs()[0].name, self.later.get_inputs()[0].name
        self.grid = grid

    def one(self, clip: np.ndarray) -> np.ndarray:
        features = [self.early.run(None, {self.early_input: frame[None]})[0] for frame in clip]
        return self.later.run(None, {self.later_input: collage(features, self.grid)})[0][0]


class IntegerStreaming(PerClip):
    """The integer reference on the quantized early and later graphs, with DPU or ONNX Runtime rounding.

    The early graph's int8 output keeps its fix position into the later graph (the quantizer pins
    it), so the dequantized collage fed to the later graph re-quantizes to the very same integers.
    """

    def __init__(self, early: Path, later: Path, grid: tuple[int, int], rounding: str) -> None:
        from vidconv_deploy.reference import run_reference  # numpy-heavy; only bundles with INT8 graphs need it

        self.run = run_reference
        self.early, self.later = onnx.load(str(early)), onnx.load(str(later))
        self.early_input, self.later_input = self.early.graph.input[0].name, self.later.graph.input[0].name
        self.grid, self.rounding = grid, rounding

    def one(self, clip: np.ndarray) -> np.ndarray:
        features = []
        for frame in clip:
            result = self.run(self.early, {self.early_input: frame[None]}, rounding=self.rounding)
            features.append(next(iter(result.outputs.values())))
        result = self.run(self.later, {self.later_input: collage(features, self.grid)}, rounding=self.rounding)
        return next(iter(result.outputs.values()))[0]


def read_manifest(bundle: Path) -> dict:
    """A bundle's manifest; a folder without one is not a finished bundle."""
    try:
        return json.loads((bundle / MANIFEST).read_text())
    except (OSError, ValueError):
        raise UserError(f"{bundle} holds no readable {MANIFEST}: give the folder vidconv-export wrote (--out/<arch>-<target>)") from None


def bundle_classifiers(bundle: Path, include_reference: bool = True, teacher: Path | None = None) -> dict[str, ClipClassifier]:
    """Every classifier the bundle's artifacts allow, by name, in report order.

    ``teacher``: a faithful checkpoint the bundle's deploy variant was distilled from, scored too.
    """
    manifest = read_manifest(bundle)
    artifacts = manifest["artifacts"]
    grid = tuple(manifest["model"]["config"]["grid"])

    def path(role: str) -> Path:
        return bundle / artifacts[role]["file"]

    found: dict[str, ClipClassifier] = {}
    if teacher is not None:
        found["faithful teacher (PyTorch)"] = TorchClassifier(load_model(teacher)[0])
    if "float_checkpoint" in artifacts:  # FINN bundles: the float model and its integer FINN variant
        found["float"] = TorchClassifier(load_model(path("float_checkpoint"))[0])
    if "finn_checkpoint" in artifacts:
        from vidconv_deploy.finn.checkpoint import load_finn_checkpoint

        finn = load_finn_checkpoint(path("finn_checkpoint"))
        found[f"FINN {finn.bits} (Brevitas, bit-exact with the accelerator)"] = TorchClassifier(finn)
    if "float_onnx" in artifacts:
        found["float"] = WholeClipGraph(path("float_onnx"))
    if "deploy_onnx" in artifacts:
        found["deploy"] = WholeClipGraph(path("deploy_onnx"))
    if "quant_onnx" in artifacts:
        quant = bundle / artifacts["quant_onnx"]["dir"]
        found["int8 fake-quant (ONNX Runtime)"] = StreamingGraphs(quant / "early.onnx", quant / "later.onnx", grid)
        if include_reference:
            found["int8 integer reference (DPU rounding)"] = IntegerStreaming(quant / "early.onnx", quant / "later.onnx",
                                                                              grid, "dpu")
    return found
