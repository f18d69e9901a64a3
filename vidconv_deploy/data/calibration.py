"""Calibration clips for INT8: from the user's videos, or a small synthetic set made on the spot.

Quantization needs real frames (activation ranges of noise are not those of video). With
``--calib DIR`` they come from DIR: a dataset folder (its ``val`` list, else ``train``) or a folder
of videos. Without it, the embedded default generates a few synthetic-motion videos with a seed
of their own (not the training set's) and decodes them like any other video: of the generator
version and frame size the model was trained on, as its model card's data section says (easy,
version 2, at the default size when it says nothing), so that a model of the hard set is
calibrated on hard videos.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vidconv_deploy.data.dataset import EvalClips, SkipReport
from vidconv_deploy.data.sampling import get_protocol
from vidconv_deploy.data.sources import VideoSource, open_split, scan_folder
from vidconv_deploy.data.synthetic import DIFFICULTIES, SyntheticSpec, generate
from vidconv_deploy.errors import UserError

#: Seed of the synthetic calibration videos; the demo model was trained on seed 0.
CALIBRATION_SEED = 1000


def _source(directory: Path) -> VideoSource:
    for split in ("val", "train", "test"):
        if (directory / f"{split}.txt").is_file():
            return open_split(directory, split)
    return scan_folder(directory)


def synthetic_calibration_spec(data: Mapping[str, Any], count: int) -> SyntheticSpec:
    """The spec of ``count`` calibration videos like a model's training data: ``data`` is its model card's data
    section, whose ``generator_version`` and ``made_with`` (the vidconv-make-data command) say which difficulty
    and frame size; the seed is :data:`CALIBRATION_SEED`, not the training set's."""
    made = argparse.ArgumentParser(add_help=False)
    made.add_argument("--difficulty", default=SyntheticSpec.difficulty)
    made.add_argument("--size", type=int, default=SyntheticSpec.size)
    command = shlex.split(str(data.get("made_with", "")))
    flags, _ = made.parse_known_args(command[1:] if command[:1] == ["vidconv-make-data"] else [])
    version = data.get("generator_version")
    by_version = {d.version: name for name, d in DIFFICULTIES.items()}
    difficulty = flags.difficulty if version is None else by_version.get(int(version))
    if difficulty not in DIFFICULTIES:
        raise UserError(f"the model was trained on synthetic videos of generator version {version} "
                        f"({data.get('made_with', 'no command given')}), which this vidconv-make-data no longer makes "
                        f"(it makes {', '.join(f'{n}: version {d.version}' for n, d in DIFFICULTIES.items())}): give "
                        f"--calib a folder of videos like its training data")
    return SyntheticSpec(seed=CALIBRATION_SEED, train=0, val=count, test=0, size=flags.size, difficulty=difficulty)


def calibration_clips(directory: Path | None, frames: int, image_size: tuple[int, int], count: int = 16,
                      data: Mapping[str, Any] | None = None) -> tuple[list[np.ndarray], str, SkipReport]:
    """Up to ``count`` clips ``(L, 3, H, W)`` (the first test view of each video), where they came from, and skips.

    Without ``directory``: synthetic videos like those of ``data`` (the model card's data section, see
    :func:`synthetic_calibration_spec`; None or empty: the easy set at the default size).
    """
    if directory is None:
        spec = synthetic_calibration_spec(data or {}, count)
        with tempfile.TemporaryDirectory(prefix="vidconv-calib-") as tmp:
            generate(tmp, spec)
            clips, _, skips = calibration_clips(Path(tmp), frames, image_size, count)
        version = DIFFICULTIES[spec.difficulty].version
        return clips, (f"{len(clips)} synthetic-motion videos (vidconv-make-data --difficulty {spec.difficulty} "
                       f"--size {spec.size} --seed {CALIBRATION_SEED}, generator version {version})"), skips
    source = _source(directory)
    protocol = get_protocol(source.protocol or "kinetics", frames)
    dataset = EvalClips(source.items[: count * 2], protocol, image_size, progress=False)
    clips = [views[0].numpy() for views, _ in dataset][:count]
    if not clips:
        raise UserError(f"no usable videos in {directory} ({dataset.skips.counts() or 'none found'}): "
                        f"give --calib a folder with at least one readable video of >= {frames} frames")
    return clips, f"{len(clips)} clips from {directory}", dataset.skips
