"""Quantize one streaming graph with AMD Quark from the same float feeds our own quantizer calibrates on.

Quark reads and writes files and takes an ONNX Runtime ``CalibrationDataReader``; this module hides
both. Its output graph is not topologically sorted (the ONNX checker and onnxsim reject it), so it
is sorted here before anyone else sees it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vidconv_deploy.quark.env import import_quark, quark_session

#: Quark's configs by the name our recipes use (quark/onnx/quantization/config/custom_config.py):
#: XINT8 = int8 symmetric, power-of-two scales, NPU CNN on (DPU refinement and simulation);
#: VINT8 = the same scales for VAIML (the Versal AI Edge Gen 2 NPU), NPU CNN off.
CONFIGS = ("XINT8", "VINT8")


@dataclasses.dataclass
class QuarkResult:
    """A QDQ model, the options it was made with, and what Quark printed."""

    model: onnx.ModelProto
    options: dict[str, Any]
    log: str


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its nodes in an order where every input is made before it is read."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [n for n in pending if all(i in ready for i in n.input)]
        if not runnable:
            raise ValueError(f"Quark's graph has a cycle or an unproduced input at node {pending[0].name!r}")
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if n not in runnable]
    del graph.node[:]
    graph.node.extend(ordered)
    return model


class _Feeds:
    """Quark's calibration reader over a list of feeds (an ``onnxruntime.quantization.CalibrationDataReader``)."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.feeds = [dict(f) for f in feeds]
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


def quark_config(name: str, exclude: Sequence[str] = (), extra: Mapping[str, Any] | None = None) -> Any:
    """Quark's QConfig ``name`` (XINT8 or VINT8) with ``exclude`` nodes left in float and ``extra`` options."""
    if name not in CONFIGS:
        raise ValueError(f"Quark config {name!r}: use one of {', '.join(CONFIGS)}")
    qonnx = import_quark()
    base = getattr(qonnx, f"{name}_QCONFIG")
    # Quark's own configs pass extra_options=... as a keyword, which QConfig keeps nested under that key.
    # VINT8 calibrates on random data by default (UseRandomData): ours is calibrated on the real feeds.
    options = {**base.extra_options["extra_options"], "PrintSummary": False, "UseRandomData": False, **(extra or {})}
    # A fresh layer config each time: Quark rewrites the one it is given (activation -> input_tensors)
    # and then refuses it. Both configs quantize every tensor with XInt8Spec (custom_config.py).
    layer = qonnx.QLayerConfig(input_tensors=qonnx.XInt8Spec(), weight=qonnx.XInt8Spec())
    return qonnx.QConfig(global_config=layer, exclude=list(exclude), extra_options=options)


def quantize_with_quark(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]], config: str = "XINT8",
                        exclude: Sequence[str] = (), extra: Mapping[str, Any] | None = None) -> QuarkResult:
    """``model`` quantized by Quark's ``config`` on ``feeds`` (one dict per calibration sample)."""
    qonnx = import_quark()
    qconfig = quark_config(config, exclude, extra)
    options = {"config": config, "exclude": list(exclude), "extra_options": dict(qconfig.extra_options["extra_options"])}
    with tempfile.TemporaryDirectory(prefix="vidconv-quark-") as tmp, quark_session() as log:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "quant.onnx"
        onnx.save(model, str(src))
        qonnx.ModelQuantizer(qconfig).quantize_model(str(src), str(dst), _Feeds(feeds))
        quantized = topologically_sorted(onnx.load(str(dst)))
    return QuarkResult(quantized, options, log.getvalue())
