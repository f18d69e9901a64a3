"""The streaming split, once: the early net per frame, the host's collage, the later net per collage.

This is how every VidConv target deploys the model: the early graph runs once per frame, the host
tiles the last L = rows * cols frame outputs row-major into the collage (frame t at grid row
t // cols, column t % cols, as :func:`vidconv_deploy.models.collage.frames_to_collage`), and the
later graph turns the collage into logits. The collage is a pure rearrangement, so the same code
serves float features, int8 codes and FINN's integers, in our graphs' NCHW or FINN's channels-last
NHWC. Export checks, calibration, golden vectors, evaluation and the FINN chain all use
:class:`StreamingSplit` with the runners of their engines; the board script keeps its own copy
(it runs without this package), tested equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from vidconv_deploy.errors import UserError
from vidconv_deploy.runners.base import Runner, Tensors

LAYOUTS = ("NCHW", "NHWC")
#: The split's two graphs, in the order a clip runs them: the early net per frame, the later net per collage.
GRAPHS = ("early", "later")
#: ``map(fn, items)`` as a list, in order: the builtin's meaning, or a core pool's.
MapFn = Callable[[Callable[[Tensors], np.ndarray], Sequence[Tensors]], list[np.ndarray]]


def collage(frames: Sequence[np.ndarray] | np.ndarray, grid: tuple[int, int], layout: str = "NCHW") -> np.ndarray:
    """Tile L frame maps row-major: ``(1, C, h, w)`` each (or stacked ``(L, C, h, w)``) -> ``(1, C, rows*h, cols*w)``;
    in ``NHWC`` ``(1, h, w, C)`` each -> ``(1, rows*h, cols*w, C)``. Keeps the dtype."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    rows, cols = grid
    x = frames if isinstance(frames, np.ndarray) else np.concatenate(list(frames))
    if x.ndim != 4 or x.shape[0] != rows * cols:
        raise ValueError(f"{x.shape[0]} frame maps of shape {x.shape[1:]} do not tile a {rows}x{cols} collage "
                         f"(give {rows * cols} 4-D maps)")
    if layout == "NCHW":
        _, c, h, w = x.shape
        return x.reshape(rows, cols, c, h, w).transpose(2, 0, 3, 1, 4).reshape(1, c, rows * h, cols * w)
    _, h, w, c = x.shape
    return x.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(1, rows * h, cols * w, c)


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """One clip through the split: the later graph's first output, each frame's early output, the collage."""

    logits: np.ndarray
    early_outputs: list[np.ndarray]
    collage: np.ndarray


class StreamingSplit:
    """``early`` per frame, the host collage on ``grid``, ``later`` on the collage.

    Each runner's first input and first output are the ones the split feeds and reads.
    ``layout``: the layout of the early outputs and of the later graph's input (FINN's later graph
    takes channels-last ``NHWC``).
    """

    def __init__(self, grid: tuple[int, int], early: Runner, later: Runner, layout: str = "NCHW") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
        self.grid, self.early, self.later, self.layout = (int(grid[0]), int(grid[1])), early, later, layout

    @property
    def frames(self) -> int:
        """L: the frames of one clip, the cells of the collage."""
        return self.grid[0] * self.grid[1]

    def frame_feeds(self, clip: np.ndarray) -> list[Tensors]:
        """The early graph's feed for each frame of ``clip`` ``(L, ...)`` or ``(1, L, ...)``: ``(1, ...)`` float32."""
        clip = np.asarray(clip)
        if clip.ndim == 5 and clip.shape[0] == 1:
            clip = clip[0]
        if clip.ndim != 4 or clip.shape[0] != self.frames:
            rows, cols = self.grid
            raise UserError(f"clip of shape {clip.shape} does not fit a {rows}x{cols} collage: expected "
                            f"({self.frames}, 3, H, W) or (1, {self.frames}, 3, H, W)")
        name = self.early.input_names[0]
        return [{name: np.ascontiguousarray(frame[None], dtype=np.float32)} for frame in clip]

    def collage(self, features: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """The host's step on this split's grid and layout (see :func:`collage`)."""
        return collage(features, self.grid, self.layout)

    def run_frame(self, frame: np.ndarray) -> np.ndarray:
        """The early graph's first output for one frame ``(3, H, W)`` (what streaming runs per new frame)."""
        feed = {self.early.input_names[0]: np.ascontiguousarray(np.asarray(frame)[None], dtype=np.float32)}
        return self.early.run(feed)[self.early.output_names[0]]

    def run_early(self, clip: np.ndarray) -> list[np.ndarray]:
        """The early graph's first output for each frame of ``clip``."""
        return self._early(self.frame_feeds(clip))

    def _early(self, frame_feeds: list[Tensors], map_: MapFn | None = None) -> list[np.ndarray]:
        name = self.early.output_names[0]  # loads the runner here, before any worker thread runs it

        def run(feed: Tensors) -> np.ndarray:
            return self.early.run(feed)[name]

        return map_(run, frame_feeds) if map_ else [run(feed) for feed in frame_feeds]

    def run_later(self, collage: np.ndarray) -> np.ndarray:
        """The later graph's first output on ``collage`` (fed as given: the caller picks its dtype)."""
        return self.later.run({self.later.input_names[0]: collage})[self.later.output_names[0]]

    def run_clip(self, clip: np.ndarray) -> StreamResult:
        """One clip as a host runs it: early per frame, collage, later."""
        features = self.run_early(clip)
        tiled = self.collage(features)
        return StreamResult(self.run_later(tiled), features, tiled)

    def feeds(self, clips: Iterable[np.ndarray], map_: MapFn | None = None) -> tuple[list[Tensors], list[Tensors]]:
        """Both graphs' feeds over ``clips`` (a calibration set): every frame for the early graph, each
        clip's collage of the early outputs for the later graph.

        ``map_`` runs the early graph over all the frames (in order, like ``map``): a core pool's map runs
        independent frames at once, which beats one run's intra-op threads on these small graphs (ViC-T 224
        on 2 cores: 35 against 41 ms per frame with single-threaded sessions, the outputs bit for bit equal).
        """
        early_feeds = [feed for clip in clips for feed in self.frame_feeds(clip)]
        later_in = self.later.input_names[0]
        features = self._early(early_feeds, map_)
        later_feeds = [{later_in: self.collage(features[start:start + self.frames])}
                       for start in range(0, len(features), self.frames)]
        return early_feeds, later_feeds
