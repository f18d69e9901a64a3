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
#: VINT8 = the same scales for VAIML (the Versal AI Edge Gen 2 NPU), NPU CNN off;
#: BF16 = every tensor in bfloat16 (BF16_QCONFIG).
CONFIGS = ("XINT8", "VINT8", "BF16")
#: Quark writes BF16 as its own com.amd.quark ExtendedQuantizeLinear/DequantizeLinear, which ONNX Runtime
#: runs only with Quark's op library; BF16QDQToCast turns each pair into standard Casts to bfloat16 and back
#: (postprocess/postproc.py apply_post_optimization_after_algo, tools/replace_bfloat16_qdq_cast.py), which
#: any ONNX Runtime runs and the Vitis AI EP's table lists (Cast: FP32/BF16 and INT8).
BF16_AS_CAST = {"BF16QDQToCast": True}


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


def quark_config(name: str, exclude: Sequence[str] = (), extra: Mapping[str, Any] | None = None,
                 bf16_nodes: Sequence[str] = ()) -> Any:
    """Quark's QConfig ``name`` (XINT8, VINT8 or BF16) with ``exclude`` nodes left in float, ``bf16_nodes`` in
    bfloat16 (their inputs and weights: a mixed INT8/BF16 graph) and ``extra`` options.

    The mixed form is the one AMD's own mixed-precision driver builds for the Gen 2 NPU: the INT8 config
    global, ``specific_layer_config`` mapping a BF16 QLayerConfig (input tensors and weight) to node names
    (Xilinx/ross-ai-assistant skills/vai-quantization-guide/scripts/mixed_precision_quantize.py
    build_qconfig_from_json, --fp-nodes); Quark maps it to per-tensor overrides
    (quark/onnx/quantization/config/maps.py _map_specific_layer_config).
    """
    if name not in CONFIGS:
        raise ValueError(f"Quark config {name!r}: use one of {', '.join(CONFIGS)}")
    qonnx = import_quark()
    base = getattr(qonnx, f"{name}_QCONFIG")
    # Quark's own configs pass extra_options=... as a keyword, which QConfig keeps nested under that key.
    # VINT8 calibrates on random data by default (UseRandomData): ours is calibrated on the real feeds.
    bf16 = name == "BF16" or bool(bf16_nodes)
    options = {**base.extra_options["extra_options"], "PrintSummary": False, "UseRandomData": False,
               **(BF16_AS_CAST if bf16 else {}), **(extra or {})}
    # Fresh layer configs each time: Quark rewrites the one it is given (activation -> input_tensors)
    # and then refuses it. XINT8 and VINT8 quantize every tensor with XInt8Spec (custom_config.py).
    spec = qonnx.BFloat16Spec if name == "BF16" else qonnx.XInt8Spec
    layer = qonnx.QLayerConfig(input_tensors=spec(), weight=spec())
    # The bias too (AMD's driver leaves it to the global config): an int8 bias scaled for a bf16 input is no
    # form a BF16 node computes in.
    bf16_layer = qonnx.QLayerConfig(input_tensors=qonnx.BFloat16Spec(), weight=qonnx.BFloat16Spec(), bias=qonnx.BFloat16Spec())
    specific = {bf16_layer: list(bf16_nodes)} if bf16_nodes else None
    return qonnx.QConfig(global_config=layer, specific_layer_config=specific, exclude=list(exclude), extra_options=options)


def named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every node with a name: Quark leaves the Casts of its BF16 pairs unnamed; each takes the name of the
    Quantize/DequantizeLinear it replaced (its output's name without ``_Output``), so findings can name it."""
    for node in model.graph.node:
        if not node.name:
            node.name = node.output[0].removesuffix("_Output")
    return model


def quantize_with_quark(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]], config: str = "XINT8",
                        exclude: Sequence[str] = (), extra: Mapping[str, Any] | None = None,
                        bf16_nodes: Sequence[str] = ()) -> QuarkResult:
    """``model`` quantized by Quark's ``config`` on ``feeds`` (one dict per calibration sample), ``bf16_nodes`` in
    bfloat16 (see :func:`quark_config`)."""
    qonnx = import_quark()
    qconfig = quark_config(config, exclude, extra, bf16_nodes)
    options = {"config": config, "exclude": list(exclude), "bf16_nodes": list(bf16_nodes),
               "extra_options": dict(qconfig.extra_options["extra_options"])}
    with tempfile.TemporaryDirectory(prefix="vidconv-quark-") as tmp, quark_session() as log:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "quant.onnx"
        onnx.save(model, str(src))
        qonnx.ModelQuantizer(qconfig).quantize_model(str(src), str(dst), _Feeds(feeds))
        quantized = named(topologically_sorted(onnx.load(str(dst))))
    return QuarkResult(quantized, options, log.getvalue())
