"""Random tabular MDPs as in RL^2 (Duan et al., 2016): 10 states, 5 actions,
horizon 10. Transitions ~ Dirichlet(1) per (state, action); mean rewards ~ N(1, 1),
observed rewards ~ N(mean, 1). Every episode starts in state 0. Observations
are one-hot states.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
from gymnasium import spaces

from distmeta.envs import MetaEnv, Task

# The task distribution (what a Bayesian baseline such as PSRL takes as its prior):
TRANSITION_CONCENTRATION = 1.0   # P(. | s, a) ~ Dirichlet(1, ..., 1)
REWARD_PRIOR_MEAN = 1.0          # mean reward r(s, a) ~ N(1, 1)
REWARD_PRIOR_STD = 1.0
REWARD_NOISE_STD = 1.0           # observed reward ~ N(r(s, a), 1)


class TabularMDPEnv(MetaEnv):
    metadata = {"render_modes": []}

    def __init__(self, num_states: int = 10, num_actions: int = 5, horizon: int = 10,
                 task: Optional[Task] = None):
        self.num_states, self.num_actions, self.horizon = int(num_states), int(num_actions), int(horizon)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.num_states,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.num_actions)
        self.set_task(task or self.sample_tasks(1, 0)[0])
        self._s = 0
        self._t = 0

    def sample_tasks(self, n: int, seed: int) -> List[Task]:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            p = rng.dirichlet(np.full(self.num_states, TRANSITION_CONCENTRATION),
                              size=(self.num_states, self.num_actions))
            r = rng.normal(REWARD_PRIOR_MEAN, REWARD_PRIOR_STD, size=(self.num_states, self.num_actions))
            out.append({"transitions": p.tolist(), "reward_means": r.tolist()})
        return out

    def set_task(self, task: Task) -> None:
        p = np.asarray(task["transitions"], dtype=np.float64)
        r = np.asarray(task["reward_means"], dtype=np.float64)
        if p.shape != (self.num_states, self.num_actions, self.num_states) or r.shape != p.shape[:2]:
            raise ValueError(f"task: expected transitions {(self.num_states, self.num_actions, self.num_states)}"
                             f" and reward_means {(self.num_states, self.num_actions)}")
        self._task = {"transitions": p.tolist(), "reward_means": r.tolist()}
        self._p = p / p.sum(-1, keepdims=True)
        self._r = r

    def _obs(self):
        o = np.zeros(self.num_states, np.float32)
        o[self._s] = 1.0
        return o

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._s, self._t = 0, 0
        return self._obs(), {}

    def step(self, action):
        a = int(action)
        reward = float(self.np_random.normal(self._r[self._s, a], REWARD_NOISE_STD))
        self._s = int(self.np_random.choice(self.num_states, p=self._p[self._s, a]))
        self._t += 1
        return self._obs(), reward, False, self._t >= self.horizon, {}

    def optimal_value(self) -> float:
        """Expected return of the per-task optimal policy over one episode (value iteration)."""
        return float(value_iteration(self._p, self._r, self.horizon)[0])


def value_iteration(p: np.ndarray, r: np.ndarray, horizon: int) -> np.ndarray:
    """Finite-horizon optimal state values ``V_0(s)`` for transitions ``p[s, a, s']``, rewards ``r[s, a]``."""
    v = np.zeros(p.shape[0])
    for _ in range(horizon):
        v = (r + p @ v).max(axis=1)
    return v


def q_values(p: np.ndarray, r: np.ndarray, horizon: int) -> np.ndarray:
    """Finite-horizon optimal action values, batched over leading axes: ``p[..., s, a, s']``,
    ``r[..., s, a]`` -> ``q[t, ..., s, a]``, the value of taking ``a`` in ``s`` after ``t`` steps
    (``horizon - t`` steps left) and acting optimally afterwards; ``q[0].max(-1)`` is
    :func:`value_iteration`'s ``V_0``."""
    q = np.empty((horizon,) + r.shape)
    v = np.zeros(r.shape[:-1])
    for t in range(horizon - 1, -1, -1):
        q[t] = r + np.einsum("...sat,...t->...sa", p, v)
        v = q[t].max(-1)
    return q
