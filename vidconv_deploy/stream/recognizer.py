"""The sliding window over a :class:`~vidconv_deploy.runners.StreamingSplit`: one early run per new frame."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from vidconv_deploy.errors import UserError
from vidconv_deploy.runners import StreamingSplit


class FloatBuffer:
    """Keeps each early output as the runner gives it (float paths)."""

    def encode(self, features: np.ndarray) -> np.ndarray:
        return features

    def decode(self, stored: np.ndarray) -> np.ndarray:
        return stored


@dataclasses.dataclass(frozen=True)
class Int8Buffer:
    """Keeps each early output as the board does: int8 codes at the early output's fix point, channels-last (NHWC).

    The integer paths' early outputs are exact multiples of 2**-fix_point in [-128, 127] x that step,
    so encoding and decoding give back the very same floats: a quarter of the memory, no change in
    the result.
    """

    fix_point: int

    def encode(self, features: np.ndarray) -> np.ndarray:
        codes = np.round(features * 2.0 ** self.fix_point)
        if not np.array_equal(codes, np.clip(codes, -128, 127)) or not np.array_equal(codes * 2.0 ** -self.fix_point, features):
            raise ValueError(f"early output is not int8 at fix point {self.fix_point}: the graph is not the quantized one")
        return np.ascontiguousarray(codes.astype(np.int8).transpose(0, 2, 3, 1))

    def decode(self, stored: np.ndarray) -> np.ndarray:
        return (stored.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(2.0 ** -self.fix_point))


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
    runs. ``buffer``: how each output is kept (:class:`Int8Buffer` on the integer paths, as the board). ``clips``: the score averages the logits of the last ``clips`` windows (the paper's
    multi-clip score, as evaluation averages a video's clips).
    """

    def __init__(self, split: StreamingSplit, stride: int = 1, clips: int = 1,
                 buffer: FloatBuffer | Int8Buffer | None = None) -> None:
        if stride < 1 or clips < 1:
            raise UserError(f"stride {stride}, clips {clips}: give positive numbers (--stride, --clips)")
        self.split, self.stride = split, stride
        self.codec = buffer or FloatBuffer()
        self.length = split.frames
        self.buffer: collections.deque[np.ndarray] = collections.deque(maxlen=self.length)
        self.recent: collections.deque[np.ndarray] = collections.deque(maxlen=clips)
        self.seen = 0

    def push(self, frame: np.ndarray) -> Prediction | None:
        """Add one preprocessed frame ``(3, H, W)`` float32; return the window's prediction when one is due."""
        self.buffer.append(self.codec.encode(self.split.run_frame(frame)))
        self.seen += 1
        if len(self.buffer) < self.length or (self.seen - self.length) % self.stride:
            return None
        logits = self.split.run_later(self.split.collage([self.codec.decode(b) for b in self.buffer]))[0]
        self.recent.append(logits)
        return Prediction(self.seen - self.length, self.seen - 1, logits, np.mean(np.stack(self.recent), axis=0))
