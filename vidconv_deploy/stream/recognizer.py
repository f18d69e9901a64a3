"""The sliding window over a :class:`~vidconv_deploy.runners.StreamingSplit`: one early run per new frame."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from vidconv_deploy.errors import UserError
from vidconv_deploy.runners import StreamingSplit


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One window's result: the frames it covers, its logits, and the score over the last ``clips`` windows."""

    first_frame: int
    last_frame: int
    logits: np.ndarray
    score: np.ndarray

    def topk(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` best classes of the score, with their softmax probabilities."""
        exp = np.exp(self.score - self.score.max())
        probs = exp / exp.sum()
        order = np.argsort(-probs)[:k]
        return [(int(i), float(probs[i])) for i in order]


class StreamingRecognizer:
    """``push(frame)`` per decoded frame; a :class:`Prediction` every ``stride`` frames once L frames are buffered.

    The buffer holds the early net's outputs of the last L = rows x cols frames (the collage's frames,
    oldest first, tiled row-major), so a window costs one early run and one later run, not L early
    runs. ``clips``: the score averages the logits of the last ``clips`` windows (the paper's
    multi-clip score, as evaluation averages a video's clips).
    """

    def __init__(self, split: StreamingSplit, stride: int = 1, clips: int = 1) -> None:
        if stride < 1 or clips < 1:
            raise UserError(f"stride {stride}, clips {clips}: give positive numbers (--stride, --clips)")
        self.split, self.stride = split, stride
        self.length = split.frames
        self.buffer: collections.deque[np.ndarray] = collections.deque(maxlen=self.length)
        self.recent: collections.deque[np.ndarray] = collections.deque(maxlen=clips)
        self.seen = 0

    def push(self, frame: np.ndarray) -> Prediction | None:
        """Add one preprocessed frame ``(3, H, W)`` float32; return the window's prediction when one is due."""
        self.buffer.append(self.split.run_frame(frame))
        self.seen += 1
        if len(self.buffer) < self.length or (self.seen - self.length) % self.stride:
            return None
        logits = self.split.run_later(self.split.collage(list(self.buffer)))[0]
        self.recent.append(logits)
        return Prediction(self.seen - self.length, self.seen - 1, logits, np.mean(np.stack(self.recent), axis=0))
