"""Same-run baselines for the Meta-RL evaluations.

- Bernoulli bandits: random, UCB1 (Auer et al. 2002), Thompson sampling with a
  Beta(1, 1) prior and the finite-horizon Gittins index policy (Beta(1, 1)
  prior, undiscounted, index depending on the pulls left; see
  ``gittins_table``), vectorised over tasks, on the very held-out tasks the
  agent is evaluated on, plus the best arm's mean as a ceiling. Returns are per
  (task, pull), so they line up with RL^2's per-episode-index adaptation curve
  (one pull is one episode).
- Tabular MDPs: random (simulated), posterior sampling for RL (PSRL, Osband et
  al. 2013; Dirichlet(1) transition and Normal reward posteriors, the env's own
  prior, one sampled MDP per episode; ``tabular_psrl``) and the per-task optimal
  policy (finite horizon value iteration on the true model, expected return) as a
  ceiling, vectorised over tasks.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

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


class GittinsTable:
    """Finite-horizon Gittins indices of one Bernoulli arm for every state reachable within ``horizon`` pulls.

    ``table(a, b, h)`` (vectorised, numpy broadcasting) is the index of an arm with posterior Beta(a, b)
    (a = 1 + successes, b = 1 + failures) when ``h`` pulls are left, for integers a, b >= 1, h >= 1 and
    (a - 1) + (b - 1) + h <= horizon. Values are stored as float32, one flat block per number of pulls
    so far m = a + b - 2 (rows: successes, columns: h = 1 .. horizon - m).
    """

    def __init__(self, horizon: int, grid: int, values: np.ndarray, offsets: np.ndarray, build_seconds: float):
        self.horizon, self.grid, self.values, self.offsets = horizon, grid, values, offsets
        self.build_seconds = build_seconds

    def __call__(self, a, b, h) -> np.ndarray:
        s = np.asarray(a, dtype=np.int64) - 1
        f = np.asarray(b, dtype=np.int64) - 1
        h = np.asarray(h, dtype=np.int64)
        m = s + f
        if np.any(s < 0) or np.any(f < 0) or np.any(h < 1) or np.any(m + h > self.horizon):
            raise ValueError(f"Gittins index: need a, b >= 1, h >= 1 and a + b - 2 + h <= {self.horizon}")
        return self.values[self.offsets[m] + s * (self.horizon - m) + (h - 1)].astype(np.float64)


def _gittins_default_grid(horizon: int) -> int:
    return 400 if horizon <= 200 else 200


@functools.lru_cache(maxsize=4)
def gittins_table(horizon: int, grid: Optional[int] = None) -> GittinsTable:
    """Finite-horizon Gittins indices (Bernoulli arm, Beta(1, 1) prior, no discounting), cached per horizon.

    For a retirement reward ``lam`` per remaining pull, the value of an arm in state Beta(a, b) with ``h``
    pulls left is (p = a / (a + b), V(., ., 0) = 0)::

        V(a, b, h) = max(lam * h, p + p * V(a + 1, b, h - 1) + (1 - p) * V(a, b + 1, h - 1))

    and the index is the largest ``lam`` at which pulling once more (and retiring optimally later) is still
    at least as good as retiring now: ``sup{lam : p + p V(a+1, b, h-1) + (1-p) V(a, b+1, h-1) >= lam h}``.
    Equivalently it is the best reward rate max_tau E[rewards up to tau] / E[tau] over stopping times
    1 <= tau <= h; it equals the posterior mean for h = 1 and grows with h.

    Computation: for each ``lam`` on a uniform grid of ``grid`` points in (0, 1) (default 400 up to
    horizon 200, 200 beyond), ONE backward DP over all states (a, b, h) with a + b - 2 + h <= horizon
    (vectorised over lam and states, run in excess-value form U = V - lam * h, E = expected pulls before
    retiring) gives, at every state, the optimal stopping rule tau_lam after one forced pull and its rate
    E[R]/E[tau] (the Dinkelbach / tangent step of the convex, piecewise-linear continuation advantage).
    Every such rate is a lower bound on the index and equals it as soon as some grid lam shares the
    optimal stopping rule with the index itself; the table keeps the maximum over the grid (and the
    posterior mean). Accuracy (against grids 4-10x finer and a plain recursive DP with bisection): at
    horizon 100 (grid 400) at most ~1e-4 (mean ~2e-6); at horizon 500 the default grid is coarser (200
    points): at most ~2e-3, mean ~3.5e-4, which moved the policy's mean total reward on 1000 tasks by
    0.1 +- 0.07 (k = 5) and 0.02 +- 0.03 (k = 10) against a 800-point grid, i.e. not measurably. The
    work is grid * horizon^3 / 6 state updates: ~0.7 s of one CPU core at horizon 100, ~21 s at horizon
    500 (once per process: cached), where the table takes 80 MB (float32); horizons far beyond 500 get
    slow (cubic) and large.
    """
    n = int(horizon)
    L = int(grid or _gittins_default_grid(n))
    if n < 1 or L < 1:
        raise ValueError("Gittins table: horizon and grid must be >= 1")
    t0 = time.perf_counter()
    dt = np.float32
    lams = (np.arange(L) + 0.5) / L
    sizes = [(m + 1) * (n - m) for m in range(n)]
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(sizes)
    values = np.empty(int(offsets[-1]), dtype=dt)
    # layer m (m = a + b - 2 pulls so far): arrays over (lam, successes 0..m, h = 0..n-m); h = 0 is 0
    U = np.zeros((L, n + 1, 1), dt)  # V - lam * h, the advantage over retiring now (>= 0, up to ties)
    E = np.zeros((L, n + 1, 1), dt)  # expected number of pulls before retiring under the optimal rule
    for m in range(n - 1, -1, -1):
        U, E, best = _gittins_layer(U, E, lams, m, n)
        values[offsets[m]:offsets[m + 1]] = best.ravel()
    return GittinsTable(n, L, values, offsets, time.perf_counter() - t0)


def _gittins_layer(U: np.ndarray, E: np.ndarray, lams: np.ndarray, m: int, n: int):
    """One backward step of :func:`gittins_table`'s DP: from layer m + 1's (U, E) over (lam,
    successes, pulls left) to layer m's, and the best rate of every state of layer m."""
    dt = U.dtype
    L, H = len(lams), n - m
    p = (1.0 + np.arange(m + 1)) / (2.0 + m)
    pc = p.astype(dt)[:, None]
    Un = np.empty((L, m + 1, H + 1), dt)
    En = np.empty((L, m + 1, H + 1), dt)
    Un[:, :, 0] = 0
    En[:, :, 0] = 0
    best = np.repeat(pc, H, axis=1)  # the posterior mean is the rate of "pull once, then retire"
    chunk = max(1, (1 << 20) // (4 * (m + 1) * H))  # lam chunks of ~1 MB per array: cache-friendly
    for j0 in range(0, L, chunk):
        j1 = min(L, j0 + chunk)
        lam = lams[j0:j1, None, None]
        adv = Un[j0:j1, :, 1:]  # continuation advantage: p - lam + p U(a+1, b) + (1-p) U(a, b+1)
        np.subtract(U[j0:j1, 1:, :], U[j0:j1, :-1, :], out=adv)
        adv *= pc
        adv += U[j0:j1, :-1, :]
        adv += (p[None, :, None] - lam).astype(dt)
        tau = En[j0:j1, :, 1:]  # expected pulls when pulling now: 1 + p E(a+1, b) + (1-p) E(a, b+1)
        np.subtract(E[j0:j1, 1:, :], E[j0:j1, :-1, :], out=tau)
        tau *= pc
        tau += E[j0:j1, :-1, :]
        tau += 1
        rate = adv / tau  # = E[R]/E[tau] - lam for the rule that is optimal at lam
        rate += lam.astype(dt)
        np.maximum(best, rate.max(axis=0), out=best)
        # retire (advantage 0, no more pulls) unless pulling is at least as good; ties (a state whose
        # index is this very grid lam, e.g. a posterior mean 0.505) count as pulling, up to float32
        # rounding, so that the rule is the one optimal just below the grid point
        keep = adv > -1e-5
        adv *= keep
        tau *= keep
    return Un, En, best


def bandit_gittins(means: np.ndarray, pulls: int, seed: int = 0) -> np.ndarray:
    """Pull the arm with the largest finite-horizon Gittins index (``gittins_table``) given its Beta(1 +
    successes, 1 + failures) posterior and the pulls left (``pulls - t``); ties broken at random."""
    table = gittins_table(int(pulls))

    def choose(succ, count, t, rng):
        s = succ.astype(np.int64)
        idx = table(1 + s, 1 + count.astype(np.int64) - s, pulls - t)
        idx += 1e-9 * rng.random(idx.shape)  # random tie-breaking
        return idx.argmax(axis=1)

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
        "gittins": bandit_gittins(means, pulls, seed),
        "oracle_best_arm": bandit_oracle(means, pulls),
    }


def tabular_arrays(tasks: Sequence[Dict[str, Any]]):
    """``(P [N, S, A, S], R [N, S, A])``: the tasks' transition probabilities (rows normalised, as
    :class:`~distmeta.envs.tabular_mdp.TabularMDPEnv` does) and mean rewards."""
    p = np.asarray([t["transitions"] for t in tasks], dtype=np.float64)
    r = np.asarray([t["reward_means"] for t in tasks], dtype=np.float64)
    return p / p.sum(-1, keepdims=True), r


def _tabular_episode(P: np.ndarray, R: np.ndarray, horizon: int, rng: np.random.Generator,
                     act: Callable[[int, np.ndarray], np.ndarray], observe=None) -> np.ndarray:
    """One episode in every task at once (start state 0, as the env): ``act(t, s) -> a`` per task;
    rewards ~ N(R[s, a], noise std) and next states ~ P[s, a], simulated like the env.
    ``observe(s, a, r, s_next)`` sees every transition. Returns the episode return per task."""
    from distmeta.envs.tabular_mdp import REWARD_NOISE_STD

    n, S = P.shape[0], P.shape[1]
    rows = np.arange(n)
    s = np.zeros(n, dtype=np.int64)
    total = np.zeros(n)
    for t in range(horizon):
        a = act(t, s)
        r = R[rows, s, a] + REWARD_NOISE_STD * rng.standard_normal(n)
        cdf = P[rows, s, a].cumsum(-1)
        s_next = np.minimum((rng.random(n)[:, None] >= cdf).sum(-1), S - 1)
        if observe is not None:
            observe(s, a, r, s_next)
        total += r
        s = s_next
    return total


def tabular_random(tasks: Sequence[Dict[str, Any]], episodes: int, horizon: int = 10, seed: int = 0) -> np.ndarray:
    """Per (task, episode) returns of the uniformly random policy (simulated)."""
    P, R = tabular_arrays(tasks)
    rng = np.random.default_rng(seed)
    A = P.shape[2]
    return np.stack([_tabular_episode(P, R, horizon, rng, lambda t, s: rng.integers(A, size=len(s)))
                     for _ in range(episodes)], axis=1)


def tabular_optimal(tasks: Sequence[Dict[str, Any]], episodes: int, horizon: int = 10) -> np.ndarray:
    """Per (task, episode) expected return of the per-task optimal policy (finite-horizon value
    iteration on the true model): a ceiling, not a learner."""
    from distmeta.envs.tabular_mdp import q_values

    P, R = tabular_arrays(tasks)
    v0 = q_values(P, R, horizon)[0, :, 0].max(-1)  # start state 0
    return np.repeat(v0[:, None], episodes, axis=1)


def reward_posterior(r_sum: np.ndarray, r_n: np.ndarray):
    """``(mean, precision)`` of the Normal-Normal posterior of a mean reward under the env's prior
    (``distmeta.envs.tabular_mdp``: mean ~ N(mu0, s0^2), observed reward ~ N(mean, sn^2)) after
    ``r_n`` rewards summing to ``r_sum``: precision ``1 / s0^2 + n / sn^2``, mean
    ``(mu0 / s0^2 + sum r / sn^2) / precision``. Elementwise, any shape."""
    from distmeta.envs.tabular_mdp import REWARD_NOISE_STD, REWARD_PRIOR_MEAN, REWARD_PRIOR_STD

    prior_prec, noise_prec = 1.0 / REWARD_PRIOR_STD ** 2, 1.0 / REWARD_NOISE_STD ** 2
    prec = prior_prec + noise_prec * r_n
    return (prior_prec * REWARD_PRIOR_MEAN + noise_prec * r_sum) / prec, prec


def tabular_psrl(tasks: Sequence[Dict[str, Any]], episodes: int, horizon: int = 10, seed: int = 0) -> np.ndarray:
    """Posterior sampling for RL (PSRL; Osband, Russo and Van Roy 2013), vectorised over tasks.

    The prior is the env's own task distribution (``distmeta.envs.tabular_mdp``): per (s, a) the
    next-state distribution ~ Dirichlet(1, ..., 1) and the mean reward ~ N(1, 1), observed rewards
    ~ N(mean, 1) with known noise. Posteriors are conjugate: Dirichlet(1 + transition counts) and
    Normal-Normal, mean ``(mu0 / s0^2 + sum r / sn^2) / (1 / s0^2 + n / sn^2)``, variance
    ``1 / (1 / s0^2 + n / sn^2)``. At the start of every episode PSRL samples one MDP from the
    posterior and follows its finite-horizon optimal (time-dependent, greedy) policy for the whole
    episode; the posterior is updated with the episode's transitions. Returns per (task, episode)
    (simulated rewards, like the env and RL^2's evaluation).
    """
    from distmeta.envs.tabular_mdp import TRANSITION_CONCENTRATION, q_values

    P, R = tabular_arrays(tasks)
    rng = np.random.default_rng(seed)
    n, S, A = R.shape
    rows = np.arange(n)
    counts = np.zeros((n, S, A, S))
    r_sum, r_n = np.zeros((n, S, A)), np.zeros((n, S, A))
    out = np.zeros((n, episodes))

    def observe(s, a, r, s_next):
        counts[rows, s, a, s_next] += 1
        r_sum[rows, s, a] += r
        r_n[rows, s, a] += 1

    for e in range(episodes):
        g = rng.standard_gamma(TRANSITION_CONCENTRATION + counts)  # Dirichlet draws, one per (task, s, a)
        p_hat = g / g.sum(-1, keepdims=True)
        mean, prec = reward_posterior(r_sum, r_n)
        r_hat = mean + rng.standard_normal(mean.shape) / np.sqrt(prec)
        q = q_values(p_hat, r_hat, horizon)  # [H, N, S, A]
        out[:, e] = _tabular_episode(P, R, horizon, rng, lambda t, s: q[t, rows, s].argmax(-1), observe)
    return out


def tabular_greedy(tasks: Sequence[Dict[str, Any]], episodes: int, horizon: int = 10, seed: int = 0) -> np.ndarray:
    """Myopic Bayes-greedy, vectorised over tasks: in state s take the action with the highest
    posterior-mean reward (:func:`reward_posterior`, the Normal-Normal posterior under the env's own
    prior that :func:`tabular_psrl` samples from), ties broken at random; the posterior
    is updated after every step and carried across the trial's episodes. It ignores transitions
    and never explores on purpose: a yardstick for what remembering each (s, a)'s rewards is
    worth. Returns per (task, episode) (simulated rewards, like the env)."""
    P, R = tabular_arrays(tasks)
    rng = np.random.default_rng(seed)
    n, S, A = R.shape
    rows = np.arange(n)
    r_sum, r_n = np.zeros((n, S, A)), np.zeros((n, S, A))

    def act(t, s):
        mean, _ = reward_posterior(r_sum[rows, s], r_n[rows, s])
        return (mean + 1e-9 * rng.random(mean.shape)).argmax(-1)   # random among equal means

    def observe(s, a, r, s_next):
        r_sum[rows, s, a] += r
        r_n[rows, s, a] += 1

    return np.stack([_tabular_episode(P, R, horizon, rng, act, observe) for _ in range(episodes)], axis=1)


def tabular_baselines(tasks: Sequence[Dict[str, Any]], episodes: int, env_config: Dict[str, Any],
                      seed: int = 0) -> Dict[str, np.ndarray]:
    """Per (task, episode) returns of a random policy, PSRL, myopic Bayes-greedy (all simulated)
    and the per-task optimum (expected), all vectorised over tasks."""
    from distmeta.envs.tabular_mdp import TabularMDPEnv

    horizon = TabularMDPEnv(**env_config).horizon
    return {"random": tabular_random(tasks, episodes, horizon, seed),
            "psrl": tabular_psrl(tasks, episodes, horizon, seed),
            "greedy": tabular_greedy(tasks, episodes, horizon, seed),
            "optimal": tabular_optimal(tasks, episodes, horizon)}


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
