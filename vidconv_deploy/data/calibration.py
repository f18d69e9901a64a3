"""Calibration clips for INT8: from the user's videos, or a small synthetic set made on the spot.

Quantization needs real frames (activation ranges of noise are not those of video). With
``--calib DIR`` they come from DIR: a dataset folder (its ``val`` list, else ``train``) or a folder
of videos. Without it, the embedded default generates a few synthetic-motion videos with a seed
of their own (not the training set's) and decodes them like any other video.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from vidconv_deploy.data.dataset import EvalClips, SkipReport
from vidconv_deploy.data.sampling import get_protocol
from vidconv_deploy.data.sources import VideoSource, open_split, scan_folder
from vidconv_deploy.data.synthetic import SyntheticSpec, generate
from vidconv_deploy.errors import UserError

#: Seed of the synthetic calibration videos; the demo model was trained on seed 0.
CALIBRATION_SEED = 1000


def _source(directory: Path) -> VideoSource:
    for split in ("val", "train", "test"):
        if (directory / f"{split}.txt").is_file():
            return open_split(directory, split)
    return scan_folder(directory)


def calibration_clips(directory: Path | None, frames: int, image_size: tuple[int, int], count: int = 16
                      ) -> tuple[list[np.ndarray], str, SkipReport]:
    """Up to ``count`` clips ``(L, 3, H, W)`` (the first test view of each video), where they came from, and skips."""
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="vidconv-calib-") as tmp:
            generate(tmp, SyntheticSpec(seed=CALIBRATION_SEED, train=0, val=count, test=0))
            clips, _, skips = calibration_clips(Path(tmp), frames, image_size, count)
        return clips, f"{len(clips)} synthetic-motion videos (vidconv-make-data, seed {CALIBRATION_SEED})", skips
    source = _source(directory)
    protocol = get_protocol(source.protocol or "kinetics", frames)
    dataset = EvalClips(source.items[: count * 2], protocol, image_size, progress=False)
    clips = [views[0].numpy() for views, _ in dataset][:count]
    if not clips:
        raise UserError(f"no usable videos in {directory} ({dataset.skips.counts() or 'none found'}): "
                        f"give --calib a folder with at least one readable video of >= {frames} frames")
    return clips, f"{len(clips)} clips from {directory}", dataset.skips
