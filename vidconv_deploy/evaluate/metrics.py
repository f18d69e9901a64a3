"""Accuracy figures from per-video scores: top-1, top-5, and agreement with the float model.

Scores are kept per video (the mean of its clips' logits, as the paper averages the views'
scores), so a report can compute any figure later and a sharded run can be merged exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Scores:
    """One classifier's video-level scores ``(videos, classes)`` and the true labels."""

    logits: np.ndarray
    labels: np.ndarray

    def topk(self, k: int) -> float:
        """Top-k accuracy in percent (k is capped at the class count)."""
        k = min(k, self.logits.shape[1])
        best = np.argsort(-self.logits, axis=1, kind="stable")[:, :k]
        return float(100.0 * np.mean(np.any(best == self.labels[:, None], axis=1))) if len(self.labels) else float("nan")

    def agreement(self, other: Scores) -> float:
        """Percent of videos whose top-1 class equals ``other``'s (e.g. INT8 vs float)."""
        if not len(self.labels):
            return float("nan")
        return float(100.0 * np.mean(self.logits.argmax(1) == other.logits.argmax(1)))


def video_score(clip_logits: list[np.ndarray]) -> np.ndarray:
    """A video's score: the mean of its clips' logits (the paper's "average score over all the views")."""
    return np.mean(np.stack(clip_logits), axis=0)


def summary(scores: dict[str, Scores], base: str) -> list[dict[str, float | str]]:
    """One row per classifier: top-1, top-5, and top-1 agreement with ``base``."""
    rows = []
    for name, s in scores.items():
        rows.append({"model": name, "videos": int(len(s.labels)), "top1": s.topk(1), "top5": s.topk(5),
                     f"agreement_with_{base}": s.agreement(scores[base]) if base in scores else float("nan")})
    return rows
