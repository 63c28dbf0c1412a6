"""How shards reach the workers and their results come back: one ``Transport``
interface, three implementations.

Contract: ``transport.run(workers, params, step, shards)`` runs each shard of
``shards`` once on the live ``workers`` (slot -> actor) and returns a ``Round``:
the results that came back and a ``Failure`` for every other shard (its worker
died, did not answer within ``engine.shard_timeout_s``, or the transport itself
could not run). An error raised by the user's code is raised, never retried.
``reset()`` drops whatever state names workers (called after failed workers were
replaced); ``close()`` releases everything. Retrying is not a transport's job
(``shards.run_shards``).

- ``ActorCalls``: one Ray actor call per shard, round-robin over the workers.
- ``CompiledGraphs``: latency. When the parameters are small (``engine.compiled_graph:
  auto``, at most 64 KiB, where an actor call's latency is a large part of the
  step), each worker runs a Ray compiled graph (``InputNode -> worker.compute``)
  whose shared-memory channels cost about a third of an actor call. One graph per
  worker, so a failure names its worker; any failure tears the graphs down and the
  step's missing shards go through ordinary actor calls; the graphs are rebuilt at
  the next step. A new graph's first round carries Ray's setup of it (sinusoid: 0.5 s
  on an idle 2-core machine, 4.5 s on one loaded 2.5x over), so each new graph first
  runs an empty round (``WARMUP_STEP``) within ``setup_timeout_s``: the shard timeout
  then measures only work, and a slow setup is never taken for a hung worker.
- ``Allreduce``: the workers sum their shard gradients with a collective allreduce
  (gloo, or nccl on GPUs) and only rank 0 returns the sum. A failed member blocks the
  whole group: every shard fails, every worker is replaced, and the transport stays
  inactive for the rest of the run (the engine falls back to learner aggregation).
"""
from __future__ import annotations

import logging
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, Sequence

import numpy as np
import torch

from distmeta.engine.ray_worker import WARMUP_STEP, CollectiveError
from distmeta.engine.shards import Failure, Round, Shard, ShardResult

log = logging.getLogger("distmeta.engine")

INLINE_PARAMS_BYTES = 64 * 1024  # below Ray's 100 KiB limit for arguments inlined in the task spec

Workers = Dict[int, Any]   # slot -> live actor


@dataclass(frozen=True)
class Params:
    """One step's flat parameters as the workers receive them."""
    array: np.ndarray
    arg: Any          # what an actor call passes: the array itself (inline) or its object-store ref
    published: int    # bytes put into the object store for the step
    per_call: int     # bytes each actor call carries inline

    @classmethod
    def publish(cls, flat_params: torch.Tensor) -> "Params":
        """Small parameter vectors travel inline with each task: ray.put plus a by-reference
        argument cost ~2-3 ms more per step than that on 2 cores (sinusoid MLP, 7 KB;
        benchmarks/README.md). Large ones go to the object store once, shared by all workers."""
        import ray

        array = flat_params.detach().cpu().numpy()  # numpy travels ~0.4 ms faster than a torch tensor
        if array.nbytes <= INLINE_PARAMS_BYTES:
            return cls(array, array, 0, array.nbytes)
        return cls(array, ray.put(array), array.nbytes, 0)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""


class Transport(ABC):
    """Runs shards on workers once (module docstring)."""
    name = "transport"

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s

    @abstractmethod
    def run(self, workers: Workers, params: Params, step: int, shards: Sequence[Shard]) -> Round:
        """Each shard once on ``workers``: its result or its failure."""

    def reset(self) -> None:
        """Forget state that names workers (after failed workers were replaced)."""

    def close(self) -> None:
        self.reset()


class ActorCalls(Transport):
    """One actor call per shard, round-robin over the live workers, one deadline for all."""
    name = "actor calls"

    def run(self, workers: Workers, params: Params, step: int, shards: Sequence[Shard]) -> Round:
        import ray

        slots = sorted(workers)
        inflight = {}   # ref -> (slot, shard)
        for i, shard in enumerate(shards):
            slot = slots[i % len(slots)]
            inflight[workers[slot].compute.remote(params.arg, step, *shard)] = (slot, shard)
        rnd = Round(sent=params.per_call * len(shards))
        deadline, remaining = time.monotonic() + self.timeout_s, list(inflight)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:  # stragglers: their shards are re-run elsewhere, their workers replaced
                rnd.failures += [Failure.timed_out(*inflight[ref], step, self.timeout_s) for ref in remaining]
                break
            self._collect(done[0], inflight[done[0]], step, rnd)
        return rnd

    @staticmethod
    def _collect(ref, where, step: int, rnd: Round) -> None:
        import ray
        from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError

        try:
            rnd.results[where[1]] = ShardResult(*ray.get(ref))
        except (RayActorError, WorkerCrashedError, ObjectLostError) as exc:
            rnd.failures.append(Failure.died(*where, step, exc))


class CompiledGraphs(Transport):
    """One compiled graph per live worker, rebuilt when the workers or shards change;
    ``setup_timeout_s`` bounds a new graph's empty first round."""
    name = "compiled graphs"

    def __init__(self, timeout_s: float, setup_timeout_s: float):
        super().__init__(timeout_s)
        self.setup_timeout_s = setup_timeout_s
        self._graphs: Dict[int, tuple] = {}   # slot -> (shard, compiled graph)
        self._key = None
        self.steps = 0                         # rounds that finished without a failure

    def _build(self, workers: Workers, params: Params, shards: Sequence[Shard]) -> Dict[int, tuple]:
        from ray.dag import InputNode

        slots = sorted(workers)
        key = tuple((s, workers[s], shard) for s, shard in zip(slots, shards))  # handles compare by actor id
        if key != self._key:
            self.reset()
            for s, shard in zip(slots, shards):
                with InputNode() as inp:
                    node = workers[s].compute.bind(inp[0], inp[1], *shard)
                self._graphs[s] = (shard, node.experimental_compile())
            self._key = key
            warmups = [graph.execute(params.array, WARMUP_STEP) for _, graph in self._graphs.values()]
            deadline = time.monotonic() + self.setup_timeout_s
            for ref in warmups:   # a timeout raises: the step falls back to actor calls
                ref.get(timeout=max(0.0, deadline - time.monotonic()))
        return self._graphs

    def run(self, workers: Workers, params: Params, step: int, shards: Sequence[Shard]) -> Round:
        try:
            refs = {slot: (shard, graph.execute(params.array, step))
                    for slot, (shard, graph) in self._build(workers, params, shards).items()}
        except Exception as exc:  # a worker died between steps, or compiled graphs are unavailable here
            log.warning("distmeta: compiled graphs unusable at step %d (%s: %s); using actor calls",
                        step, type(exc).__name__, _first_line(exc))
            return Round(failures=[Failure(tuple(shards), (), f"compiled graphs unusable at step {step}")])
        rnd = Round(sent=params.array.nbytes * len(refs))
        deadline = time.monotonic() + self.timeout_s
        for slot, (shard, ref) in refs.items():
            self._collect(ref, slot, shard, step, deadline, rnd)
        self.steps += not rnd.failures
        return rnd

    def _collect(self, ref, slot: int, shard: Shard, step: int, deadline: float, rnd: Round) -> None:
        from ray.exceptions import RayTaskError

        try:
            rnd.results[shard] = ShardResult(*ref.get(timeout=max(0.0, deadline - time.monotonic())))
        except RayTaskError:  # the user's code raised: as on the actor-call path, the run fails
            self.reset()
            raise
        except TimeoutError:
            rnd.failures.append(Failure.timed_out(slot, shard, step, self.timeout_s))
        except Exception as exc:
            rnd.failures.append(Failure.died(slot, shard, step, exc))

    def reset(self) -> None:
        graphs, self._graphs, self._key = self._graphs, {}, None
        for _, graph in graphs.values():
            try:
                graph.teardown()
            except Exception as exc:  # a graph whose actor died may already be gone
                log.debug("distmeta: compiled graph teardown: %s", exc)


class Allreduce(Transport):
    """The workers of one collective group sum their gradients; rank 0 returns the sum."""
    name = "allreduce"

    def __init__(self, timeout_s: float, workers: Workers, backend: str):
        import ray.util.collective as col

        super().__init__(timeout_s)
        self.group = f"distmeta-{uuid.uuid4().hex[:8]}"
        actors = [workers[s] for s in sorted(workers)]
        col.create_collective_group(actors, len(actors), list(range(len(actors))), backend=backend,
                                    group_name=self.group)
        self.active = True   # False once a member failed: the group is not rebuilt
        log.info("distmeta: gradients aggregated by %s allreduce over %d workers", backend, len(actors))

    def run(self, workers: Workers, params: Params, step: int, shards: Sequence[Shard]) -> Round:
        import ray
        from ray.exceptions import RayTaskError

        slots, end = sorted(workers), shards[-1][1]
        ranked = list(shards) + [(end, end)] * max(0, len(slots) - len(shards))  # every member joins the sum
        refs = [workers[s].compute_allreduce.remote(params.arg, step, a, b, self.group, rank)
                for rank, (s, (a, b)) in enumerate(zip(slots, ranked))]
        rnd = Round(sent=params.per_call * len(refs))
        try:
            results = ray.get(refs, timeout=self.timeout_s)
        except Exception as exc:  # a dead or hung member blocks the whole group
            if isinstance(exc, RayTaskError) and not isinstance(exc, CollectiveError):
                raise  # the user's code raised: as on the other paths, the run fails
            log.warning("distmeta: allreduce step %d failed (%s); rebuilding the workers and falling back "
                        "to learner aggregation", step, type(exc).__name__)
            self.active = False
            reason = f"left the collective group that failed at step {step} ({type(exc).__name__})"
            rnd.failures.append(Failure(tuple(shards), tuple(slots), reason))
            return rnd
        rnd.results = {shard: ShardResult(*r) for shard, r in zip(ranked, results) if shard[1] > shard[0]}
        return rnd
