"""2D point navigation to a hidden goal (MAML paper, Finn et al. 2017).

The agent starts at the origin; actions are displacements clipped to
[-0.1, 0.1]^2; the reward is the negative Euclidean distance to the goal;
goals are drawn from U[-0.5, 0.5]^2; horizon 100. With ``oracle=True`` the goal
is part of the observation (the ceiling baseline).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
from gymnasium import spaces

from distmeta.envs import MetaEnv, Task


class PointNavEnv(MetaEnv):
    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 100, goal_range: float = 0.5, max_action: float = 0.1,
                 oracle: bool = False, task: Optional[Task] = None):
        self.horizon, self.goal_range, self.max_action = int(horizon), float(goal_range), float(max_action)
        self.oracle = bool(oracle)
        dim = 4 if self.oracle else 2
        bound = self.horizon * self.max_action + self.goal_range  # the farthest reachable point
        self.observation_space = spaces.Box(-bound, bound, shape=(dim,), dtype=np.float32)
        self.action_space = spaces.Box(-self.max_action, self.max_action, shape=(2,), dtype=np.float32)
        self.set_task(task or self.sample_tasks(1, 0)[0])
        self._pos = np.zeros(2)
        self._t = 0

    def sample_tasks(self, n: int, seed: int) -> List[Task]:
        rng = np.random.default_rng(seed)
        return [{"goal": [float(g) for g in rng.uniform(-self.goal_range, self.goal_range, 2)]} for _ in range(n)]

    def set_task(self, task: Task) -> None:
        goal = np.asarray(task["goal"], dtype=np.float64)
        if goal.shape != (2,):
            raise ValueError(f"task goal: expected 2 coordinates, got {goal.shape}")
        self._task = {"goal": [float(g) for g in goal]}
        self._goal = goal

    def _obs(self):
        if self.oracle:
            return np.concatenate([self._pos, self._goal]).astype(np.float32)
        return self._pos.astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._pos = np.zeros(2)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -self.max_action, self.max_action)
        self._pos = self._pos + a
        dist = float(np.linalg.norm(self._pos - self._goal))
        self._t += 1
        return self._obs(), -dist, False, self._t >= self.horizon, {"distance": dist}
