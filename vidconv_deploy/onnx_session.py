"""ONNX Runtime sessions that compute what a graph says: every comparison in the toolchain runs through them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort


def ort_session(model: onnx.ModelProto | bytes, *, threads: int = 0, arena: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with graph optimisations off, so it computes what the graph says
    (with them on, ORT would fuse QDQ pairs into integer kernels with their own rounding), and without
    spinning threads; ``threads`` intra-op threads (0: ORT's default, every core), ``arena`` False to hand
    each run's buffers back (for sessions whose outputs are every tensor of a large graph)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # No busy-waiting after a run: streaming alternates two sessions (early, later) per frame, and one
    # session's spinning pool starved the other's run (vic-nano-dpu: 8.0 -> 3.7 ms per new frame on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = arena
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a graph once with :func:`ort_session`."""
    return ort_session(model).run(None, feeds)
