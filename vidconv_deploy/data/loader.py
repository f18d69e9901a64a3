"""Training batches for a run of one or several processes: PyTorch's DataLoader over :class:`TrainClips`.

Each epoch's video order is PyTorch's DistributedSampler (a permutation seeded by the dataset's seed
and the epoch), split over the processes of a torchrun run: process ``r`` of ``n`` reads the
videos at positions ``r, r+n, r+2n, ...`` of the order, so step ``k`` of a run of ``n`` processes
with ``batch / n`` clips each covers exactly the clips of step ``k`` of one process with ``batch``
(when the videos split evenly; otherwise DistributedSampler repeats the first few to even the shares).
A clip depends only on (seed, epoch, video), so it is the same in any process or loader worker.

The sampler hands each worker ``(epoch, video)`` keys, so persistent workers need no message when
the epoch changes. A video that turns out bad while decoding comes back from the worker as a
record, is added to the dataset's skip report in the main process and is never asked for again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vidconv_deploy.data.dataset import TrainClips
from vidconv_deploy.data.video import BadVideo

#: ``(clips (B, L, 3, H, W), labels (B,))``; B is 0 when every video of a process's share of a step was bad.
Batch = tuple[torch.Tensor, torch.Tensor]


class Skipped(NamedTuple):
    """A video a worker found bad, for the main process's skip report."""

    path: str
    reason: str
    detail: str


class EpochOrder(Sampler[tuple[int, int]]):
    """This process's share of the epoch's shuffled videos, as ``(epoch, video)`` keys, without the known-bad ones."""

    def __init__(self, dataset: TrainClips, rank: int, processes: int) -> None:
        self.dataset = dataset
        self.order = DistributedSampler(range(len(dataset)), num_replicas=processes, rank=rank, shuffle=True,
                                        seed=dataset.seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.order:
            if self.dataset.videos[index][0].path not in self.dataset.skips:
                yield self.epoch, index

    def __len__(self) -> int:
        return len(self.order)


class EpochClips(Dataset):
    """Map-style access to :class:`TrainClips`: key ``(epoch, video)`` -> ``(clip, label)``, or :class:`Skipped`."""

    def __init__(self, dataset: TrainClips) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int] | Skipped:
        epoch, index = key
        try:
            return self.dataset.clip(epoch, index)
        except BadVideo as bad:
            return Skipped(str(self.dataset.videos[index][0].path), bad.reason, bad.detail)

    def __len__(self) -> int:
        return len(self.dataset)


def _collate(items: list[tuple[torch.Tensor, int] | Skipped]) -> tuple[torch.Tensor, torch.Tensor, list[Skipped]]:
    clips = [item for item in items if not isinstance(item, Skipped)]
    stacked = torch.stack([clip for clip, _ in clips]) if clips else torch.empty(0)
    return stacked, torch.tensor([label for _, label in clips], dtype=torch.long), [i for i in items if isinstance(i, Skipped)]


def clip_batches(dataset: TrainClips, batch: int, rank: int = 0, processes: int = 1, workers: int = 0,
                 pin_memory: bool = False) -> Callable[[int], Iterator[Batch]]:
    """``epoch -> that epoch's batches`` of ``batch`` clips for process ``rank`` of ``processes``.

    ``workers`` decode in background processes (kept across epochs); ``pin_memory`` for a copy to a GPU.
    """
    order = EpochOrder(dataset, rank, processes)
    loader = DataLoader(EpochClips(dataset), batch_size=batch, sampler=order, num_workers=workers, collate_fn=_collate,
                        pin_memory=pin_memory, persistent_workers=workers > 0)

    def epoch_batches(epoch: int) -> Iterator[Batch]:
        order.set_epoch(epoch)
        for clips, labels, skipped in loader:
            for bad in skipped:
                dataset.skips.add(bad.path, bad.reason, bad.detail)
            yield clips, labels

    return epoch_batches
