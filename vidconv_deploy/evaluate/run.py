"""Score a split's videos with several classifiers at once, in one pass over the decoded clips.

Decoding dominates on small models, so each video is decoded once and every classifier sees the
same clips. The frame-order test (paper Table 10) reorders the frames of every clip before
scoring: ``reverse`` flips time, ``shuffle`` applies one fixed random permutation per video.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from vidconv_deploy.evaluate.classifiers import ClipClassifier
from vidconv_deploy.evaluate.metrics import Scores, video_score
from vidconv_deploy.progress import progress_bar

ORDERS = ("normal", "reverse", "shuffle")


def reorder(clips: np.ndarray, order: str, rng: np.random.Generator) -> np.ndarray:
    """Reorder the frames (axis 1) of ``clips (N, L, 3, H, W)`` for the frame-order test."""
    if order == "reverse":
        return clips[:, ::-1].copy()
    if order == "shuffle":
        return clips[:, rng.permutation(clips.shape[1])].copy()
    return clips


def score_video(classifiers: Mapping[str, ClipClassifier], clips: np.ndarray, order: str, seed: int, index: int
                ) -> dict[str, np.ndarray]:
    """Every classifier's score for one video (its clips reordered by ``order``; ``index`` seeds the shuffle)."""
    batch = reorder(clips.astype(np.float32, copy=False), order, np.random.default_rng([seed, index]))
    return {name: video_score(list(classify(batch))) for name, classify in classifiers.items()}


def score_videos(
    classifiers: Mapping[str, ClipClassifier],
    videos: Iterable[tuple[torch.Tensor, int]],
    total: int | None = None,
    order: str = "normal",
    seed: int = 0,
    description: str = "evaluating",
) -> dict[str, Scores]:
    """Video-level scores of every classifier over ``videos`` (``(clips, label)`` per video)."""
    logits: dict[str, list[np.ndarray]] = {name: [] for name in classifiers}
    labels: list[int] = []
    with progress_bar() as progress:
        task = progress.add_task(description, total=total, info="")
        for index, (clips, label) in enumerate(videos):
            for name, score in score_video(classifiers, clips.numpy(), order, seed, index).items():
                logits[name].append(score)
            labels.append(int(label))
            progress.update(task, advance=1)
    classes = max((len(v[0]) for v in logits.values() if v), default=0)
    return {name: Scores(np.stack(v) if v else np.zeros((0, classes)), np.asarray(labels, dtype=np.int64))
            for name, v in logits.items()}
