"""Which frames of a video make a clip: the paper's sampling protocols as data and pure functions.

A clip is ``frames`` indices ``start, start + stride, ...``; it spans ``(frames - 1) * stride + 1``
frames of the video. Paper section 4.2:

- Kinetics: train on one clip with a random stride in [8, 12]; test on 4 clips with stride 12.
- SSv2: train on one clip with a random stride in [5, 7]; test on 2 clips with stride 6; a video
  too short for the stride uses ``s_T = min(5, (N - 1) / 8)``.

Our readings where the paper leaves a choice:

- ``(N - 1) / 8`` is the largest stride whose clip still fits N frames, so it is floored:
  ``(N - 1) // (frames - 1)``; 8 is ``frames - 1`` for the paper's 9 frames. The cap (5 for SSv2)
  applies only when the protocol's stride does not fit. Below stride 1 the video is too short.
- The paper leaves Kinetics' short videos open; we apply the same rule with the cap at the
  smallest training stride (8).
- The paper "randomly" samples the test clips; ours are deterministic, spread evenly from the
  first valid start to the last as MMAction2's ``SampleFrames`` does in test mode
  (open-mmlab/mmaction2 ``mmaction/datasets/transforms/loading.py``, ``_get_eval_clips``:
  ``round(arange(k) * max_offset / (k - 1))``; one clip sits at ``max_offset // 2``).

Randomness comes only from the ``numpy.random.Generator`` a caller passes in, so a seed
reproduces every clip.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vidconv_deploy.errors import UserError


class TooShortError(ValueError):
    """The video has fewer frames than one clip needs even at stride 1."""


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How clips are sampled for training and testing; ``frames`` is the clip length L."""

    name: str
    frames: int
    train_strides: tuple[int, int]  # inclusive range of the random training stride
    eval_stride: int  # the paper's test-time stride
    eval_clips: int  # the paper's test-time clips per video
    short_stride_cap: int  # s_T = min(cap, (N - 1) // (frames - 1)) when the stride does not fit

    def __post_init__(self) -> None:
        lo, hi = self.train_strides
        if self.frames < 1 or not 1 <= lo <= hi or self.eval_stride < 1 or self.eval_clips < 1 or self.short_stride_cap < 1:
            raise UserError(f"invalid sampling protocol {self}: frames, strides, clips and cap must be positive, "
                            f"with train_strides as (low, high)")

    def with_frames(self, frames: int) -> Protocol:
        """The same protocol for another clip length (e.g. 4 frames for a 2x2 grid)."""
        return dataclasses.replace(self, frames=frames)


KINETICS = Protocol("kinetics", frames=9, train_strides=(8, 12), eval_stride=12, eval_clips=4, short_stride_cap=8)
SSV2 = Protocol("ssv2", frames=9, train_strides=(5, 7), eval_stride=6, eval_clips=2, short_stride_cap=5)
PROTOCOLS = {p.name: p for p in (KINETICS, SSV2)}


def get_protocol(name: str, frames: int = 9) -> Protocol:
    """A named protocol (``kinetics`` or ``ssv2``) for clips of ``frames`` frames."""
    try:
        return PROTOCOLS[name].with_frames(frames)
    except KeyError:
        raise UserError(f"unknown sampling protocol {name!r}: use one of {', '.join(PROTOCOLS)}") from None


def clip_span(frames: int, stride: int) -> int:
    """How many consecutive video frames one clip covers, first to last sampled frame."""
    return (frames - 1) * stride + 1


def fit_stride(protocol: Protocol, num_frames: int, stride: int) -> int:
    """``stride`` if its clip fits ``num_frames``, else the protocol's short-video stride.

    Raises :class:`TooShortError` when not even stride 1 fits (fewer frames than the clip length).
    """
    if num_frames < protocol.frames:
        raise TooShortError(f"{num_frames} frames, a clip needs at least {protocol.frames}")
    if clip_span(protocol.frames, stride) <= num_frames:
        return stride
    # frames == 1 always fits above, so the division is safe here.
    return min(protocol.short_stride_cap, (num_frames - 1) // (protocol.frames - 1))


def train_indices(protocol: Protocol, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """One training clip: a random stride in ``train_strides`` (fitted to the video), a random start.

    Draws the stride first, then the start, from ``rng``. Returns ``(frames,)`` int64 indices.
    """
    lo, hi = protocol.train_strides
    stride = fit_stride(protocol, num_frames, int(rng.integers(lo, hi + 1)))
    start = int(rng.integers(0, num_frames - clip_span(protocol.frames, stride) + 1))
    return start + stride * np.arange(protocol.frames, dtype=np.int64)


def eval_indices(protocol: Protocol, num_frames: int) -> np.ndarray:
    """The test (evaluation) clips: stride ``eval_stride`` (fitted), starts spread evenly over the valid range.

    Returns ``(eval_clips, frames)`` int64 indices; deterministic.
    """
    stride = fit_stride(protocol, num_frames, protocol.eval_stride)
    max_start = num_frames - clip_span(protocol.frames, stride)
    k = protocol.eval_clips
    if k == 1:
        starts = np.array([max_start // 2], dtype=np.int64)
    else:
        starts = np.round(np.arange(k) * (max_start / (k - 1))).astype(np.int64)
    return starts[:, None] + stride * np.arange(protocol.frames, dtype=np.int64)[None, :]
