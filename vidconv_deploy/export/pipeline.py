"""What the exported graphs may contain, and the streaming split run as a host runs it.

The steps that export (``vidconv_deploy.targets.onnx_steps``) hold these graphs to it: the whole-clip
deploy graph has no shape computation and no Tile; the streaming graphs also lose the collage's
rearrangement, which the host does.
"""

from __future__ import annotations

import numpy as np
import torch

from vidconv_deploy.export.onnx_export import SHAPE_OPS, ExportedGraph, run_onnx
from vidconv_deploy.models.collage import frames_to_collage

#: Ops the whole-clip deploy graph must not contain; the streaming graphs also lose the rearrangement.
DEPLOY_FORBIDDEN = SHAPE_OPS | {"Tile"}
STREAMING_FORBIDDEN = DEPLOY_FORBIDDEN | {"Transpose", "Reshape"}


def streaming_logits(early: ExportedGraph, later: ExportedGraph, clip: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Run the streaming split as a host would: early graph per frame, collage on the host, later graph."""
    features = [run_onnx(early.model, {early.input_name: clip[:, t]})[0] for t in range(clip.shape[1])]
    collage = frames_to_collage(torch.from_numpy(np.concatenate(features)), grid).numpy()
    return run_onnx(later.model, {later.input_name: collage})[0]
