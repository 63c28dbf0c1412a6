"""MAML-RL sampling throughput: the EnvRunner path against the old learner-side sampler.

Measures the sampling phase of one meta-iteration (pre-adaptation episodes, the inner step,
post-adaptation episodes for a whole meta-batch) in env steps per second:

- ``learner-side``: :class:`TaskSampler`, the former default (the driver samples every task:
  one env per (task, episode), stepped in lock-step with one forward per task); kept here
  only as this baseline;
- ``env_runners=0/1/2``: :meth:`distmeta.rl.maml_algorithm.MAMLRL.sample`, the path training
  uses (0: the local EnvRunner; 1, 2: remote EnvRunners, one shard each).

on point navigation and HalfCheetah-Vel (skipped with a note without mujoco), in one run,
with ratios to the learner-side baseline and to one runner, and ``os.getloadavg()`` (the
machine may be shared). Targets on 2 cores: one runner >= 0.5x learner-side on point
navigation; two runners >= 1.6x one runner on HalfCheetah-Vel.

    python benchmarks/rl_throughput.py [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distmeta.rl import maml_rl as core  # noqa: E402

WORKLOADS = {
    "point_nav": {"env": "distmeta/PointNav-v0", "env_config": {"horizon": 100}, "meta_batch": 20, "episodes": 10,
                  "hidden": [32, 32]},
    "halfcheetah_vel": {"env": "distmeta/HalfCheetahVel-v0", "env_config": {"horizon": 200}, "meta_batch": 8,
                        "episodes": 10, "hidden": [64, 64]},
}


# -- the learner-side baseline (formerly distmeta.rl.maml_rl.TaskSampler) ------------------------
class TaskSampler:
    """One env instance per (task, episode); all stepped in lock-step with one forward per task."""

    def __init__(self, env: str, env_config: Dict[str, Any]):
        from distmeta.envs import make

        self.env_name, self.env_config = env, dict(env_config)
        probe = make(env, **env_config).unwrapped
        self.discrete = hasattr(probe.action_space, "n")
        self._envs: List[Any] = []

    def _get_envs(self, n: int):
        from distmeta.envs import make

        while len(self._envs) < n:
            self._envs.append(make(self.env_name, **self.env_config).unwrapped)
        return self._envs[:n]

    def sample(self, params_per_task: Sequence[core.Params], tasks, episodes: int, seed: int):
        """Per task (obs [E,T,d], act [E,T,a], rew [E,T], logp [E,T], mask [E,T])."""
        n_tasks = len(tasks)
        envs = self._get_envs(n_tasks * episodes)
        gen = torch.Generator().manual_seed(int(seed) % (2**63 - 1))
        obs0 = []
        for i, env in enumerate(envs):
            env.set_task(tasks[i // episodes])
            obs0.append(env.reset(seed=int(seed * 7919 + i) % (2**31 - 1))[0])
        cur = np.stack(obs0).astype(np.float32)
        done = np.zeros(len(envs), bool)
        O, A, R, L, M = [], [], [], [], []
        while not done.all():
            acts, logps = [], []
            for t in range(n_tasks):
                sl = slice(t * episodes, (t + 1) * episodes)
                a, lp = core.sample_actions(params_per_task[t], torch.as_tensor(cur[sl]), self.discrete, gen)
                acts.append(a)
                logps.append(lp)
            act = torch.cat(acts).numpy()
            rew, nxt, mask = np.zeros(len(envs)), cur.copy(), (~done).astype(np.float64)
            for i, env in enumerate(envs):
                if not done[i]:
                    o, r, term, trunc, _ = env.step(act[i])
                    nxt[i], rew[i], done[i] = o, r, term or trunc
            O.append(cur), A.append(act.reshape(len(envs), -1)), R.append(rew)
            L.append(torch.cat(logps).numpy()), M.append(mask)
            cur = nxt
        O, A, R, L, M = (np.stack(x, axis=1) for x in (O, A, R, L, M))
        return [tuple(x[t * episodes:(t + 1) * episodes] for x in (O, A, R, L, M)) for t in range(n_tasks)]


def learner_side_phase(sampler: TaskSampler, params: core.Params, tasks, episodes: int, seed: int) -> int:
    """The old sampling phase: pre-adaptation episodes, inner step, post-adaptation; env steps."""
    steps, per_task = 0, [params] * len(tasks)
    for k in range(2):
        raw = sampler.sample(per_task, tasks, episodes, seed * 31 + k)
        batches = [core.make_batch(*r, gamma=0.99) for r in raw]
        steps += int(sum(r[-1].sum() for r in raw))
        if k == 0:
            per_task = [core.adapt_detached(params, b, 0.1, sampler.discrete) for b in batches]
    return steps


# -- measurements ----------------------------------------------------------------------------
def _rate(fn, repeats: int) -> float:
    fn()  # warm-up (env creation, imports)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        steps = fn()
        rates.append(steps / (time.perf_counter() - t0))
    return statistics.median(rates)


def measure_learner_side(w: Dict[str, Any], repeats: int) -> float:
    sampler = TaskSampler(w["env"], w["env_config"])
    tasks = sampler._get_envs(1)[0].sample_tasks(w["meta_batch"], 0)
    spec = _spec(sampler, w)
    params = core.init_policy(spec, 0)
    return _rate(lambda: learner_side_phase(sampler, params, tasks, w["episodes"], 0), repeats)


def _spec(sampler, w) -> core.PolicySpec:
    env = sampler._get_envs(1)[0]
    return core.PolicySpec(int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape)),
                           w["hidden"])


def measure_env_runners(w: Dict[str, Any], runners: int, repeats: int) -> float:
    from distmeta.rl.maml_algorithm import MAMLRLConfig

    shard = -(-w["meta_batch"] // max(1, runners))  # tasks per runner: the lock-step width is a whole shard
    algo = (MAMLRLConfig().environment(w["env"], env_config=w["env_config"])
            .env_runners(num_env_runners=runners, num_envs_per_env_runner=shard * w["episodes"])
            .training(meta_batch=w["meta_batch"], episodes_per_task=w["episodes"], hidden=w["hidden"])
            .debugging(seed=0, log_level="ERROR")).build_algo()
    try:
        params = algo.get_params()
        tasks = algo.meta_batch_tasks(0, 0)
        seeds = [core.seed_for(0, 0, 1, i) for i in range(len(tasks))]

        def phase() -> int:
            return sum(r.env_steps for r in algo.sample(params, tasks, seeds, 1, keep_data=True))

        return _rate(phase, repeats)
    finally:
        algo.stop()


def mujoco_available() -> bool:
    try:
        import mujoco  # noqa: F401

        from distmeta.envs import make

        make("halfcheetah_vel")
        return True
    except Exception:
        return False


def run(repeats: int) -> Dict[str, Any]:
    import ray

    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    out: Dict[str, Any] = {"loadavg_before": list(os.getloadavg()), "cpus": os.cpu_count(), "repeats": repeats,
                           "workloads": {}, "notes": []}
    for name, w in WORKLOADS.items():
        if name == "halfcheetah_vel" and not mujoco_available():
            out["notes"].append("halfcheetah_vel skipped: mujoco is not installed")
            continue
        steps = w["meta_batch"] * w["episodes"] * w["env_config"]["horizon"] * 2
        row = {"env_steps_per_phase": steps, "learner_side": measure_learner_side(w, repeats)}
        for runners in (0, 1, 2):
            row[f"env_runners_{runners}"] = measure_env_runners(w, runners, repeats)
        out["workloads"][name] = row
    out["loadavg_after"] = list(os.getloadavg())
    ray.shutdown()
    return out


def table(res: Dict[str, Any]) -> str:
    lines = [f"loadavg before {res['loadavg_before']} after {res['loadavg_after']} ({res['cpus']} CPUs)",
             f"{'workload':<16} {'sampler':<16} {'env steps/s':>12} {'x learner-side':>15} {'x 1 runner':>11}"]
    for name, row in res["workloads"].items():
        base, one = row["learner_side"], row["env_runners_1"]
        for key in ("learner_side", "env_runners_0", "env_runners_1", "env_runners_2"):
            lines.append(f"{name:<16} {key:<16} {row[key]:>12.0f} {row[key] / base:>15.2f} {row[key] / one:>11.2f}")
    pn, hc = res["workloads"].get("point_nav"), res["workloads"].get("halfcheetah_vel")
    if pn:
        r = pn["env_runners_1"] / pn["learner_side"]
        lines.append(f"target point_nav 1 runner >= 0.5x learner-side: {r:.2f} {'met' if r >= 0.5 else 'MISSED'}")
    if hc:
        r = hc["env_runners_2"] / hc["env_runners_1"]
        lines.append(f"target halfcheetah_vel 2 runners >= 1.6x 1 runner: {r:.2f} {'met' if r >= 1.6 else 'MISSED'}")
    lines += [f"note: {n}" for n in res["notes"]]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    res = run(args.repeats)
    print(table(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
