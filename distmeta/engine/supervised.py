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
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from distmeta.engine.core import MetaCore, set_threads
from distmeta.engine.learner import Learner
from distmeta.errors import NonFiniteError


def make_engine(cfg, core: MetaCore):
    """In-process for ``engine.workers: 0``, else Ray task workers."""
    if cfg.engine.workers == 0:
        from distmeta.engine.local import LocalEngine

        return LocalEngine(core)
    from distmeta.engine.ray_engine import RayEngine

    return RayEngine(cfg, core)


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
        set_threads(cfg.engine.learner_num_cpus if cfg.engine.workers else omp_threads())
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
        return PlacementGroupFactory([learner] + [dict(worker) for _ in range(e.workers)], strategy=e.placement)

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

    def evaluate(self, split: str, episodes: Optional[int] = None, **task) -> Dict[str, Any]:
        """Mean and 95 % CI of the score over ``episodes`` tasks of ``split`` (``test``: the
        data's held-out split). ``task`` may set ways, shots, queries or inner_steps."""
        from distmeta.evaluation import evaluate

        split = self._split(split)
        flat = self.learner.flat_params() if self.learner else self.core.initial_flat_params()
        out = evaluate(self.core, flat, split, episodes or self.cfg.eval.final_episodes, **task)
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
