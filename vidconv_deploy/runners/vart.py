"""A compiled xmodel on a DPU through VART, as ``hw/board/run_xmodel.py`` runs it (on a board only).

VART takes and gives int8 NHWC tensors whose values are ``int * 2**-fix_point``. This runner speaks
the same float NCHW feeds as every other runner, so a board run compares with ONNX Runtime or the
integer reference on the same feeds: it quantizes each input at the DPU tensor's fix point with
the DPU's rounding (half up, saturating), and dequantizes each output. Only xmodels that are one
DPU subgraph run here; a graph with CPU subgraphs needs ``vitis_ai_library.GraphRunner``, which
the board script drives. ``xir`` and ``vart`` exist only in Vitis AI's board images and docker
image, so they are imported when the runner loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vidconv_deploy.errors import UserError
from vidconv_deploy.runners.base import Runner, Tensors


def quantize(x: np.ndarray, fix_point: int) -> np.ndarray:
    """float -> int8 at ``fix_point``, round half up and saturate (the DPU's rounding, as the board script)."""
    return np.clip(np.floor(np.asarray(x, dtype=np.float64) * 2.0**fix_point + 0.5), -128, 127).astype(np.int8)


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


class VartRunner(Runner):
    """One xmodel's DPU subgraph on ``vart.Runner`` (``mode``: run | ref | sim, as ``xdputil run -r``)."""

    def __init__(self, xmodel: Path | str, mode: str = "run", name: str | None = None) -> None:
        super().__init__(name or f"vart:{Path(xmodel).name}")
        self.xmodel, self.mode = Path(xmodel), mode
        self.graph: Any = None  # the xir.Graph must outlive its runner
        self.runner: Any = None

    def _load(self) -> None:
        try:
            import vart
            import xir
        except ImportError as err:
            raise UserError(f"{self.name}: the VART runner needs Vitis AI's `vart` and `xir` Python modules ({err}); "
                            f"run it on the board or in the Vitis AI image, or use the integer reference here") from None
        if not self.xmodel.is_file():
            raise UserError(f"{self.xmodel} not found: compile it with compile/docker_run.sh in the bundle")
        self.graph = xir.Graph.deserialize(str(self.xmodel))
        children = self.graph.get_root_subgraph().toposort_child_subgraph()
        devices = [c.get_attr("device").upper() if c.has_attr("device") else "" for c in children]
        dpu = [c for c, d in zip(children, devices, strict=True) if d == "DPU"]
        if len(dpu) != 1 or "CPU" in devices:
            raise UserError(f"{self.xmodel} has subgraphs on {devices}, not one DPU subgraph: run it with "
                            f"hw/board/run_xmodel.py, which drives vitis_ai_library.GraphRunner")
        self.runner = vart.Runner.create_runner(dpu[0], self.mode)
        self._input_names = [t.name for t in self.runner.get_input_tensors()]
        self._output_names = [t.name for t in self.runner.get_output_tensors()]

    def _run(self, feeds: Mapping[str, np.ndarray]) -> Tensors:
        inputs = [quantize(_nhwc(np.asarray(feeds[t.name])), t.get_attr("fix_point")).reshape(tuple(t.dims))
                  for t in self.runner.get_input_tensors()]
        tensors = self.runner.get_output_tensors()
        outputs = [np.empty(tuple(t.dims), dtype=np.int8, order="C") for t in tensors]
        self.runner.wait(self.runner.execute_async(inputs, outputs))
        return {t.name: _nchw(out.astype(np.float32) * np.float32(2.0 ** -t.get_attr("fix_point")))
                for t, out in zip(tensors, outputs, strict=True)}
