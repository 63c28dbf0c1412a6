"""Task sampling ahead of the next call, in a worker's idle time.

A task of meta-step t is a pure function of (run seed, split, t, index)
(``distmeta.tasks.base.task_seed``), so the tasks of the next shard
(t + 1, same indices) can be sampled while the learner applies step t and the
call round-trips: ``take(t, indices)`` then returns exactly what sampling
on demand would have returned. A wrong guess (a re-run shard, a rebalanced
worker pool) is discarded and the shard is sampled on demand.

Sampling never runs on two threads at once: ``take`` waits for the sampling in
flight before it samples itself, so task distributions need not be thread-safe.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, Tuple

Key = Tuple[int, Tuple[int, ...]]


class TaskPrefetcher:
    def __init__(self, sample: Callable[[int, Sequence[int]], List]):
        """``sample(step, indices)`` returns the tasks of ``indices`` at meta-step ``step``."""
        self._sample = sample
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distmeta-prefetch")
        self._pending: Optional[Tuple[Key, Future]] = None
        self.hits = 0
        self.misses = 0

    def take(self, step: int, indices: Sequence[int]) -> List:
        key = (int(step), tuple(indices))
        pending, self._pending = self._pending, None
        if pending is not None:
            pending_key, future = pending
            try:
                tasks = future.result()
            except Exception:  # a failed guess is sampled again below, where errors surface
                tasks = None
            if pending_key == key and tasks is not None:
                self.hits += 1
                return tasks
        self.misses += 1
        return self._sample(*key)

    def ahead(self, step: int, indices: Sequence[int]) -> None:
        """Start sampling the tasks of ``(step, indices)`` in the background."""
        if self._pending is not None:  # never two samplings at once, even if a guess was never taken
            self._pending[1].exception()
        key = (int(step), tuple(indices))
        self._pending = (key, self._pool.submit(self._sample, *key))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
