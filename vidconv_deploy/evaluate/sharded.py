"""Scoring a split by video, the same way in one process and on a Ray cluster.

Each video is identified by its position in the split's list; its clips, its frame-order
permutation and its scores depend on nothing else, so any sharding of the list gives the same
numbers as one process. :func:`score_split` runs here; :func:`score_split_ray` shards the list
over a Ray cluster with Ray Data (``--ray local`` starts a local instance) and streams results back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidconv_deploy.data.dataset import EvalClips, SkipReport
from vidconv_deploy.data.sampling import Protocol
from vidconv_deploy.data.sources import VideoItem
from vidconv_deploy.errors import UserError
from vidconv_deploy.evaluate.classifiers import ClipClassifier
from vidconv_deploy.evaluate.metrics import Scores
from vidconv_deploy.evaluate.run import score_video
from vidconv_deploy.progress import progress_bar

#: ``() -> classifiers``: each Ray worker builds its own (ONNX Runtime sessions do not pickle).
ClassifierFactory = Callable[[], dict[str, ClipClassifier]]


def _video_scores(items: Sequence[tuple[int, VideoItem]], classifiers: dict[str, ClipClassifier], protocol: Protocol,
                  image_size: tuple[int, int], order: str, seed: int, skips: SkipReport) -> Iterator[dict[str, Any]]:
    """One row per video: its list index, label and every classifier's score (``None`` if skipped)."""
    for index, item in items:
        clips = next(iter(EvalClips([item], protocol, image_size, skips=skips, progress=False)), None)
        scores = None if clips is None else score_video(classifiers, clips[0].numpy(), order, seed, index)
        yield {"index": index, "label": item.label, "scores": scores}


def _collect(rows: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Scores]:
    kept = sorted((r for r in rows if r["scores"] is not None), key=lambda r: r["index"])
    labels = np.asarray([r["label"] for r in kept], dtype=np.int64)
    return {n: Scores(np.stack([r["scores"][n] for r in kept]) if kept else np.zeros((0, 0)), labels) for n in names}


def score_split(items: Sequence[VideoItem], factory: ClassifierFactory, protocol: Protocol, image_size: tuple[int, int],
                order: str = "normal", seed: int = 0) -> tuple[dict[str, Scores], SkipReport]:
    """Score every video in this process."""
    classifiers, skips = factory(), SkipReport()
    rows = []
    with progress_bar() as progress:
        task = progress.add_task("evaluating", total=len(items), info="")
        for row in _video_scores(list(enumerate(items)), classifiers, protocol, image_size, order, seed, skips):
            rows.append(row)
            progress.update(task, advance=1)
    return _collect(rows, list(classifiers)), skips


class _ShardScorer:
    """A Ray Data actor: builds the classifiers once, then scores the batches of video rows it is sent."""

    def __init__(self, factory: ClassifierFactory, protocol: Protocol, image_size: tuple[int, int], order: str, seed: int):
        self.classifiers = factory()
        self.args = (protocol, image_size, order, seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [(int(i), VideoItem(Path(p), int(label))) for i, p, label in zip(batch["index"], batch["path"], batch["label"])]
        skips = SkipReport()
        rows = list(_video_scores(items, self.classifiers, *self.args, skips))
        reasons = {path: reason for reason, paths in skips.files.items() for path in paths}
        # Scores travel as float64 bytes: exact, and one fixed column type whether or not a video was skipped.
        return {
            "index": np.asarray([r["index"] for r in rows]),
            "label": np.asarray([r["label"] for r in rows]),
            "path": np.asarray([str(item.path) for _, item in items]),
            "skip": np.asarray([reasons.get(str(item.path), "") for _, item in items]),
            "scores": np.asarray([b"" if r["scores"] is None else
                                  np.stack([r["scores"][n] for n in self.classifiers]).astype(np.float64).tobytes()
                                  for r in rows], dtype=object),
        }


def score_split_ray(address: str, items: Sequence[VideoItem], factory: ClassifierFactory, protocol: Protocol,
                    image_size: tuple[int, int], order: str = "normal", seed: int = 0, workers: int = 2,
                    ) -> tuple[dict[str, Scores], SkipReport]:
    """Score every video on a Ray cluster (``address``, or ``local`` for a local instance of ``workers`` CPUs)."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'vidconv-deploy[ray]'") from None
    names = list(factory())
    if not ray.is_initialized():
        try:
            if address == "local":
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise UserError(f"cannot reach the Ray cluster at {address!r} ({str(err).splitlines()[0]}): "
                            f"start one with 'ray start --head' or use --ray local") from None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    rows = [{"index": i, "path": str(item.path), "label": item.label} for i, item in enumerate(items)]
    dataset = ray.data.from_items(rows).map_batches(
        _ShardScorer, fn_constructor_args=(factory, protocol, image_size, order, seed), batch_size=4,
        concurrency=workers, num_cpus=1)
    collected, skips = [], SkipReport()
    with progress_bar() as progress:
        task = progress.add_task(f"evaluating on Ray ({workers} workers)", total=len(rows), info="")
        for row in dataset.iter_rows():  # streamed back as shards finish
            scores = None
            if row["skip"]:
                skips.add(row["path"], row["skip"], "found by a Ray worker")
            else:
                table = np.frombuffer(row["scores"], dtype=np.float64).reshape(len(names), -1)
                scores = {n: table[k] for k, n in enumerate(names)}
            collected.append({"index": int(row["index"]), "label": int(row["label"]), "scores": scores})
            progress.update(task, advance=1)
    return _collect(collected, names), skips
