"""Bernoulli multi-armed bandits: ``k`` arms with means drawn from U[0, 1].

One episode is ``pulls_per_episode`` pulls (default 1, as in RL^2 where a trial
of ``n`` pulls is ``n`` one-step episodes joined by the trial wrapper). The
observation carries no information (a constant zero); all the information is in
the rewards, which the RL^2 trial wrapper feeds back.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
from gymnasium import spaces

from distmeta.envs import MetaEnv, Task


class BernoulliBanditEnv(MetaEnv):
    metadata = {"render_modes": []}

    def __init__(self, k: int = 5, pulls_per_episode: int = 1, task: Optional[Task] = None):
        if k < 2:
            raise ValueError(f"k: a bandit needs at least 2 arms, got {k}")
        self.k = int(k)
        self.pulls_per_episode = int(pulls_per_episode)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.k)
        self._task = task or self.sample_tasks(1, 0)[0]
        self._means = np.asarray(self._task["means"], dtype=np.float64)
        self._t = 0

    def sample_tasks(self, n: int, seed: int) -> List[Task]:
        rng = np.random.default_rng(seed)
        return [{"means": [float(m) for m in rng.uniform(0.0, 1.0, self.k)]} for _ in range(n)]

    def set_task(self, task: Task) -> None:
        means = np.asarray(task["means"], dtype=np.float64)
        if means.shape != (self.k,):
            raise ValueError(f"task means: expected {self.k} arms, got {means.shape}")
        self._task = {"means": [float(m) for m in means]}
        self._means = means

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        a = int(action)
        reward = float(self.np_random.random() < self._means[a])
        self._t += 1
        terminated = self._t >= self.pulls_per_episode
        return np.zeros(1, np.float32), reward, terminated, False, {"best_mean": float(self._means.max())}
