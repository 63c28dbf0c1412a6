"""The Ray engine's workers: a placement group with one bundle per worker, the
actors in it, and their replacement.

Contract: ``WorkerPool(engine_cfg, worker_cls, worker_args)`` returns once
``engine.workers`` actors of ``worker_cls(*worker_args)`` are up, one per bundle
(inside a Tune trial, in the trial's own placement group after its learner bundle),
or raises ``DistmetaError`` at once when no node could ever hold a worker, or after
``engine.placement_timeout_s`` when the cluster has no room. ``live()`` gives the
live workers by slot (bundle index). ``replace(slots, reason)`` counts one failure
(at most ``engine.max_worker_restarts``, then ``DistmetaError``), kills the named
workers and places a replacement for each; replacements join ``live()`` once up
(``adopt``), so a step never waits for one unless no worker is left
(``ensure_live``). ``close()`` kills every actor and removes the group it created.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Sequence, Tuple

from distmeta.errors import DistmetaError

log = logging.getLogger("distmeta.engine")


class WorkerPool:
    def __init__(self, engine_cfg, worker_cls, worker_args: Tuple):
        import ray
        from ray.util.placement_group import get_current_placement_group

        self.e, self.worker_args = engine_cfg, worker_args
        self.restarts = 0
        self.resources = {"CPU": self.e.num_cpus, **({"GPU": self.e.num_gpus} if self.e.num_gpus else {})}
        self.owned_pg = None
        self.pg = get_current_placement_group()   # inside a Tune trial: reuse the trial's group
        self.bundle_offset = 1 if self.pg is not None else 0  # the trial's bundle 0 is the learner
        if self.pg is None:
            self._check_feasible()
            self.pg = self.owned_pg = self._create_placement_group()
        self.actor_cls = ray.remote(worker_cls)
        self.slots: Dict[int, Any] = {i: self._spawn(i) for i in range(self.e.workers)}  # slot -> live actor
        self._pending: List[Tuple[int, Any, Any]] = []   # (slot, actor, ready ref) replacements being placed
        try:
            self.worker_info = ray.get([a.ready.remote() for a in self.slots.values()])
        except BaseException:   # e.g. the user's code failed the warm-up: free the group, then fail
            self.close()
            raise
        log.info("distmeta: %d workers on %d node(s) (%s)", len(self.worker_info),
                 len({info["node"] for info in self.worker_info}),
                 ", ".join(f"pid {i['pid']} {i['device']}" for i in self.worker_info))

    # -- resources -----------------------------------------------------------
    def _check_feasible(self) -> None:
        """Fail at once when the workers can never fit: an embedded Ray (no autoscaler)
        smaller than all workers together, or a cluster where no node could ever hold one
        worker and no autoscaler could add one; otherwise the placement group wait applies."""
        import ray

        from distmeta.address import EMBEDDED, resolve_cluster_address

        if resolve_cluster_address(self.e.address).mode == EMBEDDED:
            total = ray.cluster_resources()
            short = {k: v * self.e.workers for k, v in self.resources.items()
                     if v * self.e.workers > total.get(k, 0) + 1e-9}
            if short:
                raise DistmetaError(
                    f"engine: {self.e.workers} workers x {self.resources} need {short}, but this machine's "
                    f"embedded Ray has {({k: total.get(k, 0) for k in short})}; lower engine.workers or "
                    f"engine.num_cpus, or join a cluster with --address")
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        fits = any(all(n["Resources"].get(k, 0) >= v for k, v in self.resources.items()) for n in nodes)
        if not fits and not _autoscaler_could_fit(self.resources):
            have = ", ".join(f"{{CPU: {n['Resources'].get('CPU', 0):g}, GPU: {n['Resources'].get('GPU', 0):g}}}"
                             for n in nodes)
            raise DistmetaError(f"engine: no node can hold a worker needing {self.resources} "
                                f"(nodes have {have}); lower engine.num_cpus/num_gpus")

    def _create_placement_group(self):
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        e = self.e
        pg = placement_group([dict(self.resources) for _ in range(e.workers)], strategy=e.placement)
        ready_ref, deadline = pg.ready(), time.monotonic() + e.placement_timeout_s
        ready, _ = ray.wait([ready_ref], timeout=min(1.0, e.placement_timeout_s / 2))
        while not ready and time.monotonic() < deadline:
            log.warning("distmeta: waiting for resources (%.0fs left of engine.placement_timeout_s): %d workers x "
                        "%s (%s) do not fit in what the cluster has free now, %s; an autoscaler may still add "
                        "nodes", deadline - time.monotonic(), e.workers, self.resources, e.placement,
                        _free_resources())
            ready, _ = ray.wait([ready_ref], timeout=max(0.0, min(30.0, deadline - time.monotonic())))
        if not ready:
            remove_placement_group(pg)
            raise DistmetaError(
                f"engine: {e.workers} workers x {self.resources} ({e.placement}) could not be placed "
                f"within engine.placement_timeout_s={e.placement_timeout_s:g}s; free: {_free_resources()}")
        return pg

    # -- workers -------------------------------------------------------------
    def _spawn(self, slot: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(placement_group=self.pg,
                                                    placement_group_bundle_index=slot + self.bundle_offset)
        return self.actor_cls.options(num_cpus=self.e.num_cpus, num_gpus=self.e.num_gpus, max_restarts=0,
                                      scheduling_strategy=strategy).remote(*self.worker_args)

    def live(self) -> Dict[int, Any]:
        """The live workers, slot -> actor (a copy)."""
        return dict(self.slots)

    def __len__(self) -> int:
        return len(self.slots)

    def replace(self, slots: Sequence[int], reason: str) -> None:
        """One failure of the live workers among ``slots``: count it, kill them, place replacements."""
        live = [slot for slot in slots if slot in self.slots]   # a worker is replaced once
        if not live:
            return
        self.restarts += 1
        if self.restarts > self.e.max_worker_restarts:
            raise DistmetaError(f"engine: more than engine.max_worker_restarts="
                                f"{self.e.max_worker_restarts} worker failures; last: {reason}")
        for slot in live:
            _kill(self.slots.pop(slot))
            log.warning("distmeta: worker %d %s; its shard is re-run on a live worker and a replacement "
                        "is being placed", slot, reason)
            new = self._spawn(slot)
            self._pending.append((slot, new, new.ready.remote()))

    def adopt(self, wait: float = 0.0) -> None:
        """Make the replacements that are up (within ``wait`` seconds each) live workers."""
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

    def ensure_live(self) -> None:
        """With no live worker, wait up to ``engine.placement_timeout_s`` for replacements."""
        if not self.slots:
            self.adopt(wait=self.e.placement_timeout_s)
            if not self.slots:
                raise DistmetaError("engine: all workers lost and no replacement could be placed")

    def close(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for actor in list(self.slots.values()) + [a for _, a, _ in self._pending]:
            _kill(actor)
        self.slots, self._pending = {}, []
        if self.owned_pg is not None:
            try:
                remove_placement_group(self.owned_pg)
            except Exception:
                pass


def _kill(actor) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:
        pass


def _free_resources() -> Dict[str, float]:
    """The cluster's free CPUs, GPUs and memory (GB), for messages."""
    import ray

    free = ray.available_resources()
    out = {k: round(free[k], 2) for k in ("CPU", "GPU") if k in free}
    if "memory" in free:
        out["memory_GB"] = round(free["memory"] / 1e9, 1)
    return out


def _autoscaler_could_fit(resources: Dict[str, float]) -> bool:
    """True when the cluster's autoscaler config has a node type that could hold ``resources``.
    Ray has no public API for the autoscaler's node types, so this reads ``ray._private.state``
    (pinned by tests/test_ray_engine.py::test_worker_larger_than_any_node_fails_fast); any
    error reads as "no"."""
    try:
        import ray._private.state as state

        config = state.state.get_cluster_config()
    except Exception:
        return False
    if config is None:
        return False
    return any(group.max_count != 0 and all(group.resources.get(k, 0) >= v for k, v in resources.items())
               for group in config.node_group_configs)
