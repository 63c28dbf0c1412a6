"""The worker side of the Ray engine: ``TaskWorker``, a stateless actor with a model
copy, the task sampler and the dataset.

Contract: ``compute(flat_params, step, start, stop)`` returns the shard
``(flat float64 gradient sum as numpy, summed metrics, task count, compute seconds)``
of the tasks ``start..stop-1`` of meta-step ``step`` (``MetaCore.shard_gradient``),
a pure function of (config, parameters, step, shard): a re-run shard gives the same
result; at ``step`` ``WARMUP_STEP`` it computes nothing and returns at once (a compiled
graph's first round, which carries Ray's setup of the graph). ``compute_allreduce``
computes the same shard, then sums the gradients of all workers of a collective group;
only rank 0 returns the sum. ``ready()`` warms the worker up, then says where it runs:
the pool waits for it before a worker takes shards, and its warm-up (``warm_up``, one
discarded task gradient) pays torch's first-call setup (about 1 s for conv4) there, so a
replacement's first shard is as fast as any other (the shard timeout measures work, not
start-up) and an error in the user's task or model code reaches the driver as itself,
not as a failed actor creation. Workers hold no state the learner needs: any of them
can be killed and replaced between or during steps.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict

import numpy as np
import torch

from distmeta.engine.prefetch import TaskPrefetcher

WARMUP_STEP = -1   # compute() at this step computes nothing (module docstring)


class CollectiveError(RuntimeError):
    """A worker's allreduce failed (a member died or left): the group must be rebuilt."""


def _as_tensor(flat: np.ndarray) -> torch.Tensor:
    """A torch view of parameters received from the learner (copied when Ray handed
    over a read-only view of the object store)."""
    return torch.from_numpy(flat if flat.flags.writeable else np.array(flat, copy=True))


class TaskWorker:
    """A stateless worker: a model copy, the task sampler and the dataset."""

    def __init__(self, config: Dict[str, Any], datasets, num_cpus: float, registrations=None):
        from distmeta.config import from_dict
        from distmeta.engine.core import MetaCore, set_threads
        from distmeta.registry import restore_registrations

        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        set_threads(num_cpus)
        restore_registrations(registrations or {})  # the user's own datasets, tasks, models, algorithms
        self.core = MetaCore(from_dict(config), datasets=datasets)
        self.prefetcher = TaskPrefetcher(lambda step, indices: self.core.make_tasks("train", step, indices))
        self.warm = False

    def warm_up(self) -> None:
        """One task's gradient at the initial parameters, discarded (module docstring)."""
        if not self.warm:
            self.core.shard_gradient(self.core.initial_flat_params(), 0, range(1))
            self.warm = True

    def ready(self) -> Dict[str, Any]:
        import ray
        from ray.util.placement_group import get_current_placement_group

        self.warm_up()
        pg = get_current_placement_group()
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "device": str(self.core.device), "threads": torch.get_num_threads(),
                "pg": pg.id.hex() if pg is not None else None}

    def _shard(self, flat_params: np.ndarray, step: int, start: int, stop: int):
        """This worker's shard of step ``step``; then the same shard of step + 1 is
        sampled in the background while the learner applies this one."""
        tasks = self.prefetcher.take(step, range(start, stop))
        grad, metrics, count = self.core.shard_gradient(_as_tensor(flat_params), step, range(start, stop), tasks)
        self.prefetcher.ahead(step + 1, range(start, stop))
        return grad, metrics, count

    def compute(self, flat_params: np.ndarray, step: int, start: int, stop: int):
        if step == WARMUP_STEP:
            return np.zeros(0), {}, 0, 0.0
        t0 = time.perf_counter()
        grad, metrics, count = self._shard(flat_params, step, start, stop)
        return grad.numpy(), metrics, count, time.perf_counter() - t0

    def compute_allreduce(self, flat_params: np.ndarray, step: int, start: int, stop: int, group: str,
                          rank: int):
        """Compute this shard, then sum the shard gradients of all workers with a
        collective allreduce; only rank 0 returns the sum to the learner."""
        import ray.util.collective as col

        t0 = time.perf_counter()
        if stop > start:
            grad, metrics, count = self._shard(flat_params, step, start, stop)
        else:
            grad, metrics, count = torch.zeros(flat_params.size, dtype=torch.float64), {}, 0
        compute = time.perf_counter() - t0
        try:
            col.allreduce(grad, group_name=group)
        except Exception as exc:  # a lost member: tell the learner apart from an error in user code
            raise CollectiveError(f"allreduce in group {group} failed: {exc}") from exc
        return (grad.numpy() if rank == 0 else None), metrics, count, compute


def shippable_registrations() -> Dict[str, Dict[str, Any]]:
    """The user's registry entries, pickled by value so that workers that cannot
    import the user's script or test module still get them."""
    from ray import cloudpickle

    from distmeta.registry import user_registrations

    snapshot = user_registrations()
    for entries in snapshot.values():
        for obj in entries.values():
            module = sys.modules.get(getattr(obj, "__module__", ""), None)
            if module is not None and module.__name__ != "__main__":
                cloudpickle.register_pickle_by_value(module)
    return snapshot
