"""A tiny training run in the world torchrun describes (one process without torchrun), for tests/test_distributed.py.

``python tests/ddp_fit.py DATASET OUT BATCH``: trains a tiny vic-nano for two epochs on the CPU and, on
rank 0, saves its weights, history and each process's clip counts to OUT. It has nothing that draws
per process: no neck (BatchNorm's batch statistics are per process), no dropout, no drop path
(their masks are drawn per process), so a run of several processes follows a run of one to rounding.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from vidconv_deploy import build_model
from vidconv_deploy.data.dataset import train_clips
from vidconv_deploy.data.loader import clip_batches
from vidconv_deploy.train.loop import TrainConfig, fit
from vidconv_deploy.train.runtime import all_gather, process_group, start_runtime

TINY = {"dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "neck_dim": 16, "image_size": 32, "num_classes": 10}


def main(dataset: str, out: str, batch: int) -> None:
    torch.manual_seed(0)
    model = build_model("vic-nano", neck=False, dropout=0.0, drop_path_rate=0.0, **TINY)
    runtime = start_runtime("cpu")
    world = runtime.world
    with process_group(runtime):
        data = train_clips(dataset, 9, 32, seed=0, progress=False)
        loader = clip_batches(data, runtime.batch_per_process(batch), world.rank, world.size)
        seen: list[int] = []

        def loss(forward, clips, labels):  # type: ignore[no-untyped-def]
            seen.append(len(labels))
            return F.cross_entropy(forward(clips), labels)

        config = TrainConfig(epochs=2, steps_per_epoch=math.ceil(len(data) / batch), lr=3e-3, warmup_epochs=0.2)
        state = fit(model, config, loader, loss, state_path=Path(out).with_suffix(".state.pt"), runtime=runtime)
        counts = all_gather(seen)
        if world.main:
            torch.save({"weights": model.state_dict(), "history": state.history, "clips": counts}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
