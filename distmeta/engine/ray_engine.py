"""Meta-gradients on Ray task-worker actors, aggregated by the central learner.

Protocol, per meta-step t (the same for every method):
1. the learner puts the flat parameters into the object store once;
2. the tasks ``0..B-1`` of step t are split into contiguous shards, one per live
   worker; each worker returns ``(sum of its tasks' flat gradients, summed
   metrics, task count, compute seconds)`` from ``MetaCore.shard_gradient``;
3. the learner sums the shards in task order and applies their mean once.

Timing, per step (``meta_gradient(...)[3]``, seconds, summing to the engine's wall
time): ``compute`` = the mean shard's compute on its worker; ``wait`` = the slowest
shard's compute minus that mean (load imbalance, stragglers), plus the time lost to
failed attempts before their shards were re-run; ``transfer`` = the rest: publishing
the parameters, the calls' round trips, returning and summing the gradients.

Parts, one job each: ``worker_pool.WorkerPool`` (placement, spawning, replacing
workers), ``shards.run_shards`` (the one retry loop: every shard's result exactly
once; fault tolerance), ``transports`` (actor calls, compiled graphs, collective
allreduce) and ``ray_worker.TaskWorker`` (the worker side). ``RayEngine`` picks the
transport, runs a step through them and does the byte and timing accounting.
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Sequence

import torch

from distmeta.address import connect_ray
from distmeta.engine.ray_worker import TaskWorker, shippable_registrations
from distmeta.engine.shards import StepRun, run_shards, shard_sizes, sum_shards
from distmeta.engine.transports import (INLINE_PARAMS_BYTES, ActorCalls, Allreduce, CompiledGraphs, Params,
                                        Transport)
from distmeta.engine.worker_pool import WorkerPool

__all__ = ["RayEngine", "shard_sizes", "step_timing"]


def step_timing(wall: float, computes: Sequence[float], lost: float = 0.0) -> Dict[str, float]:
    """Split an engine step's ``wall`` seconds into compute / wait / transfer (module
    docstring) from the shards' compute seconds (at least one) and the time ``lost`` to
    failed attempts."""
    mean = sum(computes) / len(computes)
    transfer = max(wall - lost - max(computes), 0.0)
    return {"compute": mean, "wait": max(wall - mean - transfer, 0.0), "transfer": transfer}


class RayEngine:
    """``meta_gradient(flat_params, step, meta_batch)`` on Ray workers (module docstring).

    ``kind``/``splits_time``: what the trainer asks an engine; ``splits_time`` means the
    timing dict splits the engine's time into compute / wait / transfer. ``worker_cls``:
    the actor class (tests subclass it to inject faults)."""
    kind = "ray"
    splits_time = True
    worker_cls = TaskWorker

    def __init__(self, cfg, core):
        import ray

        self.cfg, self.core, e = cfg, core, cfg.engine
        self.started_ray = connect_ray(e.address)
        self.bytes_last_step = 0
        worker_args = (cfg.to_dict(), ray.put(core.datasets),  # datasets once: zero-copy on a node
                       e.num_cpus, shippable_registrations())
        self.pool = WorkerPool(e, self.worker_cls, worker_args)
        self._calls = ActorCalls(e.shard_timeout_s)
        numel = core.initial_flat_params().numel()
        grad_mb = numel * 8 / 1e6   # gradients travel as float64 sums
        self._allreduce: Optional[Allreduce] = None
        if e.allreduce_threshold_mb > 0 and grad_mb >= e.allreduce_threshold_mb and e.workers > 1:
            backend = "nccl" if e.num_gpus > 0 else "gloo"
            self._allreduce = Allreduce(e.shard_timeout_s, self.pool.live(), backend)
        param_bytes = numel * torch.finfo(core.dtype).bits // 8
        compiled = self._allreduce is None and (
            e.compiled_graph == "always" or (e.compiled_graph == "auto" and param_bytes <= INLINE_PARAMS_BYTES))
        self._compiled: Optional[CompiledGraphs] = (
            CompiledGraphs(e.shard_timeout_s, e.placement_timeout_s) if compiled else None)

    # -- what the engine is and did --------------------------------------------
    @property
    def compiled(self) -> bool:
        """Steps start on compiled graphs."""
        return self._compiled is not None

    @property
    def compiled_steps(self) -> int:
        """Steps finished on compiled graphs alone."""
        return self._compiled.steps if self._compiled is not None else 0

    @property
    def allreduce(self) -> bool:
        """Steps run on the collective allreduce (until a member fails)."""
        return self._allreduce is not None and self._allreduce.active

    @property
    def group(self) -> Optional[str]:
        return self._allreduce.group if self._allreduce is not None else None

    @property
    def restarts(self) -> int:
        return self.pool.restarts

    @property
    def worker_info(self):
        return self.pool.worker_info

    @property
    def pg(self):
        return self.pool.pg

    def live_workers(self) -> int:
        return len(self.pool)

    # -- one meta-step ---------------------------------------------------------------
    def _transport(self) -> Transport:
        if self.allreduce:
            return self._allreduce
        return self._compiled or self._calls

    def meta_gradient(self, flat_params: torch.Tensor, step: int, meta_batch: int):
        t0 = time.perf_counter()
        self.pool.adopt()
        self.pool.ensure_live()
        params = Params.publish(flat_params)
        run = run_shards(shard_sizes(meta_batch, len(self.pool)), self._transport(), self._calls, self.pool,
                         params, step)
        grad, metrics, count = sum_shards(run.results)
        return grad, metrics, count, self._account(time.perf_counter() - t0, params, run)

    def _account(self, wall: float, params: Params, run: StepRun) -> Dict[str, float]:
        """The step's bytes (``bytes_last_step``: parameters published and sent, gradients
        returned) and its timing (``step_timing``)."""
        returned = sum(r.grad.nbytes for r in run.results.values() if r.grad is not None)
        self.bytes_last_step = params.published + run.sent + returned
        return step_timing(wall, [r.compute for r in run.results.values() if r.count], lost=run.lost)

    def close(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        for transport in (self._compiled, self._allreduce, self._calls):
            if transport is not None:
                transport.close()
        self.pool.close()
        if self.started_ray:
            ray.shutdown()
