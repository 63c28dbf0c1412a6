"""CartPole and Pendulum with sampled physics: a task is a set of physical
parameters (CartPole: cart mass, pole mass, pole half-length; Pendulum: mass
and length), each scaled from the gymnasium default by a log-uniform factor in
[1/scale, scale] (default scale 2)."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from distmeta.envs import Task


def _log_uniform(rng, base: float, scale: float) -> float:
    return float(base * np.exp(rng.uniform(-np.log(scale), np.log(scale))))


class _SampledPhysics:
    """Task protocol shared by the physics envs: a task maps each name in
    ``DEFAULTS`` to a value; subclasses apply it to the simulator in ``_apply``."""

    DEFAULTS: Dict[str, float] = {}

    def _init_physics(self, scale: float, max_episode_steps: int, task: Optional[Task]) -> None:
        self.scale = float(scale)
        self.max_episode_steps = int(max_episode_steps)
        self._t = 0
        self.set_task(task or dict(self.DEFAULTS))

    def sample_tasks(self, n: int, seed: int) -> List[Task]:
        rng = np.random.default_rng(seed)
        return [{k: _log_uniform(rng, v, self.scale) for k, v in self.DEFAULTS.items()} for _ in range(n)]

    def set_task(self, task: Task) -> None:
        self._task = {k: float(task[k]) for k in self.DEFAULTS}
        self._apply(self._task)

    def _apply(self, task: Task) -> None:
        raise NotImplementedError

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


class CartPolePhysicsEnv(_SampledPhysics, CartPoleEnv):
    DEFAULTS = {"masscart": 1.0, "masspole": 0.1, "length": 0.5}

    def __init__(self, scale: float = 2.0, max_episode_steps: int = 500, task: Optional[Task] = None,
                 render_mode=None):
        CartPoleEnv.__init__(self, render_mode=render_mode)
        self._init_physics(scale, max_episode_steps, task)

    def _apply(self, task: Task) -> None:
        self.masscart, self.masspole, self.length = (task[k] for k in ("masscart", "masspole", "length"))
        self.total_mass = self.masspole + self.masscart
        self.polemass_length = self.masspole * self.length


class PendulumPhysicsEnv(_SampledPhysics, PendulumEnv):
    DEFAULTS = {"m": 1.0, "l": 1.0}

    def __init__(self, scale: float = 2.0, max_episode_steps: int = 200, task: Optional[Task] = None,
                 render_mode=None):
        PendulumEnv.__init__(self, render_mode=render_mode)
        self._init_physics(scale, max_episode_steps, task)

    def _apply(self, task: Task) -> None:
        self.m, self.l = task["m"], task["l"]
