"""One meta-step's shards: how the meta-batch is split (``shard_sizes``), the one
retry loop that gets every shard's result (``run_shards``) and their sum in task
order (``sum_shards``).

Contract of ``run_shards(shards, transport, retry, pool, params, step)``: it returns
every shard of ``shards`` exactly once, each computed by one worker, or raises
(an error in the user's code, more worker failures than
``engine.max_worker_restarts``, or no live worker left and none placeable). The
first round runs on ``transport``; each round's failed shards are re-run on
``retry`` (plain actor calls) over the live workers, until none is left. The time
from the start to the last round is returned as ``lost``.

Fault tolerance: a shard whose worker dies (``ray.kill``, SIGKILL, a lost node)
or does not answer within ``engine.shard_timeout_s`` (a hung worker) is re-run on
a live worker, and the dead or slow worker is replaced when resources allow.
Because tasks are functions of (seed, t, index), a re-run shard gives the same
result, so no step is lost or applied twice.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

Shard = Tuple[int, int]   # the tasks [start, stop) of a meta-step


def shard_sizes(total: int, workers: int) -> List[Shard]:
    """Contiguous [start, stop) shards of ``range(total)`` over ``workers``."""
    bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(total), min(workers, total))])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


class ShardResult(NamedTuple):
    """What a worker returns for one shard (``TaskWorker.compute``)."""
    grad: Optional[np.ndarray]   # summed flat float64 gradient; None where an allreduce sent it to rank 0
    metrics: Dict[str, float]
    count: int                   # tasks in the shard
    compute: float               # seconds the worker computed


@dataclass(frozen=True)
class Failure:
    """Shards to re-run because of one failure, and the workers it names (to replace;
    none when the transport, not a worker, failed)."""
    shards: Tuple[Shard, ...]
    slots: Tuple[int, ...]
    reason: str

    @classmethod
    def timed_out(cls, slot: int, shard: Shard, step: int, seconds: float) -> "Failure":
        return cls((shard,), (slot,), f"did not return shard {shard} of step {step} within {seconds:g}s")

    @classmethod
    def died(cls, slot: int, shard: Shard, step: int, exc: BaseException) -> "Failure":
        return cls((shard,), (slot,), f"died during shard {shard} of step {step} ({type(exc).__name__})")


@dataclass
class Round:
    """One attempt at some shards: each came back (``results``) or failed."""
    results: Dict[Shard, ShardResult] = field(default_factory=dict)
    failures: List[Failure] = field(default_factory=list)
    sent: int = 0   # parameter bytes the round's calls carried


@dataclass
class StepRun:
    """Every shard's result, the parameter bytes all rounds sent, the seconds lost to failed rounds."""
    results: Dict[Shard, ShardResult] = field(default_factory=dict)
    sent: int = 0
    lost: float = 0.0


def run_shards(shards: Sequence[Shard], transport, retry, pool, params, step: int) -> StepRun:
    """The retry loop (module docstring). ``transport``/``retry``: ``Transport``s;
    ``pool``: a ``WorkerPool``; ``params``: the step's published ``Params``."""
    out, t0, todo = StepRun(), time.perf_counter(), list(shards)
    while todo:
        rnd = transport.run(pool.live(), params, step, todo)
        out.sent += rnd.sent
        for shard, result in rnd.results.items():
            if shard in out.results or shard not in todo:
                raise RuntimeError(f"engine: shard {shard} of step {step} came back twice")
            out.results[shard] = result
        todo = sorted(shard for failure in rnd.failures for shard in failure.shards)
        if todo:
            for failure in rnd.failures:
                pool.replace(failure.slots, failure.reason)
            transport.reset()   # after the replacement killed them: a hung worker would block it
            pool.ensure_live()
            transport, out.lost = retry, time.perf_counter() - t0
    return out


def sum_shards(results: Dict[Shard, ShardResult]) -> Tuple[torch.Tensor, Dict[str, float], int]:
    """(gradient sum, metric sums, task count) over the shards, summed in task order."""
    grad, metrics, count = None, {}, 0
    for shard in sorted(results):
        g, m, n, _ = results[shard]
        if g is not None:
            if grad is None:
                grad = np.array(g, copy=True)  # results may be read-only views of the object store
            else:
                grad += g
        for k, v in m.items():
            metrics[k] = metrics.get(k, 0.0) + v
        count += n
    return torch.from_numpy(grad), metrics, count
