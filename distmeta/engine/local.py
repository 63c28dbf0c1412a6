"""In-process execution (``engine.workers: 0``): the whole meta-batch on one
``MetaCore``, no Ray.

Contract: ``meta_gradient(flat_params, step, meta_batch)`` returns the same
``(gradient sum, metric sums, task count, timing)`` as ``RayEngine``; its timing
is ``{"compute": seconds}`` alone (``splits_time`` is False: no transfer or wait
to account for).
"""
from __future__ import annotations

import time


class LocalEngine:
    kind = "local"
    splits_time = False   # the timing dict is the compute alone; the learner's share is not split off

    def __init__(self, core):
        self.core = core

    def meta_gradient(self, flat_params, step: int, meta_batch: int):
        t0 = time.perf_counter()
        grad, metrics, count = self.core.shard_gradient(flat_params, step, range(meta_batch))
        return grad, metrics, count, {"compute": time.perf_counter() - t0}

    def close(self) -> None:
        pass
