"""The bit-accurate integer reference on a QDQ graph, with ONNX Runtime's or the DPU's rounding.

It computes what :func:`vidconv_deploy.reference.run_reference` computes, but keeps one executor
per graph: ``run_reference`` builds a new one per call, which re-converts every weight, and a
streaming split calls the early graph once per frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from vidconv_deploy.errors import UserError
from vidconv_deploy.reference import ReferenceRun
from vidconv_deploy.reference.executor import ROUNDINGS, Executor
from vidconv_deploy.runners.base import Runner, Tensors


class IntegerReferenceRunner(Runner):
    """A QDQ graph (ModelProto or file) executed on integers; outputs as the graph's floats.

    ``rounding``: "onnxruntime" (half to even, as ONNX QuantizeLinear) or "dpu" (half up, as
    vai_q's DPU rounding). :meth:`trace` gives the whole integer run (every int8 tensor with its
    fix point), which golden vectors and divergence reports need beyond the outputs.
    """

    def __init__(self, model: onnx.ModelProto | Path | str, rounding: str = "onnxruntime", name: str | None = None) -> None:
        if rounding not in ROUNDINGS:
            raise UserError(f"unknown rounding {rounding!r}; use one of {sorted(ROUNDINGS)}")
        super().__init__(name or f"integer reference ({rounding} rounding)")
        self.model, self.rounding = model, rounding
        self.executor: Executor | None = None

    def _load(self) -> None:
        model = self.model if isinstance(self.model, onnx.ModelProto) else onnx.load(str(self.model))
        self.executor = Executor(model)
        self._input_names, self._output_names = list(self.executor.inputs), list(self.executor.outputs)

    def trace(self, feeds: Mapping[str, np.ndarray]) -> ReferenceRun:
        """The integer run on ``feeds``: every QuantizeLinear result (int8, fix point) and the outputs."""
        self.check_feeds(feeds)
        assert self.executor is not None
        return self.executor.run(feeds, self.rounding)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> Tensors:
        return dict(self.trace(feeds).outputs)
