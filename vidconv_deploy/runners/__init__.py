"""Runners: one interface for every way of executing a model, and the streaming split built on it.

Every comparison in vidconv-deploy (rewrite vs PyTorch, fake-quant vs integer reference, Brevitas
vs FINN, host vs board) runs runners on the same feeds. The engines whose packages are optional
or board-only (finn-plus, VART) are imported when their runner loads, so importing this package
needs neither.
"""

from __future__ import annotations

from vidconv_deploy.runners.base import Runner, Tensors
from vidconv_deploy.runners.finn import FinnRunner, QonnxRunner
from vidconv_deploy.runners.onnxruntime import OnnxRuntimeRunner
from vidconv_deploy.runners.reference import IntegerReferenceRunner
from vidconv_deploy.runners.streaming import GRAPHS, StreamingSplit, StreamResult, collage
from vidconv_deploy.runners.torch import TorchRunner
from vidconv_deploy.runners.vart import VartRunner

__all__ = [
    "GRAPHS", "FinnRunner", "IntegerReferenceRunner", "OnnxRuntimeRunner", "QonnxRunner", "Runner", "StreamResult",
    "StreamingSplit", "Tensors", "TorchRunner", "VartRunner", "collage",
]
