"""RL^2 (Duan et al. 2016) as a :class:`~distmeta.method.Method`: one iteration is
one RLlib PPO iteration (EnvRunners sample trials, Learners update the recurrent
policy); evaluation runs one trial per validation or test task with the policy's
recurrent state carried through the trial. The score is the mean total return of
a trial; at the test split the same-run baselines (Thompson sampling, Gittins,
PSRL, random, ...) run on the same tasks and RL^2 is compared with each of them
task by task (paired differences, ``vs_<baseline>``). On Meta-World the success
rate is reported next to the return.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from distmeta.rl.common import plot_curve, rl_tasks, run_tasks, to_plain


class RL2Method:
    name = "rl2"
    score_key = "mean_return"
    higher_is_better = True
    work_unit = "env_steps"
    progress_keys = ["train_trial_return"]

    def __init__(self, cfg, algo=None, module=None, splits=None):
        self.cfg, self.rl, self.algo, self._module = cfg, cfg.rl, algo, module
        self.iteration, self.env_steps, self._lifetime0 = 0, 0, 0
        _, self.val_tasks, self.test_tasks = splits or run_tasks(cfg)
        self.final_baselines: Dict[str, float] = {}

    @staticmethod
    def algo_config(cfg, splits=None):
        from distmeta.rl import rl2

        train, _, _ = splits or run_tasks(cfg)
        return rl2.build_ppo_config(cfg.rl, cfg.seed, train or None)

    @classmethod
    def build(cls, cfg) -> "RL2Method":
        from distmeta.address import connect_ray

        splits = run_tasks(cfg)
        config = cls.algo_config(cfg, splits)
        connect_ray(cfg.engine.address, num_cpus=max(2, cfg.rl.num_env_runners + 1))
        return cls(cfg, config.build_algo(), splits=splits)

    @classmethod
    def from_checkpoint(cls, cfg, state: Dict[str, Any]) -> "RL2Method":
        """For evaluation only: the policy module rebuilt from the checkpoint, no Ray."""
        from ray.rllib.core import COMPONENT_RL_MODULE, DEFAULT_MODULE_ID

        from distmeta.rl import rl2

        weights = state["learner"][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID]
        return cls(cfg, module=rl2.module_from_state(cfg.rl, weights))

    @classmethod
    def resources(cls, cfg):
        config = cls.algo_config(cfg)
        return config.algo_class.default_resource_request(config)

    def done(self) -> bool:
        return self.env_steps >= self.rl.env_steps

    def step(self) -> Dict[str, float]:
        result = self.algo.train()
        self.iteration += 1
        lifetime = int(result.get("num_env_steps_sampled_lifetime", 0))
        work = lifetime - self._lifetime0
        self._lifetime0 = lifetime
        self.env_steps += work
        row = {"work": float(work), "env_steps_total": float(self.env_steps)}
        ret = result.get("env_runners", {}).get("episode_return_mean")
        if ret is not None:
            row["train_trial_return"] = float(ret)
        learner = result.get("learners", {}).get("default_policy", {})
        row.update({k: float(learner[k]) for k in ("policy_loss", "vf_loss", "entropy") if k in learner})
        return row

    def module(self):
        return self._module if self._module is not None else self.algo.get_module()

    def _tasks(self, split: str, episodes: Optional[int]) -> List[Dict[str, Any]]:
        """The first ``episodes`` tasks of ``split`` (the split is redrawn, same seeds, when more
        are asked for than the run's eval settings hold)."""
        if split not in ("val", "test"):
            raise ValueError(f"split {split!r}: expected 'val' or 'test'")
        tasks = self.val_tasks if split == "val" else self.test_tasks
        if episodes is not None and int(episodes) > len(tasks):
            n = int(episodes)
            _, val, test = rl_tasks(self.rl, max(n, len(self.val_tasks)) if split == "val" else len(self.val_tasks),
                                    max(n, len(self.test_tasks)) if split == "test" else len(self.test_tasks))
            tasks = val if split == "val" else test
        return list(tasks)[:episodes]

    def evaluate(self, split: str, episodes: Optional[int] = None, **_) -> Dict[str, Any]:
        """Mean trial return (95 % CI) over ``episodes`` tasks of ``split``.

        At ``test`` the same-run baselines run on exactly the same task list (``baselines``), and
        for each baseline ``vs_<name>``: the paired difference of total trial return, RL^2 minus
        the baseline, task by task (:func:`~distmeta.rl.common.paired_difference`: mean difference,
        se, 95 % CI half-width); for Thompson, Gittins and PSRL also ``fraction_of_<name>`` (RL^2's
        mean over the baseline's) and ``fraction_of_<name>_ci95`` (delta method over the pairs).
        ``task_digest`` names the task list (the same for RL^2 and the baselines).
        Envs that report ``info["success"]`` (Meta-World) add ``success_rate`` (fraction of the
        trials' episodes with success at some step), ``success_rate_last_episode`` (fraction of
        trials whose last episode succeeded) and ``success_rate_by_episode``."""
        import hashlib

        from distmeta.envs import task_key
        from distmeta.rl import rl2
        from distmeta.rl.baselines import summarize
        from distmeta.rl.common import (baseline_returns, baseline_summaries, paired_difference, ratio_of_means,
                                        success_summary, totals)

        tasks = self._tasks(split, episodes)
        seed = self.cfg.seed + (1 if split == "test" else 2)
        returns, success = rl2.evaluate_module(self.module(), self.rl, tasks, seed=seed, return_success=True)
        digest = hashlib.sha256("\n".join(task_key(t) for t in tasks).encode()).hexdigest()[:16]
        out = {**summarize(returns), "split": split, "task_digest": digest}
        if success is not None:
            out.update(success_summary(success))
        if split == "test" and self.rl.baselines:
            base = baseline_returns(self.rl, tasks, seed)
            out["baselines"] = baseline_summaries(self.rl, tasks, seed, base)
            agent = totals(returns)
            for name, r in base.items():
                if len(r) != len(tasks):
                    raise RuntimeError(f"baseline {name}: {len(r)} tasks, RL^2 ran {len(tasks)}")
                out[f"vs_{name}"] = paired_difference(agent, totals(r))
            for name in ("thompson", "gittins", "psrl"):
                if name in base:
                    ratio = ratio_of_means(agent, totals(base[name]))
                    out[f"fraction_of_{name}"] = ratio["fraction"]
                    out[f"fraction_of_{name}_ci95"] = ratio["ci95"]
            self.final_baselines = {k: v["mean_return"] for k, v in out["baselines"].items()}
        return {**out, "env": self.rl.env, "algorithm": "rl2"}

    def state(self) -> Dict[str, Any]:
        from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_OPTIMIZER, COMPONENT_RL_MODULE

        learner = self.algo.learner_group.get_state()[COMPONENT_LEARNER]
        return {"learner": to_plain({COMPONENT_RL_MODULE: learner[COMPONENT_RL_MODULE],
                                     COMPONENT_OPTIMIZER: learner[COMPONENT_OPTIMIZER]}),
                "iteration": self.iteration, "env_steps": self.env_steps}

    def load(self, state: Dict[str, Any]) -> None:
        from ray.rllib.core import COMPONENT_LEARNER

        self.algo.learner_group.set_state({COMPONENT_LEARNER: state["learner"]})
        self.algo.env_runner_group.sync_weights(from_worker_or_learner_group=self.algo.learner_group,
                                                inference_only=True)
        self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])

    def close(self) -> None:
        if self.algo is not None:
            self.algo.stop()

    def artifacts(self, run_dir: Path, rows: List[Dict[str, Any]]) -> None:
        xs, ys = [], []
        for r in rows:
            if r.get("val_mean_return") not in (None, ""):
                xs.append(float(r["env_steps"]))
                ys.append(float(r["val_mean_return"]))
        plot_curve(run_dir, xs, ys, self.final_baselines,
                   f"RL^2 on {self.rl.env} ({self.rl.rl2.episodes_per_trial} episodes/trial)",
                   "mean validation return")
