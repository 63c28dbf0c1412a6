"""MAML-RL as a :class:`distmeta.method.Method`: one iteration is one ``algo.train()`` of the
RLlib Algorithm :class:`distmeta.rl.maml_algorithm.MAMLRL`.

- ``build(cfg)``: ``MAMLRLConfig.from_distmeta(cfg.rl, cfg.seed, train_tasks)``, where the train
  tasks come from ``task_splits(env, rl.train_tasks, ..., rl.task_seed)`` (none: fresh tasks).
- ``step()``: ``{"work": env steps of the iteration, "env_steps": total, "pre_adapt_return",
  "post_adapt_return", "env_steps_per_s", ...}``; when the budget is spent (``done()``:
  env steps >= ``rl.env_steps``) and ``rl.baselines`` is set, the same-run baselines are trained
  for the same number of iterations (:meth:`finish`).
- ``evaluate(split, episodes)``: ``episodes`` validation ("val") or test ("test") tasks; per task
  the mean episode return after 0..K inner steps (K = max(eval_inner_steps, inner_steps));
  ``mean_return`` after ``inner_steps`` steps, ``ci95``, ``mean_return_by_inner_steps``; at
  "test" the baselines and the paired differences MAML minus baseline. The
  "pretrained_best_lr" baseline's inner learning rate is selected on validation tasks. Envs that
  report ``info["success"]`` (Meta-World) add ``success_rate`` (after ``inner_steps`` steps),
  ``success_rate_ci95`` and ``success_rate_by_inner_steps`` (an episode succeeds when
  ``success`` is true at any of its steps).
- ``state()``/``load()``: params, Adam state, meta-iteration, env steps, the baselines' params.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from distmeta.rl import maml_rl as core
from distmeta.rl.common import paired_difference, rl_tasks, run_tasks

log = logging.getLogger("distmeta.rl")


def success_summary(success: np.ndarray, inner_steps: int) -> Dict[str, Any]:
    """``success [tasks, K+1]`` (per task, the fraction of its episodes after k inner steps in which
    Meta-World's ``info["success"]`` was true at some step) -> ``success_rate`` after
    ``inner_steps`` steps, its 95 % CI over tasks and ``success_rate_by_inner_steps``
    {"0": .., "1": .., ...}: the mean over tasks and episodes."""
    s = np.asarray(success, dtype=np.float64)
    k = min(inner_steps, s.shape[1] - 1)
    n = len(s)
    se = float(s[:, k].std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"success_rate": float(s[:, k].mean()), "success_rate_ci95": 1.96 * se,
            "success_rate_by_inner_steps": {str(j): float(s[:, j].mean()) for j in range(s.shape[1])}}


class MAMLRLMethod:
    name = "maml_rl"
    score_key = "mean_return"
    higher_is_better = True
    work_unit = "env_steps"
    progress_keys = ["pre_adapt_return", "post_adapt_return", "env_steps"]   # the loop adds env_steps/s

    def __init__(self, cfg, algo, splits=None):
        self.cfg, self.rl, self.algo = cfg, cfg.rl, algo
        self.iteration = 0
        self.env_steps = 0
        self.baselines_trained = False
        self.best_pretrained_lr: Optional[float] = None
        self.baseline_means: Dict[str, float] = {}
        self._splits: Dict[tuple, Any] = {}
        if splits is not None:  # drawn by build(): the run's eval sizes
            self._splits[(cfg.eval.episodes, cfg.eval.final_episodes)] = splits

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def algorithm_config(cls, cfg, splits=None):
        from distmeta.rl.maml_algorithm import MAMLRLConfig

        train, _, _ = splits or run_tasks(cfg)
        return MAMLRLConfig.from_distmeta(cfg.rl, cfg.seed, train or None)

    @classmethod
    def build(cls, cfg) -> "MAMLRLMethod":
        from distmeta.address import connect_ray

        splits = run_tasks(cfg)
        config = cls.algorithm_config(cfg, splits)
        request = cls.resources(cfg)
        cpus = sum(b.get("CPU", 0) for b in request.bundles)
        connect_ray(getattr(cfg.engine, "address", None), num_cpus=max(2, int(math.ceil(cpus))))
        return cls(cfg, config.build_algo(), splits=splits)

    @classmethod
    def from_checkpoint(cls, cfg, state: Dict[str, Any]) -> "MAMLRLMethod":
        """For evaluation (``distmeta eval``): the Algorithm built in this process without remote
        EnvRunners or Learners (per-task seeds: the same numbers as any runner count), the
        checkpoint's parameters and baselines loaded."""
        rl = cfg.rl.model_copy(update={"num_env_runners": 0, "num_learners": 0})
        method = cls.build(cfg.model_copy(update={"rl": rl}))
        method.load(state)
        return method

    @classmethod
    def resources(cls, cfg):
        """The Algorithm's own request: ``MAMLRL.default_resource_request(config)``."""
        from distmeta.rl.maml_algorithm import MAMLRL, MAMLRLConfig

        return MAMLRL.default_resource_request(MAMLRLConfig.from_distmeta(cfg.rl, cfg.seed))

    # -- training -------------------------------------------------------------------------------
    def done(self) -> bool:
        return self.env_steps >= self.rl.env_steps

    def step(self) -> Dict[str, float]:
        t0 = time.perf_counter()
        r = self.algo.train()
        dt = time.perf_counter() - t0
        self.iteration += 1
        self.env_steps = int(r["env_steps_lifetime"])
        work = float(r["env_steps"])
        out = {"work": work, "env_steps": float(self.env_steps), "env_steps_per_s": work / max(dt, 1e-9),
               "pre_adapt_return": float(r["pre_adapt_return"]), "post_adapt_return": float(r["post_adapt_return"]),
               "sample_time_s": float(r["sample_time_s"]), "learn_time_s": float(r["learn_time_s"])}
        if self.done() and self.rl.baselines:
            self.finish()
        return out

    def finish(self) -> None:
        """Train the same-run baselines (pretrained; oracle for point navigation) for as many
        iterations as MAML-RL ran; idempotent."""
        if self.baselines_trained or not self.rl.baselines:
            return
        for name in self.algo.baseline_names():
            for _ in range(self.iteration):
                stats = self.algo.train_baseline(name)
            log.info("baseline %s: %d iterations, train return %.3f", name, self.iteration,
                     stats["post_adapt_return"] if self.iteration else float("nan"))
        self.baselines_trained = True

    # -- evaluation -----------------------------------------------------------------------------
    def _tasks(self, split: str, episodes: Optional[int]) -> List[Dict[str, Any]]:
        if split not in ("val", "test"):
            raise ValueError(f"split {split!r}: expected 'val' or 'test'")
        ev = self.cfg.eval
        n = int(episodes or (ev.episodes if split == "val" else ev.final_episodes))
        key = (max(ev.episodes, n if split == "val" else 0), max(ev.final_episodes, n if split == "test" else 0))
        if key not in self._splits:
            self._splits[key] = rl_tasks(self.cfg.rl, *key)
        _, val, test = self._splits[key]
        return list(val if split == "val" else test)[:n]

    def _eval_seed(self, split: str) -> int:
        return core.seed_for(self.cfg.seed, 7, 0 if split == "val" else 1)

    def evaluate(self, split: str, episodes: Optional[int] = None, inner_steps: Optional[int] = None,
                 **_) -> Dict[str, Any]:
        """``inner_steps`` (``distmeta eval --inner-steps``): the headline after that many steps."""
        m = self.rl.maml
        if inner_steps is not None:
            m = m.model_copy(update={"inner_steps": inner_steps,   # 0: the headline before adaptation
                                     "eval_inner_steps": max(m.eval_inner_steps, inner_steps)})
        tasks = self._tasks(split, episodes)
        seed = self._eval_seed(split)
        ev, success = self.algo.evaluate_tasks(tasks, max(m.eval_inner_steps, m.inner_steps), seed,
                                               return_success=True)
        out: Dict[str, Any] = {"split": split, **core.summary_by_inner_steps(ev, m.inner_steps)}
        if success is not None:
            out.update(success_summary(success, m.inner_steps))
        if split == "test" and self.baselines_trained:
            out.update(self._baselines(tasks, ev, seed))
        return {**out, "env": self.rl.env, "algorithm": "maml_rl"}

    def _baselines(self, tasks, ev: np.ndarray, seed: int) -> Dict[str, Any]:
        """The baselines on the same test tasks and seeds, and MAML minus each (paired)."""
        K = self.rl.maml.inner_steps
        trim = lambda s: {k: v for k, v in s.items() if k != "ci95_by_inner_steps"}  # noqa: E731
        base: Dict[str, Any] = {"maml_0_steps": trim(core.summary_by_inner_steps(ev, 0))}
        out: Dict[str, Any] = {"baselines": base}
        names = self.algo.baseline_names()
        if "pretrained" in names:
            ev_b = self.algo.evaluate_tasks(tasks, K, seed, slot="pretrained")
            base["pretrained"] = trim(core.summary_by_inner_steps(ev_b, K))
            base["pretrained_0_steps"] = trim(core.summary_by_inner_steps(ev_b, 0))
            out["vs_pretrained"] = paired_difference(ev[:, K], ev_b[:, K])
            lr = self.pretrained_lr()
            ev_t = self.algo.evaluate_tasks(tasks, K, seed, slot="pretrained", inner_lr=lr)
            base["pretrained_best_lr"] = {**trim(core.summary_by_inner_steps(ev_t, K)), "inner_lr": lr}
            out["vs_pretrained_best_lr"] = paired_difference(ev[:, K], ev_t[:, K])
        if "oracle" in names:
            ev_o = self.algo.evaluate_tasks(tasks, 0, seed, slot="oracle")
            base["oracle"] = trim(core.summary_by_inner_steps(ev_o, 0))
            out["vs_oracle"] = paired_difference(ev[:, K], ev_o[:, 0])
        self.baseline_means = {k: float(v["mean_return"]) for k, v in base.items()}
        return out

    def pretrained_lr(self) -> float:
        """The inner learning rate (grid x ``inner_lr``) at which the pretrained policy does best
        after ``inner_steps`` steps on the VALIDATION tasks (never the test tasks)."""
        if self.best_pretrained_lr is None:
            m = self.rl.maml
            tasks, seed = self._tasks("val", None), self._eval_seed("val")
            scores = {float(lr): float(self.algo.evaluate_tasks(tasks, m.inner_steps, seed, slot="pretrained",
                                                                inner_lr=float(lr))[:, m.inner_steps].mean())
                      for lr in core.PRETRAINED_LR_GRID * m.inner_lr}
            self.best_pretrained_lr = max(scores, key=scores.get)
        return self.best_pretrained_lr

    # -- state ----------------------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        return {"maml": self.algo.maml_state(), "iteration": int(self.iteration), "env_steps": int(self.env_steps),
                "baselines_trained": bool(self.baselines_trained), "best_pretrained_lr": self.best_pretrained_lr,
                "baseline_means": dict(self.baseline_means)}

    def load(self, state: Dict[str, Any]) -> None:
        self.algo.load_maml_state(state["maml"])
        self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])
        self.baselines_trained = bool(state.get("baselines_trained", False))
        self.best_pretrained_lr = state.get("best_pretrained_lr")
        self.baseline_means = dict(state.get("baseline_means") or {})

    def close(self) -> None:
        if self.algo is not None:
            self.algo.stop()
            self.algo = None

    def artifacts(self, run_dir: Path, rows: List[Dict[str, Any]]) -> None:
        """``rl_curve.png``: mean validation return (after ``inner_steps`` steps) against env steps,
        the baselines (their test means, when evaluated) as horizontal lines."""
        from distmeta.rl.common import plot_curve

        xs, ys = [], []
        for r in rows:
            if r.get("val_mean_return") not in (None, "") and r.get("env_steps") not in (None, ""):
                xs.append(float(r["env_steps"]))
                ys.append(float(r["val_mean_return"]))
        baselines = {k: v for k, v in self.baseline_means.items() if k in ("pretrained", "pretrained_best_lr",
                                                                           "oracle")}
        plot_curve(Path(run_dir), xs, ys, baselines,
                   f"MAML-RL on {self.rl.env} ({self.rl.maml.inner_steps} inner step(s))",
                   "mean validation return after adaptation")
