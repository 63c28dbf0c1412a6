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

Latency: when the parameters are small (``engine.compiled_graph: auto``, at most
64 KiB, where an actor call's latency is a large part of the step), each worker
runs a Ray compiled graph (``InputNode -> worker.compute``) whose shared-memory
channels cost about a third of an actor call. One graph per worker, so a failure
names its worker; any failure tears the graphs down and the step's missing shards
go through ordinary actor calls, as below; the graphs are rebuilt at the next step.

Fault tolerance: a shard whose worker dies (``ray.kill``, SIGKILL, a lost node)
or does not answer within ``engine.shard_timeout_s`` (a hung worker) is re-run on
a live worker, and the dead or slow worker is replaced when resources allow.
Because tasks are functions of (seed, t, index), a re-run shard gives the same
result, so no step is lost or applied twice.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from distmeta.address import connect_ray
from distmeta.engine.prefetch import TaskPrefetcher
from distmeta.errors import DistmetaError

log = logging.getLogger("distmeta.engine")


def _as_tensor(flat: np.ndarray) -> torch.Tensor:
    """A torch view of parameters received from the learner (copied when Ray handed
    over a read-only view of the object store)."""
    return torch.from_numpy(flat if flat.flags.writeable else np.array(flat, copy=True))


INLINE_PARAMS_BYTES = 64 * 1024  # below Ray's 100 KiB limit for arguments inlined in the task spec


def shard_sizes(total: int, workers: int) -> List[Tuple[int, int]]:
    """Contiguous [start, stop) shards of ``range(total)`` over ``workers``."""
    bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(total), min(workers, total))])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


class CollectiveError(RuntimeError):
    """A worker's allreduce failed (a member died or left): the group must be rebuilt."""


def step_timing(wall: float, computes: Sequence[float], lost: float = 0.0) -> Dict[str, float]:
    """Split an engine step's ``wall`` seconds into compute / wait / transfer (module
    docstring) from the shards' compute seconds (at least one) and the time ``lost`` to
    failed attempts."""
    mean = sum(computes) / len(computes)
    transfer = max(wall - lost - max(computes), 0.0)
    return {"compute": mean, "wait": max(wall - mean - transfer, 0.0), "transfer": transfer}


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

    def ready(self) -> Dict[str, Any]:
        import ray
        from ray.util.placement_group import get_current_placement_group

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

    def inject_fault(self, step: int, after_tasks: int, mode: str) -> None:
        """Test hook: at meta-step ``step``, after ``after_tasks`` tasks of a shard,
        die by ``sigkill`` (the process), ``ray_kill`` (this actor) or ``hang`` (SIGSTOP), or
        ``raise`` an error as the user's code would."""
        import signal

        def hook(t, k):
            if t == step and k == after_tasks:
                if mode == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                elif mode == "ray_kill":
                    import ray

                    ray.kill(ray.get_runtime_context().current_actor)
                    time.sleep(60)
                elif mode == "hang":
                    os.kill(os.getpid(), signal.SIGSTOP)
                elif mode == "raise":
                    raise ValueError(f"injected fault in meta-step {t}")

        self.core.fault_hook = hook


class RayEngine:
    def __init__(self, cfg, core, fault_plan: Optional[Dict[int, Tuple[int, int, str]]] = None):
        import ray
        from ray.util.placement_group import get_current_placement_group

        self.cfg, self.core, e = cfg, core, cfg.engine
        self.started_ray = connect_ray(e.address)
        self.restarts = 0
        self.bytes_last_step = 0
        self._pending: List[Tuple[Any, Any]] = []  # (actor, ready ref) replacements being placed
        self.owned_pg = None
        self.pg = get_current_placement_group()   # inside a Tune trial: reuse the trial's group
        self.bundle_offset = 1 if self.pg is not None else 0  # the trial's bundle 0 is the learner
        self.worker_resources = {"CPU": e.num_cpus, **({"GPU": e.num_gpus} if e.num_gpus else {})}
        if self.pg is None:
            self._check_feasible()
            self.pg = self._create_placement_group()
            self.owned_pg = self.pg
        self.actor_cls = ray.remote(TaskWorker)
        self.datasets_ref = ray.put(core.datasets)   # once: workers on a node read the arrays zero-copy
        self.config = cfg.to_dict()
        self.registrations = _shippable_registrations()
        self.slots: Dict[int, Any] = {}              # bundle index -> live actor
        for i in range(e.workers):
            self.slots[i] = self._spawn(i)
        infos = ray.get([a.ready.remote() for a in self.slots.values()])
        nodes = len({info["node"] for info in infos})
        log.info("distmeta: %d workers on %d node(s) (%s)", len(infos), nodes,
                 ", ".join(f"pid {i['pid']} {i['device']}" for i in infos))
        self.worker_info = infos
        numel = core.initial_flat_params().numel()
        grad_mb = numel * 8 / 1e6   # gradients travel as float64 sums
        self.allreduce = (e.allreduce_threshold_mb > 0 and grad_mb >= e.allreduce_threshold_mb
                          and e.workers > 1)
        self.group = None
        if self.allreduce:
            self._create_group()
        param_bytes = numel * torch.finfo(core.dtype).bits // 8
        self.compiled = not self.allreduce and (
            e.compiled_graph == "always" or (e.compiled_graph == "auto" and param_bytes <= INLINE_PARAMS_BYTES))
        self._graphs: Dict[int, Tuple[Tuple[int, int], Any]] = {}  # slot -> (shard, compiled graph)
        self._graphs_key = None
        self.compiled_steps = 0                                     # steps finished on the compiled path
        for slot, (step, after, mode) in (fault_plan or {}).items():
            ray.get(self.slots[slot].inject_fault.remote(step, after, mode))

    # -- resources -----------------------------------------------------------
    def _check_feasible(self) -> None:
        """Fail at once when no node could ever hold one worker (and no autoscaler
        could add one); otherwise the placement group wait below applies."""
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        fits = any(all(n["Resources"].get(k, 0) >= v for k, v in self.worker_resources.items()) for n in nodes)
        if not fits and not _autoscaler_could_fit(self.worker_resources):
            have = ", ".join(f"{{CPU: {n['Resources'].get('CPU', 0):g}, GPU: {n['Resources'].get('GPU', 0):g}}}"
                             for n in nodes)
            raise DistmetaError(f"engine: no node can hold a worker needing {self.worker_resources} "
                                f"(nodes have {have}); lower engine.num_cpus/num_gpus")

    def _create_placement_group(self):
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        e = self.cfg.engine
        pg = placement_group([dict(self.worker_resources) for _ in range(e.workers)], strategy=e.placement)
        ready_ref, deadline = pg.ready(), time.monotonic() + e.placement_timeout_s
        ready, _ = ray.wait([ready_ref], timeout=min(1.0, e.placement_timeout_s / 2))
        while not ready and time.monotonic() < deadline:
            log.warning("distmeta: waiting for resources (%.0fs left of engine.placement_timeout_s): %d workers x "
                        "%s (%s) do not fit in what the cluster has free now, %s; an autoscaler may still add "
                        "nodes", deadline - time.monotonic(), e.workers, self.worker_resources, e.placement,
                        _free_resources())
            ready, _ = ray.wait([ready_ref], timeout=max(0.0, min(30.0, deadline - time.monotonic())))
        if not ready:
            remove_placement_group(pg)
            raise DistmetaError(
                f"engine: {e.workers} workers x {self.worker_resources} ({e.placement}) could not be placed "
                f"within engine.placement_timeout_s={e.placement_timeout_s:g}s; free: {_free_resources()}")
        return pg

    def _spawn(self, slot: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        e = self.cfg.engine
        strategy = PlacementGroupSchedulingStrategy(placement_group=self.pg,
                                                    placement_group_bundle_index=slot + self.bundle_offset)
        return self.actor_cls.options(num_cpus=e.num_cpus, num_gpus=e.num_gpus, max_restarts=0,
                                      scheduling_strategy=strategy).remote(self.config, self.datasets_ref,
                                                                           e.num_cpus, self.registrations)

    def _create_group(self) -> None:
        import uuid

        import ray.util.collective as col

        backend = "nccl" if self.cfg.engine.num_gpus > 0 else "gloo"
        self.group = f"distmeta-{uuid.uuid4().hex[:8]}"
        actors = [self.slots[s] for s in sorted(self.slots)]
        col.create_collective_group(actors, len(actors), list(range(len(actors))), backend=backend,
                                    group_name=self.group)
        log.info("distmeta: gradients aggregated by %s allreduce over %d workers", backend, len(actors))

    def _allreduce_step(self, params_ref, step: int, meta_batch: int):
        """One step on the collective path; None when a member failed (the caller
        falls back to learner aggregation for the rest of the run)."""
        import ray

        slots = sorted(self.slots)
        bounds = shard_sizes(meta_batch, len(slots)) + [(meta_batch, meta_batch)] * max(0, len(slots) - meta_batch)
        refs = [self.slots[s].compute_allreduce.remote(params_ref, step, a, b, self.group, rank)
                for rank, (s, (a, b)) in enumerate(zip(slots, bounds))]
        from ray.exceptions import RayTaskError

        try:
            results = ray.get(refs, timeout=self.cfg.engine.shard_timeout_s)
        except Exception as exc:  # a dead or hung member blocks the whole group
            if isinstance(exc, RayTaskError) and not isinstance(exc, CollectiveError):
                raise  # the user's code raised: as on the other paths, the run fails
            log.warning("distmeta: allreduce step %d failed (%s); rebuilding the workers and falling back "
                        "to learner aggregation", step, type(exc).__name__)
            self.allreduce = False
            self._count_restart(f"collective group failed at step {step} ({type(exc).__name__})")
            for slot in list(self.slots):   # one failure: the whole group is rebuilt at once
                self._replace(slot, "left with the failed collective group", count=False)
            self._adopt_ready_replacements(wait=self.cfg.engine.placement_timeout_s)
            return None
        grad = torch.from_numpy(np.array(results[0][0], copy=True))
        metrics: Dict[str, float] = {}
        for _, m, _, _ in results:
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + v
        count = sum(r[2] for r in results)
        return grad, metrics, count, [r[3] for r in results if r[2]]

    # -- compiled graphs -------------------------------------------------------------
    def _compiled_graphs(self, meta_batch: int) -> Dict[int, Tuple[Tuple[int, int], Any]]:
        """One compiled graph per live worker, for the current workers and shards."""
        from ray.dag import InputNode

        slots = sorted(self.slots)
        shards = shard_sizes(meta_batch, len(slots))
        key = tuple((s, self.slots[s]._actor_id.hex(), shard) for s, shard in zip(slots, shards))
        if key != self._graphs_key:
            self._teardown_graphs()
            for s, shard in zip(slots, shards):
                with InputNode() as inp:
                    node = self.slots[s].compute.bind(inp[0], inp[1], *shard)
                self._graphs[s] = (shard, node.experimental_compile())
            self._graphs_key = key
        return self._graphs

    def _teardown_graphs(self) -> None:
        graphs, self._graphs, self._graphs_key = self._graphs, {}, None
        for _, graph in graphs.values():
            try:
                graph.teardown()
            except Exception as exc:  # a graph whose actor died may already be gone
                log.debug("distmeta: compiled graph teardown: %s", exc)

    def _compiled_step(self, flat_np: np.ndarray, step: int, meta_batch: int):
        """Run step ``step`` on the compiled graphs. Returns (results by shard, shards still to
        run): the failed shards, after replacing their workers; None when the graphs could not
        be used at all this step (the caller runs every shard through actor calls)."""
        from ray.exceptions import RayTaskError

        try:
            graphs = self._compiled_graphs(meta_batch)
            refs = {slot: (shard, graph.execute(flat_np, step)) for slot, (shard, graph) in graphs.items()}
        except Exception as exc:  # a worker died between steps, or compiled graphs are unavailable here
            log.warning("distmeta: compiled graphs unusable at step %d (%s: %s); using actor calls",
                        step, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            self._teardown_graphs()
            return {}, None
        deadline = time.monotonic() + self.cfg.engine.shard_timeout_s
        results, failed = {}, []
        for slot, (shard, ref) in refs.items():
            try:
                results[shard] = ref.get(timeout=max(0.0, deadline - time.monotonic()))
            except RayTaskError:  # the user's code raised: as on the actor-call path, the run fails
                self._teardown_graphs()
                raise
            except TimeoutError:
                failed.append((slot, shard, f"did not return shard {shard} of step {step} within "
                                            f"{self.cfg.engine.shard_timeout_s:g}s"))
            except Exception as exc:
                failed.append((slot, shard, f"died during shard {shard} of step {step} ({type(exc).__name__})"))
        if failed:
            for slot, _, reason in failed:
                if slot in self.slots:
                    self._replace(slot, reason)   # kills it first: a hung actor would block teardown
            self._teardown_graphs()               # frees the live workers for ordinary actor calls
        else:
            self.compiled_steps += 1
        return results, [shard for _, shard, _ in failed]

    # -- worker pool -------------------------------------------------------------
    def _count_restart(self, reason: str) -> None:
        self.restarts += 1
        if self.restarts > self.cfg.engine.max_worker_restarts:
            raise DistmetaError(f"engine: more than engine.max_worker_restarts="
                                f"{self.cfg.engine.max_worker_restarts} worker failures; last: {reason}")

    def _replace(self, slot: int, reason: str, count: bool = True) -> None:
        import ray

        if count:
            self._count_restart(reason)
        actor = self.slots.pop(slot)
        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            pass
        log.warning("distmeta: worker %d %s; its shard is re-run on a live worker and a replacement "
                    "is being placed", slot, reason)
        new = self._spawn(slot)
        self._pending.append((slot, new, new.ready.remote()))

    def _adopt_ready_replacements(self, wait: float = 0.0) -> None:
        import ray

        still = []
        for slot, actor, ref in self._pending:
            done, _ = ray.wait([ref], timeout=wait)
            if done:
                try:
                    ray.get(ref)
                    self.slots[slot] = actor
                    log.warning("distmeta: replacement worker %d is up", slot)
                    continue
                except Exception as exc:  # the replacement died too
                    log.warning("distmeta: replacement worker %d failed: %s", slot, exc)
                    actor = self._spawn(slot)
                    ref = actor.ready.remote()
            still.append((slot, actor, ref))
        self._pending = still

    def live_workers(self) -> int:
        return len(self.slots)

    # -- one meta-step ---------------------------------------------------------------
    def meta_gradient(self, flat_params: torch.Tensor, step: int, meta_batch: int):
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, WorkerCrashedError, ObjectLostError

        t0 = time.perf_counter()
        self._adopt_ready_replacements()
        if not self.slots:
            self._adopt_ready_replacements(wait=self.cfg.engine.placement_timeout_s)
            if not self.slots:
                raise DistmetaError("engine: no live worker and no replacement could be placed")
        # Small parameter vectors travel inline with each task: ray.put plus a by-reference
        # argument cost ~2-3 ms more per step than that on 2 cores (sinusoid MLP, 7 KB;
        # benchmarks/README.md). Large ones go to the object store once, shared by all workers.
        flat_np = flat_params.detach().cpu().numpy()  # numpy travels ~0.4 ms faster than a torch tensor
        param_bytes = flat_np.nbytes
        by_value = param_bytes <= INLINE_PARAMS_BYTES
        params_arg = flat_np if by_value else ray.put(flat_np)
        params_sent = 0 if by_value else param_bytes
        if self.allreduce:
            out = self._allreduce_step(params_arg, step, meta_batch)
            if out is not None:
                grad, metrics, count, computes = out
                wall = time.perf_counter() - t0
                self.bytes_last_step = params_sent + (param_bytes * len(self.slots) if by_value else 0) + grad.numel() * 8
                return grad, metrics, count, step_timing(wall, computes)
        todo, results = None, {}
        t_round = t0   # start of the latest round of shards; earlier rounds' failures are lost time
        if self.compiled:
            results, todo = self._compiled_step(flat_np, step, meta_batch)
            if todo:
                t_round = time.perf_counter()
            params_sent += param_bytes * (len(results) + len(todo or []))
            if todo and not self.slots:
                self._adopt_ready_replacements(wait=self.cfg.engine.placement_timeout_s)
                if not self.slots:
                    raise DistmetaError("engine: all workers lost and no replacement could be placed")
        if todo is None:
            todo = shard_sizes(meta_batch, len(self.slots))
        while todo:
            slots = sorted(self.slots)
            inflight = {}
            for i, shard in enumerate(todo):
                slot = slots[i % len(slots)]
                ref = self.slots[slot].compute.remote(params_arg, step, *shard)
                params_sent += param_bytes if by_value else 0
                inflight[ref] = (slot, shard)
            todo = []
            deadline = time.monotonic() + self.cfg.engine.shard_timeout_s
            remaining = list(inflight)
            while remaining:
                done, remaining = ray.wait(remaining, num_returns=1,
                                           timeout=max(0.0, deadline - time.monotonic()))
                if not done:  # stragglers: re-run their shards elsewhere, replace the workers
                    for ref in remaining:
                        slot, shard = inflight[ref]
                        if slot in self.slots:
                            self._replace(slot, f"did not return shard {shard} of step {step} within "
                                                f"{self.cfg.engine.shard_timeout_s:g}s")
                        todo.append(shard)
                    break
                ref = done[0]
                slot, shard = inflight[ref]
                try:
                    results[shard] = ray.get(ref)
                except (RayActorError, WorkerCrashedError, ObjectLostError) as exc:
                    if slot in self.slots:
                        self._replace(slot, f"died during shard {shard} of step {step} ({type(exc).__name__})")
                    todo.append(shard)
            if todo and not self.slots:
                self._adopt_ready_replacements(wait=self.cfg.engine.placement_timeout_s)
                if not self.slots:
                    raise DistmetaError("engine: all workers lost and no replacement could be placed")
            if todo:
                t_round = time.perf_counter()
        grad, metrics, count = None, {}, 0
        for shard in sorted(results):
            g, m, n, seconds = results[shard]
            if grad is None:
                grad = np.array(g, copy=True)  # results may be read-only views of the object store
            else:
                grad += g
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + v
            count += n
        wall = time.perf_counter() - t0
        self.bytes_last_step = params_sent + sum(r[0].nbytes for r in results.values())
        computes = [r[3] for r in results.values()]
        return torch.from_numpy(grad), metrics, count, step_timing(wall, computes, lost=t_round - t0)

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        if not ray.is_initialized():
            return
        self._teardown_graphs()
        for actor in list(self.slots.values()) + [a for _, a, _ in self._pending]:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.slots, self._pending = {}, []
        if self.owned_pg is not None:
            try:
                remove_placement_group(self.owned_pg)
            except Exception:
                pass
        if self.started_ray:
            ray.shutdown()


def _shippable_registrations() -> Dict[str, Dict[str, Any]]:
    """The user's registry entries, pickled by value so that workers that cannot
    import the user's script or test module still get them."""
    import sys

    from ray import cloudpickle

    from distmeta.registry import user_registrations

    snapshot = user_registrations()
    for entries in snapshot.values():
        for obj in entries.values():
            module = sys.modules.get(getattr(obj, "__module__", ""), None)
            if module is not None and module.__name__ != "__main__":
                cloudpickle.register_pickle_by_value(module)
    return snapshot


def _free_resources() -> Dict[str, float]:
    """The cluster's free CPUs, GPUs and memory (GB), for messages."""
    import ray

    free = ray.available_resources()
    out = {k: round(free[k], 2) for k in ("CPU", "GPU") if k in free}
    if "memory" in free:
        out["memory_GB"] = round(free["memory"] / 1e9, 1)
    return out


def _autoscaler_could_fit(resources: Dict[str, float]) -> bool:
    """True when the cluster's autoscaler config has a node type that could hold ``resources``."""
    try:
        import ray._private.state as state

        config = state.state.get_cluster_config()
    except Exception:
        return False
    if config is None:
        return False
    return any(group.max_count != 0 and all(group.resources.get(k, 0) >= v for k, v in resources.items())
               for group in config.node_group_configs)
