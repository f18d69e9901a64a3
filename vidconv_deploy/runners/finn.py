"""QONNX and FINN graph execution (``execute_onnx`` on a ``ModelWrapper``), node by node in Python.

:class:`QonnxRunner` runs QONNX graphs (Brevitas's export, ``Quant`` nodes) with qonnx alone.
:class:`FinnRunner` runs FINN-ONNX graphs (streamlined, HW layers; ``MultiThreshold`` and the
other FINN custom ops) with finn-plus's ``execute_onnx``, which also honours a graph's
``exec_mode`` (rtlsim). finn-plus is optional (``scripts/finn-install.sh``), so it is imported
only when a FinnRunner loads. FINN graphs take and give integers as float tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from vidconv_deploy.errors import UserError
from vidconv_deploy.runners.base import Runner, Tensors

if TYPE_CHECKING:  # qonnx is imported when a runner loads: importing the runners (every command does) needs none of it
    from qonnx.core.modelwrapper import ModelWrapper

#: ``execute_onnx(model, feeds) -> outputs``, qonnx's or finn's.
Execute = Callable[["ModelWrapper", dict[str, np.ndarray]], dict[str, np.ndarray]]


class QonnxRunner(Runner):
    """A QONNX graph (ModelWrapper, ModelProto or file) executed by qonnx."""

    def __init__(self, model: ModelWrapper | onnx.ModelProto | Path | str, name: str | None = None) -> None:
        super().__init__(name or type(self).__name__.removesuffix("Runner").lower())
        self.model = model
        self.wrapper: ModelWrapper | None = None
        self.execute: Execute | None = None

    def _engine(self) -> Execute:
        from qonnx.core.onnx_exec import execute_onnx

        return execute_onnx

    def _load(self) -> None:
        from qonnx.core.modelwrapper import ModelWrapper

        self.execute = self._engine()
        model = self.model
        self.wrapper = model if isinstance(model, ModelWrapper) else ModelWrapper(
            model if isinstance(model, onnx.ModelProto) else str(model))
        initializers = {t.name for t in self.wrapper.graph.initializer}
        self._input_names = [i.name for i in self.wrapper.graph.input if i.name not in initializers]
        self._output_names = [o.name for o in self.wrapper.graph.output]

    def _run(self, feeds: Mapping[str, np.ndarray]) -> Tensors:
        assert self.execute is not None and self.wrapper is not None
        outputs: dict[str, Any] = self.execute(self.wrapper, dict(feeds))
        return {n: np.asarray(outputs[n]) for n in self._output_names}


class FinnRunner(QonnxRunner):
    """A FINN-ONNX graph executed by finn-plus (Python mode, or rtlsim where the graph says so)."""

    def _engine(self) -> Execute:
        try:
            from finn.core.onnx_exec import execute_onnx
        except ImportError as err:
            raise UserError(f"{self.name}: running FINN graphs needs finn-plus ({err}); install it with "
                            f"scripts/finn-install.sh") from None
        return execute_onnx
