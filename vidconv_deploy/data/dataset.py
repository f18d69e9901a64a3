"""Clips for training and testing, as torch iterable datasets that skip bad videos instead of crashing.

``TrainClips`` yields ``(clip (L, 3, H, W), label)``: one random clip per video, videos in a
random order per epoch. ``EvalClips`` yields ``(clips (num_clips, L, 3, H, W), label)``: every test
clip of a video, in list order. Both are iterable rather than map-style because a video can
turn out to be bad only while decoding (a truncated file whose header is intact), and an
iterable dataset can then move on to the next video; a map-style one would have to return
something for that index.

Bad videos (missing, empty, unreadable, no video stream, too short, truncated) are skipped with
one warning line each (logger ``vidconv_deploy.data``) and counted in a :class:`SkipReport`
that callers put into their own reports. The header-level checks run when the dataset is built;
truncation shows up during the first pass, and a skipped file is never tried again.

Randomness: epoch ``e``'s order comes from ``default_rng([seed, e])`` and video ``i``'s clip from
``default_rng([seed, e, i])``, so a clip depends only on (seed, epoch, video), not on the order
of loading or the number of workers. ``num_workers=0`` (our default) is fully supported. With
``num_workers > 0`` each worker takes every n-th video of the epoch's order and the clips are
the same, but a worker's skip report stays in the worker process: the main process's report
then lists only the header-level skips found when the dataset was built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from torch.utils.data import IterableDataset, get_worker_info

from vidconv_deploy.data.sampling import Protocol, eval_indices, get_protocol, train_indices
from vidconv_deploy.data.sources import VideoItem, VideoSource, open_split
from vidconv_deploy.data.video import BadVideo, VideoInfo, load_clips, probe
from vidconv_deploy.errors import UserError

log = logging.getLogger("vidconv_deploy.data")


class SkipReport:
    """Videos that were skipped, by reason; each file is recorded (and warned about) once."""

    def __init__(self) -> None:
        self.files: dict[str, list[str]] = {}
        self._seen: set[str] = set()

    def add(self, path: str | os.PathLike[str], reason: str, detail: str) -> None:
        """Record a skipped video and log one warning line naming it and why."""
        name = os.fspath(path)
        if name in self._seen:
            return
        self._seen.add(name)
        self.files.setdefault(reason, []).append(name)
        log.warning("skipped video %s: %s (%s)", name, reason, detail)

    def __contains__(self, path: object) -> bool:
        return os.fspath(path) in self._seen  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._seen)

    def counts(self) -> dict[str, int]:
        """reason -> number of skipped videos."""
        return {reason: len(names) for reason, names in sorted(self.files.items())}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: total, counts per reason, and the files per reason."""
        return {"skipped": len(self), "counts": self.counts(), "files": {r: list(n) for r, n in sorted(self.files.items())}}


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class _VideoClips(IterableDataset):
    """Shared by train and test: the probed videos, the protocol, the output size and the skip report."""

    def __init__(
        self,
        items: Sequence[VideoItem],
        protocol: Protocol,
        image_size: int | Sequence[int],
        short_side: int | None = None,
        skips: SkipReport | None = None,
        progress: bool = True,
    ) -> None:
        self.protocol = protocol
        self.image_size = _pair(image_size)
        self.short_side = short_side
        self.skips = SkipReport() if skips is None else skips
        self.videos: list[tuple[VideoItem, VideoInfo]] = []
        checking = track(items, description="checking videos", transient=True, disable=not progress,
                         console=Console(stderr=True))
        for item in checking:
            try:
                info = probe(item.path)
            except BadVideo as bad:
                self.skips.add(item.path, bad.reason, bad.detail)
                continue
            if info.num_frames < protocol.frames:
                self.skips.add(item.path, "too-short", f"{info.num_frames} frames, a clip needs {protocol.frames}")
                continue
            self.videos.append((item, info))

    def __len__(self) -> int:
        """Videos that passed the checks at build time (an epoch is shorter by any found truncated later)."""
        return len(self.videos)

    def _shard(self, order: np.ndarray) -> np.ndarray:
        worker = get_worker_info()
        return order if worker is None else order[worker.id::worker.num_workers]

    def _load(self, index: int, indices: np.ndarray) -> torch.Tensor | None:
        item, _ = self.videos[index]
        try:
            return load_clips(item.path, indices, self.image_size, self.short_side)
        except BadVideo as bad:
            self.skips.add(item.path, bad.reason, bad.detail)
            return None


class TrainClips(_VideoClips):
    """One random clip per video per epoch, videos shuffled per epoch; call :meth:`set_epoch` each epoch."""

    def __init__(self, items: Sequence[VideoItem], protocol: Protocol, image_size: int | Sequence[int],
                 seed: int = 0, **kwargs: Any) -> None:
        super().__init__(items, protocol, image_size, **kwargs)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and clips the next iteration yields."""
        self.epoch = epoch

    def clip(self, epoch: int, index: int) -> tuple[torch.Tensor, int]:
        """Video ``index``'s clip in ``epoch`` and its label; raises :class:`BadVideo` (unrecorded) for a bad file.

        What iteration yields for that video, whatever the order: ``vidconv_deploy.data.loader`` serves
        the clips by index to the processes and workers of a run, and records the bad files itself.
        """
        item, info = self.videos[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        indices = train_indices(self.protocol, info.num_frames, rng)
        return load_clips(item.path, indices, self.image_size, self.short_side), item.label

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.videos))
        for index in self._shard(order):
            item, _ = self.videos[index]
            if item.path in self.skips:
                continue
            try:
                clip = self.clip(self.epoch, int(index))
            except BadVideo as bad:
                self.skips.add(item.path, bad.reason, bad.detail)
                continue
            yield clip


class EvalClips(_VideoClips):
    """All test clips of each video, in list order: ``(num_clips, L, 3, H, W)`` per video."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        for index in self._shard(np.arange(len(self.videos))):
            item, info = self.videos[index]
            if item.path in self.skips:
                continue
            clips = self._load(int(index), eval_indices(self.protocol, info.num_frames))
            if clips is not None:
                yield clips, item.label


def protocol_for(source: VideoSource, frames: int, protocol: str | Protocol | None) -> Protocol:
    """How to sample ``frames``-frame clips of ``source``: the given protocol, else the one its dataset.json names."""
    if isinstance(protocol, Protocol):
        return protocol.with_frames(frames)
    name = protocol or source.protocol
    if name is None:
        raise UserError("the dataset does not say how to sample clips (no 'protocol' in dataset.json): "
                        "pass protocol='ssv2' or 'kinetics'")
    return get_protocol(name, frames)


def train_clips(
    dataset_dir: str | os.PathLike[str],
    frames: int,
    image_size: int | Sequence[int],
    seed: int = 0,
    split: str = "train",
    protocol: str | Protocol | None = None,
    **kwargs: Any,
) -> TrainClips:
    """Training clips of a dataset folder; the protocol defaults to the one its ``dataset.json`` names."""
    source = open_split(dataset_dir, split)
    return TrainClips(source.items, protocol_for(source, frames, protocol), image_size, seed=seed, **kwargs)


def eval_clips(
    dataset_dir: str | os.PathLike[str],
    frames: int,
    image_size: int | Sequence[int],
    split: str = "test",
    protocol: str | Protocol | None = None,
    **kwargs: Any,
) -> EvalClips:
    """Test clips (all views of each video) of a dataset folder's ``split`` (``val`` or ``test``)."""
    source = open_split(dataset_dir, split)
    return EvalClips(source.items, protocol_for(source, frames, protocol), image_size, **kwargs)

