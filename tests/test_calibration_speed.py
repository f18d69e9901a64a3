"""The fast calibration computes what the one-feed-at-a-time calibration computed, position for position.

``data/vic_nano_dpu_fix_positions.json`` was written by the calibration as it stood before it ran feeds
node by node on a core pool and pruned the diffs search (commit 20f16ed): vic-nano-dpu with seeded
weights, its dpu-kv260 streaming graphs, three synthetic calibration clips (27 frames, 3 collages).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vidconv_deploy import build_model, parallel
from vidconv_deploy.data.calibration import calibration_clips
from vidconv_deploy.dpu.board_dir import io_fix_points
from vidconv_deploy.export.deploy_model import to_deploy
from vidconv_deploy.fixpoint import arithmetic as fixpoint
from vidconv_deploy.export.onnx_export import STREAMING_FORBIDDEN, MethodModule, export_graph
from vidconv_deploy.export.passes import apply_passes
from vidconv_deploy.quant import quantize_onnx
from vidconv_deploy.quant import calibrate as calibration
from vidconv_deploy.quant.graph import analyse
from vidconv_deploy.runners import OnnxRuntimeRunner, StreamingSplit
from vidconv_deploy.targets.registry import get_target

SNAPSHOT = Path(__file__).parent / "data" / "vic_nano_dpu_fix_positions.json"


@pytest.fixture(scope="module")
def streaming():
    torch.manual_seed(0)
    model = build_model("vic-nano-dpu", num_classes=10).eval()
    deploy = apply_passes(to_deploy(model), get_target("dpu-kv260").passes())
    gen = torch.Generator().manual_seed(1)
    early = export_graph(MethodModule(deploy, deploy.early), torch.randn(deploy.frame_shape(), generator=gen),
                         "frame", "features", STREAMING_FORBIDDEN).model
    later = export_graph(MethodModule(deploy, deploy.later), torch.randn(deploy.collage_shape(), generator=gen),
                         "collage", "logits", STREAMING_FORBIDDEN).model
    clips, _, _ = calibration_clips(None, model.cfg.frames, model.cfg.image_size, 3)
    frames, collages = StreamingSplit(model.cfg.grid, OnnxRuntimeRunner(early), OnnxRuntimeRunner(later)).feeds(clips)
    return early, later, frames, collages


@pytest.mark.parametrize("search", ["compiled", "torch"])
def test_fix_positions_equal_the_one_feed_at_a_time_calibration(streaming, monkeypatch, search):
    # the compiled kernel (fixpoint/native.py) and the torch code must both give the snapshot
    if search == "torch":
        monkeypatch.setattr(fixpoint, "kernel", lambda: None)
    else:
        assert fixpoint.kernel() is not None
    early, later, frames, collages = streaming
    early_q = quantize_onnx(early, frames)
    _, collage_fp = io_fix_points(early_q.model)
    later_q = quantize_onnx(later, collages, fixed_fix_points={later.graph.input[0].name: collage_fp})
    got = {g: {"output": q.info["output"], "param": q.info["param"], "history": q.info["onnx"]["calibration"]["history"]}
           for g, q in (("early", early_q), ("later", later_q))}
    assert json.loads(json.dumps(got)) == json.loads(SNAPSHOT.read_text())


@pytest.mark.parametrize("chunk, workers", [(1, 1), (3, 2), (64, 2)])
def test_chunking_and_workers_do_not_change_the_calibration(streaming, monkeypatch, chunk, workers):
    # Node-by-node over a chunk is the same computation as feed after feed, whatever the chunk and pool size.
    early, _, frames, _ = streaming
    plan = analyse(early)
    reference = calibration.calibrate(plan, frames[:7])
    monkeypatch.setattr(calibration, "CHUNK_FEEDS", chunk)
    monkeypatch.setattr(parallel, "usable_cores", lambda: workers)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_ELEMENTS", 0)  # vic-nano's tensors are small: pool them anyway
    again = calibration.calibrate(plan, frames[:7])
    assert (again.activations, again.params, again.history, again.batches) == (
        reference.activations, reference.params, reference.history, reference.batches)
    assert again.batches == 7
