"""Every form a bundle's model takes, behind one call: ``clips (N, L, 3, H, W) float32 -> logits (N, classes)``.

An accuracy report compares the same clips through the float graph, the hardware variant, the
fake-quant INT8 graphs in ONNX Runtime and the integer reference, so each is a small class with
the same call over a runner (:mod:`vidconv_deploy.runners`). The streaming forms run as a host runs
them, through :class:`~vidconv_deploy.runners.StreamingSplit`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vidconv_deploy.checkpoints import load_model
from vidconv_deploy.errors import UserError
from vidconv_deploy.bundle import read_manifest
from vidconv_deploy.quark.artifacts import ACCURACY_ROW as CROSSCHECK_ROW, ARTIFACT as CROSSCHECK_ARTIFACT, OURS_ROW
from vidconv_deploy.runners import IntegerReferenceRunner, OnnxRuntimeRunner, StreamingSplit, TorchRunner

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
        self.runner = TorchRunner(model, ("clips",), ("logits",))

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        return self.runner.run({"clips": clips})["logits"]


class WholeClipGraph(PerClip):
    """A graph whose input is the whole clip ``(1, L, 3, H, W)`` (``float.onnx``, ``deploy.onnx``)."""

    def __init__(self, path: Path) -> None:
        self.runner = OnnxRuntimeRunner(path)

    def one(self, clip: np.ndarray) -> np.ndarray:
        outputs = self.runner.run({self.runner.input_names[0]: clip[None]})
        return outputs[self.runner.output_names[0]][0]


class Streaming(PerClip):
    """A streaming split run as a host runs it: the early graph per frame, the host collage, the later graph."""

    def __init__(self, split: StreamingSplit) -> None:
        self.split = split

    def one(self, clip: np.ndarray) -> np.ndarray:
        return self.split.run_clip(clip).logits[0]


def bundle_classifiers(bundle: Path, include_reference: bool = True, teacher: Path | None = None) -> dict[str, ClipClassifier]:
    """Every form of the bundle's model its target family has (the manifest's recipe says which), in report order.

    ``teacher``: a faithful checkpoint the bundle's hardware variant was distilled from, scored too.
    """
    manifest = read_manifest(bundle)
    artifacts = manifest["artifacts"]
    grid = tuple(manifest["model"]["config"]["grid"])

    def path(role: str) -> Path:
        if role not in artifacts:
            raise UserError(f"{bundle} has no {role} (its export stopped before the step that writes it): "
                            f"export it without --stop-after")
        art = artifacts[role]
        return bundle / art.get("file", art.get("dir", ""))

    family = manifest.get("recipe", {}).get("family")
    if family is None:
        raise UserError(f"{bundle} was written by an older vidconv-export (its manifest names no recipe): "
                        f"export it again")
    found: dict[str, ClipClassifier] = {}
    if teacher is not None:
        found["faithful teacher (PyTorch)"] = TorchClassifier(load_model(teacher)[0])
    if family == "finn":  # the float model and its integer FINN variant, bit-exact with the accelerator
        if "float_checkpoint" in artifacts:
            found["float"] = TorchClassifier(load_model(path("float_checkpoint"))[0])
        from vidconv_deploy.finn.checkpoint import load_finn_checkpoint

        finn = load_finn_checkpoint(path("finn_checkpoint"))
        found[f"FINN {finn.bits} (Brevitas, bit-exact with the accelerator)"] = TorchClassifier(finn)
        return found
    found["float"] = WholeClipGraph(path("float_onnx"))
    found["deploy"] = WholeClipGraph(path("deploy_onnx"))
    if family == "vaiep":  # Quark's QDQ graphs on ONNX Runtime's CPU EP (the EP's device is not here)
        found["Quark QDQ (ONNX Runtime CPU)"] = Streaming(StreamingSplit(
            grid, OnnxRuntimeRunner(path("quark_early_onnx")), OnnxRuntimeRunner(path("quark_later_onnx"))))
        if "quark_int8_onnx" in artifacts:  # a BF16/mixed bundle: the INT8 graphs it is measured against
            int8 = path("quark_int8_onnx")
            found["Quark INT8 QDQ (ONNX Runtime CPU)"] = Streaming(StreamingSplit(
                grid, OnnxRuntimeRunner(int8 / "early.onnx"), OnnxRuntimeRunner(int8 / "later.onnx")))
    if family == "dpu":
        quant = path("quant_onnx")
        early, later = quant / "early.onnx", quant / "later.onnx"
        found[OURS_ROW] = Streaming(StreamingSplit(grid, OnnxRuntimeRunner(early),
                                                                           OnnxRuntimeRunner(later)))
        if CROSSCHECK_ARTIFACT in artifacts:  # --crosscheck quark: Quark's XINT8 graphs of the same streaming split
            crosscheck = path(CROSSCHECK_ARTIFACT)
            found[CROSSCHECK_ROW] = Streaming(StreamingSplit(grid, OnnxRuntimeRunner(crosscheck / "early.onnx"),
                                                             OnnxRuntimeRunner(crosscheck / "later.onnx")))
        if include_reference:
            # the early graph's int8 output keeps its fix position into the later graph (the quantizer
            # pins it), so the dequantized collage fed to the later graph re-quantizes to the same integers
            found["int8 integer reference (DPU rounding)"] = Streaming(StreamingSplit(
                grid, IntegerReferenceRunner(early, "dpu"), IntegerReferenceRunner(later, "dpu")))
    return found
