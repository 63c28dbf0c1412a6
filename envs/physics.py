"""CartPole and Pendulum with sampled physics: a task is a set of physical
parameters (CartPole: cart mass, pole mass, pole half-length; Pendulum: mass
and length), each scaled from the gymnasium default by a log-uniform factor in
[1/scale, scale] (default scale 2)."""
from __future__ import annotations

from typing import List, Optional

import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from distmeta.envs import Task


def _log_uniform(rng, base: float, scale: float) -> float:
    return float(base * np.exp(rng.uniform(-np.log(scale), np.log(scale))))


class CartPolePhysicsEnv(CartPoleEnv):
    DEFAULTS = {"masscart": 1.0, "masspole": 0.1, "length": 0.5}

    def __init__(self, scale: float = 2.0, max_episode_steps: int = 500, task: Optional[Task] = None,
                 render_mode=None):
        super().__init__(render_mode=render_mode)
        self.scale = float(scale)
        self.max_episode_steps = int(max_episode_steps)
        self._t = 0
        self.set_task(task or dict(self.DEFAULTS))

    def sample_tasks(self, n: int, seed: int) -> List[Task]:
        rng = np.random.default_rng(seed)
        return [{k: _log_uniform(rng, v, self.scale) for k, v in self.DEFAULTS.items()} for _ in range(n)]

    def set_task(self, task: Task) -> None:
        self._task = {k: float(task[k]) for k in self.DEFAULTS}
        self.masscart, self.masspole, self.length = (self._task[k] for k in ("masscart", "masspole", "length"))
        self.total_mass = self.masspole + self.masscart
        self.polemass_length = self.masspole * self.length

    def get_task(self) -> Task:
        return dict(self._task)

    def reset(self, *, seed=None, options=None):
        if options and "task" in options:
            self.set_task(options["task"])
        self._t = 0
        return super().reset(seed=seed)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self._t += 1
        return obs, reward, terminated, truncated or self._t >= self.max_episode_steps, info


class PendulumPhysicsEnv(PendulumEnv):
    DEFAULTS = {"m": 1.0, "l": 1.0}

    def __init__(self, scale: float = 2.0, max_episode_steps: int = 200, task: Optional[Task] = None,
                 render_mode=None):
        super().__init__(render_mode=render_mode)
        self.scale = float(scale)
        self.max_episode_steps = int(max_episode_steps)
        self._t = 0
        self.set_task(task or dict(self.DEFAULTS))

    def sample_tasks(self, n: int, seed: int) -> List[Task]:
        rng = np.random.default_rng(seed)
        return [{k: _log_uniform(rng, v, self.scale) for k, v in self.DEFAULTS.items()} for _ in range(n)]

    def set_task(self, task: Task) -> None:
        self._task = {k: float(task[k]) for k in self.DEFAULTS}
        self.m, self.l = self._task["m"], self._task["l"]

    def get_task(self) -> Task:
        return dict(self._task)

    def reset(self, *, seed=None, options=None):
        if options and "task" in options:
            self.set_task(options["task"])
        self._t = 0
        return super().reset(seed=seed, options=None)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self._t += 1
        return obs, reward, terminated, truncated or self._t >= self.max_episode_steps, info
