"""ONNX Runtime on a float or fake-quant (QDQ) graph, with graph optimisations off.

The session is :func:`vidconv_deploy.onnx_session.ort_session`: with ORT's optimisations on,
QDQ pairs would fuse into integer kernels with their own rounding, and the fake-quant run would no
longer be the graph the integer reference is checked against.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from vidconv_deploy.errors import UserError
from vidconv_deploy.onnx_session import ort_session
from vidconv_deploy.runners.base import Runner, Tensors


class OnnxRuntimeRunner(Runner):
    """An ONNX graph (ModelProto, serialized bytes or a file) on ONNX Runtime's CPU provider."""

    def __init__(self, model: onnx.ModelProto | bytes | Path | str, name: str | None = None, *, threads: int = 0) -> None:
        """``threads``: ONNX Runtime's intra-op threads (0: its default, every core; 1 for a runner that a core
        pool runs on several feeds at once)."""
        super().__init__(name or (f"onnxruntime:{Path(model).name}" if isinstance(model, (str, Path)) else "onnxruntime"))
        self.model = model
        self.threads = threads
        self.session: ort.InferenceSession | None = None

    def _load(self) -> None:
        model = self.model
        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.is_file():
                raise UserError(f"{path} not found: give an ONNX graph file")
            model = path.read_bytes()
        self.session = ort_session(model, threads=self.threads)
        self._input_names = [i.name for i in self.session.get_inputs()]
        self._output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, feeds: Mapping[str, np.ndarray]) -> Tensors:
        assert self.session is not None
        return dict(zip(self._output_names, self.session.run(None, dict(feeds)), strict=True))
