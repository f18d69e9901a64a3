"""Torch work spread over the machine's cores as single-threaded tasks, one per worker thread.

Why not torch's own intra-op threads: the graphs here are made of many small ops, and on a busy
machine OpenMP's thread teams collapse (calibrating the ViC-T early graph took 33 s with 2 intra-op
threads on a loaded 2-core VM, 3.5 s with 1). Independent items (the frames of a calibration chunk,
the feeds of a check) run instead on a pool of Python threads, each computing with one torch thread;
torch releases the GIL inside its kernels, so the workers use the cores in parallel, and each item is
computed exactly as a single-threaded run would compute it (same kernels, same reduction order).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset restrict)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CorePool:
    """``map`` over items on ``workers`` threads that each run torch single-threaded (in order, like map)."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._executor = (ThreadPoolExecutor(self.workers, initializer=torch.set_num_threads, initargs=(1,))
                          if self.workers > 1 else None)

    @property
    def engine_threads(self) -> int:
        """Intra-op threads for an engine (an ONNX Runtime session) that this pool runs on several items at
        once: 1 with several workers, 0 (the engine's default, every core) with one."""
        return 1 if self.workers > 1 else 0

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        if self._executor is None:
            return [fn(item) for item in items]
        return list(self._executor.map(fn, items))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()


#: Below this many elements per item and op, handing work to another thread costs more than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 16


@contextmanager
def core_pool(elements: int | None = None) -> Iterator[CorePool]:
    """A :class:`CorePool` over every usable core, or one worker (this thread) when the items' largest
    tensor has fewer than :data:`PARALLEL_MIN_ELEMENTS` elements; this thread's torch is single-threaded
    inside the block (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    small = elements is not None and elements < PARALLEL_MIN_ELEMENTS
    pool = CorePool(1 if small else usable_cores())
    try:
        yield pool
    finally:
        pool.close()
        torch.set_num_threads(before)


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive runs of at most ``size`` items, in order (works on generators too)."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
