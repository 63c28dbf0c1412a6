"""The supervised meta-learning methods (MAML and its variants, Reptile,
ProtoNets, Siamese networks) as one :class:`~distmeta.method.Method`.

One iteration is one meta-step t: the engine returns the summed per-task
gradients of the tasks ``0..meta_batch-1`` of step t (computed in-process or on
Ray task workers), and the learner applies their mean once,
    theta <- optimizer(theta, (1/B) sum_i g_i(theta; task_i(seed, t))).
A non-finite loss or gradient stops the run before the update.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from distmeta.engine.core import MetaCore, set_threads
from distmeta.engine.learner import Learner
from distmeta.errors import NonFiniteError


def make_engine(cfg, core: MetaCore):
    """In-process for ``engine.workers: 0``, Ray task workers for a count (always honoured);
    ``auto``: what ``choose_workers`` picks, said in one line on stderr."""
    workers, started = cfg.engine.workers, False
    if workers == "auto":
        workers, why, started = choose_workers(cfg, core)
        print(f"distmeta: engine.workers auto -> {workers}: {why}", file=sys.stderr, flush=True)
        cfg = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"workers": workers})})
        if workers:
            set_threads(cfg.engine.learner_num_cpus)
    if workers == 0:
        from distmeta.engine.local import LocalEngine

        return LocalEngine(core)
    from distmeta.engine.ray_engine import RayEngine

    engine = RayEngine(cfg, core)
    engine.started_ray = engine.started_ray or started   # auto connected to the cluster: close shuts it
    return engine


def measure_step_ms(core: MetaCore, meta_batch: int, threshold_ms: float) -> float:
    """Milliseconds of one in-process meta-gradient of ``meta_batch`` tasks (tasks of step 0 at the
    initial parameters, this process's threads): after an untimed warm-up call (its first-call costs
    can be 10x a step), the median of three calls, or the first alone when it is over 4x
    ``threshold_ms`` (an expensive step need not be timed again). The torch RNG is left as it
    was, so a run with ``auto`` is the run with the count it picks."""
    flat = core.initial_flat_params()
    times: List[float] = []
    with torch.random.fork_rng(devices=[]):
        core.shard_gradient(flat, 0, range(meta_batch))
        for _ in range(3):
            t0 = time.perf_counter()
            core.shard_gradient(flat, 0, range(meta_batch))
            times.append(1e3 * (time.perf_counter() - t0))
            if times[0] >= 4 * threshold_ms:
                return times[0]
    return sorted(times)[1]


def _running_ray():
    """The ``ray`` module when this process is connected to Ray, else None (never imports Ray)."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def workers_that_fit(e) -> Tuple[int, str]:
    """``(n, why)``: how many workers of ``engine.num_cpus`` CPUs (and ``num_gpus`` GPUs) fit: in the
    Ray cluster when Ray is up, else on this machine (what an embedded Ray gets)."""
    import os

    ray = _running_ray()
    if ray is not None:
        total = ray.cluster_resources()
        cpus, gpus, where = total.get("CPU", 0.0), total.get("GPU", 0.0), "the Ray cluster has"
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        gpus = torch.cuda.device_count() if e.num_gpus > 0 else 0
        where = "this machine has"
    fit = int(cpus / e.num_cpus + 1e-9) if e.num_cpus > 0 else 1 << 30
    if e.num_gpus > 0:
        fit = min(fit, int(gpus / e.num_gpus + 1e-9))
    has = f"{cpus:g} CPUs" + (f" and {gpus:g} GPUs" if e.num_gpus > 0 else "")
    per = f"{e.num_cpus:g} CPU" + (f" and {e.num_gpus:g} GPU" if e.num_gpus > 0 else "")
    return fit, f"{where} {has}: {fit} worker(s) of {per} fit"


def _in_placement_group() -> bool:
    """True inside a Tune trial (or any Ray task with a placement group)."""
    if _running_ray() is None:
        return False
    from ray.util.placement_group import get_current_placement_group

    return get_current_placement_group() is not None


def choose_workers(cfg, core: MetaCore) -> Tuple[int, str, bool]:
    """``engine.workers: auto`` as ``(count, why, started_ray)``. In-process (0) inside a Tune trial
    (its resources reserve no workers for auto), when fewer than 2 workers fit (one worker only adds
    the round trip to the same compute) and when an in-process meta-step costs less than
    ``engine.auto_step_ms``: below that, Ray's per-step round trip and the driver's busy-wait on it
    cost more than sharding saves (benchmarks/README.md, "engine.workers: auto"). Otherwise as many
    workers as fit. Ray is started only to count a cluster's CPUs, once the step proved expensive."""
    from distmeta.address import EMBEDDED, connect_ray, resolve_cluster_address

    e = cfg.engine
    if _in_placement_group():
        return 0, "inside a Tune trial, whose resources reserve no workers for auto: in-process", False
    running = _running_ray() is not None
    local = not running and resolve_cluster_address(e.address).mode == EMBEDDED
    if local or running:
        fit, fits = workers_that_fit(e)
        if fit < 2:
            return 0, f"{fits}, and one worker is never faster than in-process", False
    step_ms = measure_step_ms(core, cfg.optim.meta_batch, e.auto_step_ms)
    cost = f"an in-process meta-step of {cfg.optim.meta_batch} tasks takes {step_ms:.1f} ms"
    if step_ms < e.auto_step_ms:
        return 0, f"{cost} (< engine.auto_step_ms={e.auto_step_ms:g}, Ray's round trip would cost more " \
                  f"than sharding saves): in-process", False
    started = connect_ray(e.address) if not local else False   # a cluster: count its CPUs
    fit, fits = workers_that_fit(e)
    if fit < 2:
        if started:
            ray = sys.modules["ray"]
            ray.shutdown()
        return 0, f"{cost}, but {fits}, and one worker is never faster than in-process", False
    return fit, f"{cost} (>= engine.auto_step_ms={e.auto_step_ms:g}); {fits}", started


def held_out_split(datasets) -> str:
    """The split of the final evaluation: ``test`` when the data has one (synthetic tasks
    always do), else ``val``."""
    return "test" if ("test" in datasets or not datasets) else "val"


class SupervisedMethod:
    name = "supervised"
    work_unit = "tasks"

    def __init__(self, cfg, core: MetaCore, learner: Learner, engine=None):
        self.cfg, self.core, self.learner, self.engine = cfg, core, learner, engine
        kind = core.task_distribution("train").kind
        self.score_key = "accuracy" if kind == "classification" else "mse"
        self.higher_is_better = kind == "classification"
        self.progress_keys = list(core.algorithm.train_metrics)

    @classmethod
    def build(cls, cfg, engine_factory=None) -> "SupervisedMethod":
        in_process = cfg.engine.workers in (0, "auto")  # auto measures the in-process step first
        set_threads(omp_threads() if in_process else cfg.engine.learner_num_cpus)
        core = MetaCore(cfg)  # data and config problems surface here, before any actor starts
        for split in sorted({"val", held_out_split(core.datasets)}):
            core.task_distribution(split)  # e.g. task.ways beyond a held-out split's classes: fail now
        learner = Learner(core)
        return cls(cfg, core, learner, (engine_factory or make_engine)(cfg, core))

    @classmethod
    def from_checkpoint(cls, cfg, state: Dict[str, Any]) -> "SupervisedMethod":
        """For evaluation only: the checkpoint's parameters, no engine."""
        from distmeta.engine.run_dir import CheckpointError

        method = cls(cfg, MetaCore(cfg), None)
        try:
            method.core.model.load_state_dict(state["model"])
        except (RuntimeError, KeyError) as exc:
            first = " ".join(str(exc).split())[:240]
            raise CheckpointError(f"checkpoint parameters do not fit the model of its config ({first})") from None
        return method

    @classmethod
    def resources(cls, cfg):
        """One bundle for the learner, one per task worker, in the config's strategy."""
        from ray.tune import PlacementGroupFactory

        e = cfg.engine
        learner = {"CPU": e.learner_num_cpus, **({"GPU": e.learner_num_gpus} if e.learner_num_gpus else {})}
        worker = {"CPU": e.num_cpus, **({"GPU": e.num_gpus} if e.num_gpus else {})}
        workers = e.workers if e.workers != "auto" else 0   # auto runs a Tune trial in-process
        return PlacementGroupFactory([learner] + [dict(worker) for _ in range(workers)], strategy=e.placement)

    @property
    def iteration(self) -> int:
        return self.learner.step

    @property
    def total(self) -> int:
        return self.cfg.optim.steps

    def done(self) -> bool:
        return self.learner.step >= self.cfg.optim.steps

    def step(self) -> Dict[str, float]:
        t, learner = self.learner.step, self.learner
        t0 = time.perf_counter()
        grad_sum, metric_sums, count, timing = self.engine.meta_gradient(learner.flat_params(), t,
                                                                         self.cfg.optim.meta_batch)
        metrics = {k: v / count for k, v in metric_sums.items()}
        if not math.isfinite(metrics.get("loss", 0.0)) or not torch.isfinite(grad_sum).all():
            raise NonFiniteError(f"non-finite loss at meta-step {t} (loss={metrics.get('loss')}); "
                                f"stopped before applying it")
        learner.apply(grad_sum / count)
        step_time = time.perf_counter() - t0
        times = {"step": step_time, **timing}
        if self.engine.splits_time:  # the learner's own share of a Ray step
            times["learner"] = max(step_time - sum(timing.values()), 0.0)
        return {**metrics, "lr": learner.learning_rate(t), "work": float(count),
                **{f"time_{k}_s": v for k, v in times.items()}}

    def _split(self, split: str) -> str:
        return held_out_split(self.core.datasets) if split == "test" else split

    def evaluate(self, split: str, episodes: Optional[int] = None, test_time_augment: Optional[int] = None,
                 **task) -> Dict[str, Any]:
        """Mean and 95 % CI of the score over ``episodes`` tasks of ``split`` (``test``: the
        data's held-out split). ``task`` may set ways, shots, queries or inner_steps. The test
        split uses ``eval.test_time_augment`` copies, validation none (periodic evaluation costs
        what it did); ``test_time_augment`` sets the copies for either split."""
        from distmeta.evaluation import evaluate

        copies = int(test_time_augment) if test_time_augment is not None else (
            self.cfg.eval.test_time_augment if split == "test" else 0)
        split = self._split(split)
        flat = self.learner.flat_params() if self.learner else self.core.initial_flat_params()
        out = evaluate(self.core, flat, split, episodes or self.cfg.eval.final_episodes, **task,
                       augment_copies=copies, augment_ranges=self.cfg.task.augment,
                       seed=self.cfg.seed)
        return {**out, "split": split}

    def eval_setting(self, ways=None, shots=None, inner_steps=None) -> Dict[str, Any]:
        """What an evaluation adapted with: ways and shots, and the inner steps where the method takes any."""
        cfg, algo = self.cfg, self.core.algorithm
        setting: Dict[str, Any] = {"algorithm": cfg.algorithm.name, "shots": shots or cfg.task.shots}
        if self.score_key == "accuracy":
            setting["ways"] = ways or cfg.task.ways
        if algo.eval_inner_steps() is not None:
            setting["inner_steps"] = inner_steps if inner_steps is not None else algo.eval_inner_steps()
        return setting

    def facts(self) -> Dict[str, Any]:
        """Where the task workers run (Tune tests assert they share the trial's placement group)."""
        pg, info = getattr(self.engine, "pg", None), getattr(self.engine, "worker_info", None)
        if pg is None or not info:
            return {}
        return {"placement_group": pg.id.hex(),
                "workers_in_trial_group": float(all(i.get("pg") == pg.id.hex() for i in info))}

    def state(self) -> Dict[str, Any]:
        train = self.core.task_distribution("train")
        return {**self.learner.state_dict(),
                "task_shape": {"input_shape": list(train.input_shape), "output_dim": train.output_dim,
                               "kind": train.kind}}

    def load(self, state: Dict[str, Any]) -> None:
        self.learner.load_state_dict(state)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def artifacts(self, run_dir: Path, rows: List[Dict[str, Any]]) -> None:
        from distmeta.plots import plot_sinusoid_fits, plot_step_time

        plot_step_time(rows, run_dir / "step_time.png", title=self.cfg.name)
        if self.score_key == "mse":
            plot_sinusoid_fits(self.core, self.learner.flat_params(), run_dir / "sinusoid_fits.png")


def omp_threads() -> Optional[int]:
    """``$OMP_NUM_THREADS`` when the user set it (a shared machine), else None (all CPUs we own)."""
    import os

    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None
