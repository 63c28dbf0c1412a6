"""MuJoCo locomotion task distributions (behind the ``mujoco`` extra:
``pip install 'distmeta[mujoco]'``, i.e. ``gymnasium[mujoco]==1.2.2``).

- HalfCheetah-Vel: target forward velocity ~ U[0, 3] (MAML); reward
  ``-|v - v_goal| - 0.05 * |a|^2``.
- HalfCheetah-Dir: direction in {-1, +1}; reward ``dir * v - 0.05 * |a|^2``.
- Ant-Dir: direction in {-1, +1} (forward/backward, MAML/ProMP); reward
  ``dir * v_x`` plus the standard Ant survive/contact terms.
Horizon 200 (MAML). The classes are built lazily so this module imports
without MuJoCo; calling a factory without it raises a :class:`DistmetaError`
naming the extra.
"""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

from distmeta.errors import DistmetaError
from distmeta.envs import Task

EXTRA_MSG = ("{name} needs MuJoCo: install the 'mujoco' extra (pip install 'distmeta[mujoco]', "
             "i.e. gymnasium[mujoco]==1.2.2)")


def _require_mujoco(name: str):
    try:
        import mujoco  # noqa: F401
        from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
        from gymnasium.envs.mujoco.ant_v5 import AntEnv
    except Exception as exc:  # ImportError, or a broken mujoco install
        raise DistmetaError(EXTRA_MSG.format(name=name) + f" ({type(exc).__name__}: {exc})") from None
    return HalfCheetahEnv, AntEnv


def _build_classes():
    HalfCheetahEnv, AntEnv = _require_mujoco("HalfCheetah/Ant tasks")

    class _Horizon:
        """Episode horizon and the task accessors shared by the MuJoCo task envs."""

        def _tick(self, truncated: bool) -> bool:
            self._t += 1
            return truncated or self._t >= self.horizon

        def get_task(self) -> Task:
            return dict(self._task)

        def reset(self, *, seed=None, options=None):
            self._t = 0
            return super().reset(seed=seed, options=options)

    class _Direction:
        """Tasks that reward running in a direction: {"direction": +1 or -1}."""

        def sample_tasks(self, n: int, seed: int) -> List[Task]:
            rng = np.random.default_rng(seed)
            return [{"direction": float(d)} for d in rng.choice([-1.0, 1.0], n)]

        def set_task(self, task: Task) -> None:
            self._task = {"direction": float(task["direction"])}

    class HalfCheetahVelEnv(_Horizon, HalfCheetahEnv):
        def __init__(self, horizon: int = 200, task: Optional[Task] = None, **kwargs: Any):
            super().__init__(**kwargs)
            self.horizon, self._t = int(horizon), 0
            self.set_task(task or {"velocity": 1.0})

        def sample_tasks(self, n: int, seed: int) -> List[Task]:
            rng = np.random.default_rng(seed)
            return [{"velocity": float(v)} for v in rng.uniform(0.0, 3.0, n)]

        def set_task(self, task: Task) -> None:
            self._task = {"velocity": float(task["velocity"])}

        def step(self, action):
            obs, _, terminated, truncated, info = super().step(action)
            ctrl = 0.05 * float(np.square(action).sum())
            reward = -abs(float(info["x_velocity"]) - self._task["velocity"]) - ctrl
            return obs, reward, terminated, self._tick(truncated), info

    class HalfCheetahDirEnv(_Direction, HalfCheetahVelEnv):
        def __init__(self, horizon: int = 200, task: Optional[Task] = None, **kwargs: Any):
            super().__init__(horizon=horizon, task=task or {"direction": 1.0}, **kwargs)

        def step(self, action):
            obs, _, terminated, truncated, info = HalfCheetahEnv.step(self, action)
            ctrl = 0.05 * float(np.square(action).sum())
            reward = self._task["direction"] * float(info["x_velocity"]) - ctrl
            return obs, reward, terminated, self._tick(truncated), info

    class AntDirEnv(_Direction, _Horizon, AntEnv):
        def __init__(self, horizon: int = 200, task: Optional[Task] = None, **kwargs: Any):
            super().__init__(**kwargs)
            self.horizon, self._t = int(horizon), 0
            self.set_task(task or {"direction": 1.0})

        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            forward = float(info.get("forward_reward", info.get("x_velocity", 0.0)))
            reward = reward - forward + self._task["direction"] * float(info["x_velocity"])
            return obs, reward, terminated, self._tick(truncated), info

    return HalfCheetahVelEnv, HalfCheetahDirEnv, AntDirEnv


def make_half_cheetah_vel(**kwargs: Any):
    return _build_classes()[0](**kwargs)


def make_half_cheetah_dir(**kwargs: Any):
    return _build_classes()[1](**kwargs)


def make_ant_dir(**kwargs: Any):
    return _build_classes()[2](**kwargs)
