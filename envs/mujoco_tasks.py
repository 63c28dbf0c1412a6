"""MuJoCo locomotion task distributions (behind the ``mujoco`` extra:
``pip install 'distmeta[mujoco]'``, i.e. ``gymnasium[mujoco]==1.2.2``).

The MAML paper's (Finn et al. 2017) tasks, with ProMP's (Rothfuss et al. 2019)
reward terms, on gymnasium's ``HalfCheetah-v5`` / ``Ant-v5`` models:

- HalfCheetah-Vel: target forward velocity ~ U[0, 3]; reward
  ``-|v - v_goal| - 0.05 * |a|^2``.
- HalfCheetah-Dir: direction in {-1, +1}; reward ``dir * v - 0.05 * |a|^2``.
- Ant-Dir: direction in {-1, +1} (forward/backward along x); reward
  ``dir * v_x`` plus Ant-v5's survive (+1 while healthy), control
  (``-0.5 * |a|^2``) and contact terms; the episode ends when the Ant is unhealthy.

``v`` is the torso's x velocity (gymnasium's ``info["x_velocity"]``). Actions are
clipped to the action box before they are applied and costed (as rllab's
``normalize`` did for MAML). Horizon 200 (MAML): ``truncated`` at step 200.
``info["reward_forward"]`` / ``info["reward_ctrl"]`` hold the task's terms.

The classes are built lazily so this module imports without MuJoCo; calling a
factory without it raises a :class:`DistmetaError` naming the extra.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, List, Optional

import numpy as np

from distmeta.errors import DistmetaError
from distmeta.envs import Task

EXTRA_MSG = ("{name} needs MuJoCo: install the 'mujoco' extra (pip install 'distmeta[mujoco]', "
             "i.e. gymnasium[mujoco]==1.2.2)")
CTRL_COST = 0.05  # MAML / ProMP HalfCheetah: 0.5 * 1e-1 * |a|^2
_CLASS_NAMES = ("HalfCheetahVelEnv", "HalfCheetahDirEnv", "AntDirEnv")


def _require_mujoco(name: str):
    try:
        import mujoco  # noqa: F401
        from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
        from gymnasium.envs.mujoco.ant_v5 import AntEnv
    except Exception as exc:  # ImportError, or a broken mujoco install
        raise DistmetaError(EXTRA_MSG.format(name=name) + f" ({type(exc).__name__}: {exc})") from None
    return HalfCheetahEnv, AntEnv


@contextlib.contextmanager
def _quiet_deprecations():
    """MuJoCo 4 warns that gymnasium's half_cheetah.xml uses the deprecated ``settotalmass``
    and, with no handler set, appends each warning to ./MUJOCO_LOG.TXT. While a model
    compiles, drop deprecation notices and pass any other MuJoCo warning to Python."""
    import mujoco

    old = mujoco.get_mju_user_warning()

    def handler(msg: str) -> None:
        if "deprecated" not in msg:
            warnings.warn(f"MuJoCo: {msg}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(old)


@functools.lru_cache(maxsize=None)
def _build_classes():
    HalfCheetahEnv, AntEnv = _require_mujoco("HalfCheetah/Ant tasks")
    from gymnasium.utils import EzPickle

    class _TaskMujoco:
        """Horizon, action clipping, task accessors and pickling shared by the MuJoCo task envs."""

        def _init(self, base, horizon: int, task: Optional[Task], default: Task, kwargs) -> None:
            with _quiet_deprecations():
                base.__init__(self, **kwargs)
            # pickle as this class with these arguments (the base EzPickle stored the base's)
            EzPickle.__init__(self, horizon=horizon, task=task, **kwargs)
            self.horizon, self._t = int(horizon), 0
            self.set_task(task or default)

        def __getstate__(self):
            state = dict(EzPickle.__getstate__(self))
            state["_ezpickle_kwargs"] = {**state["_ezpickle_kwargs"], "task": self.get_task()}
            return state

        def _clip(self, action) -> np.ndarray:
            return np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)

        def _tick(self, truncated: bool) -> bool:
            self._t += 1
            return bool(truncated) or self._t >= self.horizon

        def get_task(self) -> Task:
            return dict(self._task)

        def reset(self, *, seed=None, options=None):
            self._t = 0
            return super().reset(seed=seed, options=options)

    class _Direction:
        """Tasks that reward running in a direction: {"direction": +1 or -1}."""
        task_count = 2  # a finite, tiny task set: no disjoint validation/test tasks exist

        def sample_tasks(self, n: int, seed: int) -> List[Task]:
            rng = np.random.default_rng(seed)
            return [{"direction": float(d)} for d in rng.choice([-1.0, 1.0], n)]

        def set_task(self, task: Task) -> None:
            d = float(task["direction"])
            if d not in (-1.0, 1.0):
                raise DistmetaError(f"direction: must be -1 or +1, got {task['direction']!r}")
            self._task = {"direction": d}

    class _Cheetah(_TaskMujoco, HalfCheetahEnv):
        def step(self, action):
            action = self._clip(action)
            obs, _, terminated, truncated, info = HalfCheetahEnv.step(self, action)
            forward = self._forward(float(info["x_velocity"]))
            ctrl = CTRL_COST * float(np.square(action).sum())
            info["reward_forward"], info["reward_ctrl"] = forward, -ctrl
            return obs, forward - ctrl, terminated, self._tick(truncated), info

    class HalfCheetahVelEnv(_Cheetah):
        """Run at a target forward velocity ~ U[0, 3]: reward -|v - v_goal| - 0.05 |a|^2."""

        def __init__(self, horizon: int = 200, task: Optional[Task] = None, **kwargs: Any):
            self._init(HalfCheetahEnv, horizon, task, {"velocity": 1.0}, kwargs)

        def sample_tasks(self, n: int, seed: int) -> List[Task]:
            rng = np.random.default_rng(seed)
            return [{"velocity": float(v)} for v in rng.uniform(0.0, 3.0, n)]

        def set_task(self, task: Task) -> None:
            self._task = {"velocity": float(task["velocity"])}

        def _forward(self, v: float) -> float:
            return -abs(v - self._task["velocity"])

    class HalfCheetahDirEnv(_Direction, _Cheetah):
        """Run forward (+1) or backward (-1): reward dir * v - 0.05 |a|^2."""

        def __init__(self, horizon: int = 200, task: Optional[Task] = None, **kwargs: Any):
            self._init(HalfCheetahEnv, horizon, task, {"direction": 1.0}, kwargs)

        def _forward(self, v: float) -> float:
            return self._task["direction"] * v

    class AntDirEnv(_Direction, _TaskMujoco, AntEnv):
        """Ant-v5 running forward (+1) or backward (-1) along x: dir * v_x + survive - ctrl - contact."""

        def __init__(self, horizon: int = 200, task: Optional[Task] = None, **kwargs: Any):
            self._init(AntEnv, horizon, task, {"direction": 1.0}, kwargs)

        def step(self, action):
            obs, _, terminated, truncated, info = AntEnv.step(self, self._clip(action))
            forward = self._task["direction"] * float(info["x_velocity"])
            info["reward_forward"] = forward
            reward = forward + float(info["reward_survive"]) + float(info["reward_ctrl"]) \
                + float(info["reward_contact"])
            return obs, reward, terminated, self._tick(truncated), info

    classes = (HalfCheetahVelEnv, HalfCheetahDirEnv, AntDirEnv)
    for cls in classes:  # importable by name (module __getattr__), so instances pickle
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return classes


def _classes(name: str):
    _require_mujoco(name)  # checked on every call: a clear error whenever MuJoCo is unusable
    return _build_classes()


def __getattr__(attr: str):
    if attr in _CLASS_NAMES:
        return _classes(attr)[_CLASS_NAMES.index(attr)]
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def make_half_cheetah_vel(**kwargs: Any):
    return _classes("HalfCheetah-Vel")[0](**kwargs)


def make_half_cheetah_dir(**kwargs: Any):
    return _classes("HalfCheetah-Dir")[1](**kwargs)


def make_ant_dir(**kwargs: Any):
    return _classes("Ant-Dir")[2](**kwargs)
