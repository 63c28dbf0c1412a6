"""Meta-RL task environments (gymnasium API, task-settable), imported as ``distmeta.envs``.

Every environment implements the task-distribution protocol :class:`TaskEnv`:

- ``sample_tasks(n, seed) -> list[dict]``: ``n`` plain, JSON-serialisable task
  descriptions, a pure function of ``(n, seed)``;
- ``set_task(task)`` / ``get_task()``: switch the environment to a task (takes
  effect at the next ``reset``) and read it back.

``task_splits(env, n_train, n_val, n_test, seed)`` gives disjoint train,
validation and test task sets. Registered gymnasium ids: ``distmeta/Bandit-v0``,
``distmeta/TabularMDP-v0``, ``distmeta/PointNav-v0``,
``distmeta/CartPolePhysics-v0``, ``distmeta/PendulumPhysics-v0`` and, behind
the ``mujoco`` extra, ``distmeta/HalfCheetahVel-v0``,
``distmeta/HalfCheetahDir-v0``, ``distmeta/AntDir-v0``; behind the
``metaworld`` extra, ``distmeta/MetaWorldML1-v0`` and ``distmeta/MetaWorldML10-v0``.

Inside RLlib, set a task on every EnvRunner with
``env_runner.env.unwrapped.call("set_task", task)`` (see :func:`set_task_on_env`).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Protocol, Sequence, Tuple, runtime_checkable

import gymnasium as gym
import numpy as np

from distmeta.errors import DistmetaError

Task = Dict[str, Any]


@runtime_checkable
class TaskEnv(Protocol):
    def sample_tasks(self, n: int, seed: int) -> List[Task]: ...

    def set_task(self, task: Task) -> None: ...

    def get_task(self) -> Task: ...


class MetaEnv(gym.Env):
    """Base class: a gymnasium env with a settable task drawn from a distribution."""

    _task: Task

    def sample_tasks(self, n: int, seed: int) -> List[Task]:
        raise NotImplementedError

    def set_task(self, task: Task) -> None:
        self._task = dict(task)

    def get_task(self) -> Task:
        return dict(self._task)


def task_key(task: Task) -> str:
    """A canonical string for a task (used to prove train/test disjointness)."""
    return json.dumps(task, sort_keys=True, default=float)


def _stream_seed(seed: int, *stream: int) -> int:
    return int(np.random.SeedSequence([int(seed), *stream]).generate_state(1)[0])


def _draw_disjoint(env: Any, n: int, seed: int, stream: int, exclude: set, what: str) -> List[Task]:
    """``n`` distinct tasks from seed stream ``(seed, stream)`` whose keys are not in ``exclude``."""
    out: List[Task] = []
    taken = set(exclude)
    for attempt in range(101):
        if len(out) >= n:
            return out
        for t in env.sample_tasks(n - len(out), _stream_seed(seed, stream, attempt)):
            if task_key(t) not in taken:
                taken.add(task_key(t))
                out.append(t)
    raise DistmetaError(f"task_splits: found only {len(out)} of the {n} {what} tasks disjoint from the "
                        f"{len(exclude)} tasks already drawn; the task distribution is too small "
                        f"(lower rl.train_tasks or eval.episodes)")


def task_splits(env: Any, n_train: int, n_val: int, n_test: int,
                seed: int = 0) -> Tuple[List[Task], List[Task], List[Task]]:
    """Disjoint train, validation and test task lists, deterministic in ``seed``.

    Train tasks come from seed stream ``(seed, 0)`` (none when ``n_train`` is 0: a
    fresh task per trial), test tasks from ``(seed, 1)``, validation tasks from
    ``(seed, 2)``. A validation task never equals a train task and a test task
    never equals a train or validation task. An env that ships its own held-out set
    (``held_out_tasks(n, seed)``: Meta-World's test goals) supplies the test tasks
    from it, and its validation tasks come from its training distribution. An env
    with a finite, tiny task set (``task_count``, e.g. HalfCheetah-Dir and Ant-Dir:
    two directions) cannot have disjoint splits: its validation and test lists are
    i.i.d. draws of the same tasks, and the docs report every task.
    """
    env = getattr(env, "unwrapped", env)
    train = env.sample_tasks(n_train, _stream_seed(seed, 0)) if n_train else []
    if getattr(env, "task_count", None) is not None:
        if n_train:
            raise DistmetaError(f"task_splits: the task distribution is too small for disjoint splits "
                               f"({env.task_count} tasks); use train_tasks: 0")
        return train, env.sample_tasks(n_val, _stream_seed(seed, 2)), env.sample_tasks(n_test, _stream_seed(seed, 1))
    seen = {task_key(t) for t in train}
    val = _draw_disjoint(env, n_val, seed, 2, seen, "validation")
    if hasattr(env, "held_out_tasks"):
        return train, val, env.held_out_tasks(n_test, _stream_seed(seed, 1))
    return train, val, _draw_disjoint(env, n_test, seed, 1, seen | {task_key(t) for t in val}, "test")


def set_task_on_env(env: Any, task: Task) -> None:
    """Set ``task`` on a gymnasium env or vector env (RLlib EnvRunners hold vector envs)."""
    if hasattr(env, "call") and hasattr(env, "num_envs"):
        env.call("set_task", task)
    else:
        getattr(env, "unwrapped", env).set_task(task)


ENV_IDS: Dict[str, str] = {
    "distmeta/Bandit-v0": "distmeta.envs.bandit:BernoulliBanditEnv",
    "distmeta/TabularMDP-v0": "distmeta.envs.tabular_mdp:TabularMDPEnv",
    "distmeta/PointNav-v0": "distmeta.envs.point_nav:PointNavEnv",
    "distmeta/CartPolePhysics-v0": "distmeta.envs.physics:CartPolePhysicsEnv",
    "distmeta/PendulumPhysics-v0": "distmeta.envs.physics:PendulumPhysicsEnv",
    "distmeta/HalfCheetahVel-v0": "distmeta.envs.mujoco_tasks:make_half_cheetah_vel",
    "distmeta/HalfCheetahDir-v0": "distmeta.envs.mujoco_tasks:make_half_cheetah_dir",
    "distmeta/AntDir-v0": "distmeta.envs.mujoco_tasks:make_ant_dir",
    "distmeta/MetaWorldML1-v0": "distmeta.envs.metaworld_adapter:make_ml1",
    "distmeta/MetaWorldML10-v0": "distmeta.envs.metaworld_adapter:make_ml10",
}
# Ids that need no optional extra.
CORE_ENV_IDS: List[str] = ["distmeta/Bandit-v0", "distmeta/TabularMDP-v0", "distmeta/PointNav-v0",
                           "distmeta/CartPolePhysics-v0", "distmeta/PendulumPhysics-v0"]
# Ids behind the ``mujoco`` extra and behind the ``metaworld`` extra.
MUJOCO_ENV_IDS: List[str] = ["distmeta/HalfCheetahVel-v0", "distmeta/HalfCheetahDir-v0", "distmeta/AntDir-v0"]
METAWORLD_ENV_IDS: List[str] = ["distmeta/MetaWorldML1-v0", "distmeta/MetaWorldML10-v0"]

# Short names accepted in distmeta configs.
ALIASES: Dict[str, str] = {
    "bandit": "distmeta/Bandit-v0",
    "tabular_mdp": "distmeta/TabularMDP-v0",
    "point_nav": "distmeta/PointNav-v0",
    "cartpole_physics": "distmeta/CartPolePhysics-v0",
    "pendulum_physics": "distmeta/PendulumPhysics-v0",
    "halfcheetah_vel": "distmeta/HalfCheetahVel-v0",
    "halfcheetah_dir": "distmeta/HalfCheetahDir-v0",
    "ant_dir": "distmeta/AntDir-v0",
    "metaworld_ml1": "distmeta/MetaWorldML1-v0",
    "metaworld_ml10": "distmeta/MetaWorldML10-v0",
}
SHORT_NAMES = sorted(ALIASES)


def register_all() -> None:
    """Register the distmeta env ids with gymnasium (idempotent)."""
    for env_id, entry in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry, disable_env_checker=True)


def resolve_env_id(name: str) -> str:
    return ALIASES.get(name, name)


def make(name: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` for a distmeta id or short alias (registers on first use)."""
    register_all()
    return gym.make(resolve_env_id(name), **kwargs)


register_all()

__all__ = ["Task", "TaskEnv", "MetaEnv", "task_key", "task_splits", "set_task_on_env", "ENV_IDS",
           "CORE_ENV_IDS", "MUJOCO_ENV_IDS", "METAWORLD_ENV_IDS", "ALIASES", "SHORT_NAMES", "register_all", "resolve_env_id", "make"]
