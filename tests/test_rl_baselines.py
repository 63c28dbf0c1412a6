"""Same-run baselines of the tabular MDPs (10 states, 5 actions, horizon 10; Duan et al. 2016):
the vectorised simulator against exact expectations, and posterior sampling for RL (PSRL,
Osband et al. 2013) between random and the per-task optimum, near the RL^2 paper's numbers."""
from __future__ import annotations

import time

import numpy as np
import pytest

from distmeta.rl.baselines import (summarize, tabular_arrays, tabular_baselines, tabular_greedy, tabular_optimal,
                                   tabular_psrl, tabular_random)

# Duan et al. 2016 (RL^2), Table 2: mean total return over a trial of n episodes
PAPER = {"random": {10: 100.1, 50: 499.7}, "psrl": {10: 138.1, 50: 904.4}}


@pytest.fixture(scope="module")
def tasks():
    from distmeta.envs import make, task_splits

    return task_splits(make("tabular_mdp"), 0, 10, 300, 0)[2]


def _uniform_policy_value(P, R, horizon):
    """Exact expected return from state 0 of the uniformly random policy, per task."""
    v = np.zeros(R.shape[:2])
    for _ in range(horizon):
        v = (R + np.einsum("nsat,nt->nsa", P, v)).mean(-1)
    return v[:, 0]


def test_simulator_matches_the_exact_expectation(tasks):
    """The vectorised episodes (rewards and transitions) have the env's expectation: random's mean
    return per task over 10 episodes against its exact value, within 4 standard errors."""
    P, R = tabular_arrays(tasks)
    sim = tabular_random(tasks, 10, 10, seed=0).mean(1)
    d = sim - _uniform_policy_value(P, R, 10)
    assert abs(d.mean()) < 4 * d.std(ddof=1) / np.sqrt(len(d)), d.mean()
    # the optimum is value iteration's V_0(state 0)
    from distmeta.envs import make
    from distmeta.envs.tabular_mdp import value_iteration

    env = make("tabular_mdp").unwrapped
    env.set_task(tasks[3])
    assert tabular_optimal(tasks[:5], 2)[3, 1] == pytest.approx(value_iteration(env._p, env._r, 10)[0])


def test_psrl_between_random_and_optimal_near_the_paper(tasks):
    """300 test tasks, n = 10 episodes per trial: PSRL beats random by a wide margin (paired per
    task; measured +32.9 +- 2.9 (95 % CI) on these tasks: PSRL 133.1, random 100.2, optimum
    218.2) and stays below the known-MDP optimum. Its mean is near the paper's 138.1: measured
    133.3 +- 1.6 (95 % CI) on 1000 tasks, 3 seeds (133.3, 133.3, 133.5), so the test allows
    138.1 +- 10; at n = 50 the paper's 904.4 is matched within 1 % (measured 901.0 +- 6.9 on 1000
    tasks, 906.9 on these 300; n = 75: 1417.0 vs 1417.1, n = 100: 1941.9 vs 1939.5) and the test
    allows 3 %."""
    b = tabular_baselines(tasks, 10, {}, seed=0)
    tot = {k: v.sum(1) for k, v in b.items()}
    assert set(b) == {"random", "psrl", "greedy", "optimal"} and all(v.shape == (300, 10) for v in b.values())
    d = tot["psrl"] - tot["random"]
    assert d.mean() > 20 and d.mean() > 10 * d.std(ddof=1) / np.sqrt(len(d)), d.mean()
    d = tot["optimal"] - tot["psrl"]
    assert d.mean() > 10 * d.std(ddof=1) / np.sqrt(len(d))
    assert summarize(b["random"])["mean_return"] == pytest.approx(PAPER["random"][10], abs=5)
    assert summarize(b["psrl"])["mean_return"] == pytest.approx(PAPER["psrl"][10], abs=10)
    # PSRL learns: its later episodes are better than its first
    assert b["psrl"][:, -3:].mean() > b["psrl"][:, 0].mean() + 2
    psrl50 = summarize(tabular_psrl(tasks, 50, 10, seed=1))["mean_return"]
    assert psrl50 == pytest.approx(PAPER["psrl"][50], rel=0.03)


def test_myopic_greedy_beats_psrl_on_this_task_distribution(tasks):
    """Myopic Bayes-greedy (posterior-mean reward of each action in the current state) is well
    above PSRL at n = 10 episodes: remembering each (s, a)'s rewards is most of what the task
    rewards (measured on 1000 test tasks: greedy 158.0, PSRL 133.3, paired +24.8 +- 1.7; the
    RL^2 paper's agent: 156.2). It learns within the trial and stays below the known-MDP optimum."""
    b = tabular_baselines(tasks, 10, {}, seed=0)
    tot = {k: v.sum(1) for k, v in b.items()}
    d = tot["greedy"] - tot["psrl"]
    assert d.mean() > 10 and d.mean() > 5 * d.std(ddof=1) / np.sqrt(len(d)), d.mean()
    assert tot["greedy"].mean() < tot["optimal"].mean() - 20
    assert b["greedy"][:, -3:].mean() > b["greedy"][:, 0].mean() + 3
    np.testing.assert_array_equal(b["greedy"], tabular_greedy(tasks, 10, 10, seed=0))


def test_psrl_is_fast_and_deterministic(tasks):
    """Vectorised over tasks: 1000 tasks x 10 episodes in a few seconds (measured ~0.4 s)."""
    many = tasks * 4  # 1200 tasks
    t0 = time.perf_counter()
    a = tabular_psrl(many, 10, 10, seed=5)
    assert time.perf_counter() - t0 < 10
    np.testing.assert_array_equal(a, tabular_psrl(many, 10, 10, seed=5))
    assert not np.array_equal(a, tabular_psrl(many, 10, 10, seed=6))


def test_fraction_of_a_baseline_ci_against_the_bootstrap():
    """``fraction_of_<baseline>``'s 95 % CI (delta method over paired tasks) against a bootstrap."""
    from distmeta.rl.common import ratio_of_means

    rng = np.random.default_rng(0)
    difficulty = rng.uniform(20, 80, 400)
    a = 0.8 * difficulty + rng.normal(0, 5, 400)
    b = difficulty + rng.normal(0, 5, 400)
    out = ratio_of_means(a, b)
    assert out["fraction"] == pytest.approx(a.mean() / b.mean())
    idx = rng.integers(0, 400, size=(2000, 400))
    boot = a[idx].mean(1) / b[idx].mean(1)
    assert out["se"] == pytest.approx(boot.std(ddof=1), rel=0.15)
    assert out["ci95"] == pytest.approx(1.96 * out["se"])
