"""Same-run baselines for the Meta-RL evaluations.

- Bernoulli bandits: random, UCB1 (Auer et al. 2002), Thompson sampling with a
  Beta(1, 1) prior; vectorised over tasks, on the very held-out tasks the agent
  is evaluated on. Returns are per (task, pull), so they line up with RL^2's
  per-episode-index adaptation curve (one pull is one episode).
- Tabular MDPs: random (simulated) and the per-task optimal policy (finite
  horizon value iteration on the true model, expected return) as a ceiling.

Gittins indices are not implemented (see the README section).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import numpy as np


def summarize(returns: np.ndarray) -> Dict[str, Any]:
    """``returns``: per task (1-D) or per (task, episode index) (2-D; summed over episodes).
    Mean total return per task, its 95 % CI half-width (normal approximation) and the SE."""
    r = np.asarray(returns, dtype=np.float64)
    total = r.sum(axis=1) if r.ndim == 2 else r
    n = len(total)
    se = float(total.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    out = {"mean_return": float(total.mean()), "ci95": 1.96 * se, "se": se, "tasks": n}
    if r.ndim == 2:
        out["mean_return_by_episode"] = [float(x) for x in r.mean(axis=0)]
    return out


def bandit_means(tasks: Sequence[Dict[str, Any]]) -> np.ndarray:
    return np.asarray([t["means"] for t in tasks], dtype=np.float64)


def bandit_random(means: np.ndarray, pulls: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, k = means.shape
    arms = rng.integers(0, k, size=(n, pulls))
    p = np.take_along_axis(means, arms, axis=1)
    return (rng.random((n, pulls)) < p).astype(np.float64)


def _run_index_policy(means: np.ndarray, pulls: int, seed: int,
                      choose: Callable[[np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, k = means.shape
    succ = np.zeros((n, k))
    count = np.zeros((n, k))
    rewards = np.zeros((n, pulls))
    rows = np.arange(n)
    for t in range(pulls):
        arm = choose(succ, count, t, rng)
        r = (rng.random(n) < means[rows, arm]).astype(np.float64)
        succ[rows, arm] += r
        count[rows, arm] += 1
        rewards[:, t] = r
    return rewards


def bandit_ucb1(means: np.ndarray, pulls: int, seed: int = 0) -> np.ndarray:
    def choose(succ, count, t, rng):
        k = succ.shape[1]
        if t < k:  # pull every arm once first
            return np.full(succ.shape[0], t)
        ucb = succ / count + np.sqrt(2.0 * np.log(t) / count)
        ucb += 1e-9 * rng.random(ucb.shape)  # random tie-breaking
        return ucb.argmax(axis=1)

    return _run_index_policy(means, pulls, seed, choose)


def bandit_thompson(means: np.ndarray, pulls: int, seed: int = 0) -> np.ndarray:
    def choose(succ, count, t, rng):
        return rng.beta(1.0 + succ, 1.0 + count - succ).argmax(axis=1)

    return _run_index_policy(means, pulls, seed, choose)


def bandit_oracle(means: np.ndarray, pulls: int) -> np.ndarray:
    """Expected reward of always pulling the best arm (not a policy: a ceiling)."""
    return np.repeat(means.max(axis=1, keepdims=True), pulls, axis=1)


def bandit_baselines(tasks: Sequence[Dict[str, Any]], pulls: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Per (task, pull) rewards of every bandit baseline on ``tasks``."""
    means = bandit_means(tasks)
    return {
        "random": bandit_random(means, pulls, seed),
        "ucb1": bandit_ucb1(means, pulls, seed),
        "thompson": bandit_thompson(means, pulls, seed),
        "oracle_best_arm": bandit_oracle(means, pulls),
    }


def tabular_baselines(tasks: Sequence[Dict[str, Any]], episodes: int, env_config: Dict[str, Any],
                      seed: int = 0) -> Dict[str, np.ndarray]:
    """Per (task, episode) returns of a random policy (simulated) and the per-task optimum (expected)."""
    from distmeta.envs.tabular_mdp import TabularMDPEnv, value_iteration

    env = TabularMDPEnv(**env_config)
    rng = np.random.default_rng(seed)
    rand = np.zeros((len(tasks), episodes))
    opt = np.zeros((len(tasks), episodes))
    for i, task in enumerate(tasks):
        env.set_task(task)
        opt[i] = value_iteration(env._p, env._r, env.horizon)[0]
        for e in range(episodes):
            env.reset(seed=int(rng.integers(2**31 - 1)))
            done, total = False, 0.0
            while not done:
                _, r, term, trunc, _ = env.step(int(rng.integers(env.num_actions)))
                total += r
                done = term or trunc
            rand[i, e] = total
    return {"random": rand, "optimal": opt}


def baselines_for(env_name: str, tasks: Sequence[Dict[str, Any]], episodes: int, env_config: Dict[str, Any],
                  seed: int = 0) -> Dict[str, np.ndarray]:
    """The baselines that exist for this environment, per (task, episode index); {} if none."""
    from distmeta.envs import resolve_env_id

    env_id = resolve_env_id(env_name)
    if env_id == "distmeta/Bandit-v0":
        if int(env_config.get("pulls_per_episode", 1)) != 1:
            return {}
        return bandit_baselines(tasks, episodes, seed)
    if env_id == "distmeta/TabularMDP-v0":
        return tabular_baselines(tasks, episodes, env_config, seed)
    return {}
