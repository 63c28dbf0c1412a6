"""Finite-horizon Gittins index baseline for Bernoulli bandits: the index table against a plain recursive
DP with bisection, its textbook properties, and the policy against Thompson sampling, UCB1 and random."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from distmeta.rl.baselines import (bandit_gittins, bandit_random, bandit_thompson, bandit_ucb1,
                                   gittins_table)


def _brute_index(a: int, b: int, h: int) -> float:
    """Largest lam at which pulling once more beats retiring for lam per remaining pull (bisection)."""

    def advantage(lam: float) -> float:
        @lru_cache(maxsize=None)
        def V(a: int, b: int, h: int) -> float:
            if h == 0:
                return 0.0
            p = a / (a + b)
            return max(lam * h, p + p * V(a + 1, b, h - 1) + (1 - p) * V(a, b + 1, h - 1))

        p = a / (a + b)
        return p + p * V(a + 1, b, h - 1) + (1 - p) * V(a, b + 1, h - 1) - lam * h

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if advantage(mid) >= 0 else (lo, mid)
    return 0.5 * (lo + hi)


def test_gittins_index_matches_brute_force_small_horizon():
    n = 7
    table = gittins_table(n)
    states = [(a, b, h) for a in range(1, n + 1) for b in range(1, n + 1) for h in range(1, n + 1)
              if a + b - 2 + h <= n]
    got = table(*np.array(states).T)
    want = np.array([_brute_index(*s) for s in states])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_gittins_index_exact_when_a_child_index_sits_on_a_grid_point():
    # Beta(2, 1), two pulls left: pull again only after a success (child index 3/4), so the index is
    # (2/3 + 2/3 * 3/4) / (1 + 2/3) = 0.7; with the lam grid {0.25, 0.75} the child ties at lam = 0.75 and
    # must count as "pull" there for the rule that is optimal just below 0.75 (else the index reads 2/3)
    assert gittins_table(4, grid=2)(2, 1, 2) == pytest.approx(0.7, abs=1e-6)
    assert _brute_index(2, 1, 2) == pytest.approx(0.7, abs=1e-9)


@pytest.mark.parametrize("state", [(1, 1, 20), (3, 2, 16), (2, 6, 12), (9, 4, 10)])
def test_gittins_index_matches_brute_force_in_the_horizon_100_table(state):
    assert gittins_table(100)(*state) == pytest.approx(_brute_index(*state), abs=2e-4)


def test_gittins_index_properties():
    n = 100
    table = gittins_table(n)
    a, b = np.meshgrid(np.arange(1, 40), np.arange(1, 40), indexing="ij")
    a, b = a.ravel(), b.ravel()
    mean = a / (a + b)
    # one pull left: the index is the posterior mean
    np.testing.assert_allclose(table(a, b, 1), mean, atol=1e-6)
    # more pulls left: >= the mean, non-decreasing in h (up to the table's ~1e-4 accuracy)
    hmax = n - (a + b - 2)
    prev = table(a, b, 1)
    for h in range(2, int(hmax.max()) + 1):
        ok = hmax >= h
        cur = table(a[ok], b[ok], h)
        assert np.all(cur >= mean[ok] - 1e-6)
        assert np.all(cur >= prev[ok] - 2e-4)
        prev = prev.copy()
        prev[ok] = cur
    # strictly above the mean with much left to learn; Beta(1, 1) with many pulls left is worth > 0.5
    assert table(1, 1, 100) > table(1, 1, 10) > table(1, 1, 2) > 0.5
    # monotone in the evidence: one more success raises it, one more failure lowers it
    assert table(3, 2, 50) > table(2, 2, 50) > table(2, 3, 50)
    with pytest.raises(ValueError):
        table(1, 1, n + 1)


def test_gittins_policy_beats_ucb1_and_random_and_matches_thompson():
    means = np.random.default_rng(123).uniform(size=(500, 5))
    totals = {name: fn(means, 100, seed=7).sum(axis=1) for name, fn in
              [("gittins", bandit_gittins), ("thompson", bandit_thompson), ("ucb1", bandit_ucb1),
               ("random", bandit_random)]}

    def gap(x, y):  # mean paired difference of total reward and its standard error
        d = totals[x] - totals[y]
        return d.mean(), d.std(ddof=1) / np.sqrt(len(d))

    g, se = gap("gittins", "thompson")
    assert g > -2 * se - 0.5, (g, se)
    for other in ("ucb1", "random"):
        g, se = gap("gittins", other)
        assert g > 3 * se, (other, g, se)
