"""In-process execution (``engine.workers: 0``): the whole meta-batch on one
``MetaCore``, no Ray."""
from __future__ import annotations

import time


class LocalEngine:
    def __init__(self, core):
        self.core = core

    def meta_gradient(self, flat_params, step: int, meta_batch: int):
        t0 = time.perf_counter()
        grad, metrics, count = self.core.shard_gradient(flat_params, step, range(meta_batch))
        return grad, metrics, count, {"compute": time.perf_counter() - t0}

    def close(self) -> None:
        pass
