"""Meta-World ML1 / ML10 adapter (behind the ``metaworld`` extra:
``pip install 'distmeta[metaworld]'``, i.e. metaworld==3.1.1 with mujoco==3.3.0,
installed in one resolve).

A task is ``{"env_name": str, "index": int, "split": "train" | "test"}``: a
plain, serialisable pointer into the benchmark's own fixed task lists (Meta-World
tasks are pickled goal states, so the description stays an index). The adapter
exposes the distmeta task protocol over Meta-World's ``train_classes`` /
``train_tasks`` / ``test_tasks``: ``sample_tasks`` draws from the training tasks,
``held_out_tasks`` from Meta-World's own test tasks (new goals; for ML10 also the
five held-out task classes), which is what ``task_splits`` uses as the test set.
Observations are float32 (Meta-World's are float64); an episode ends after
``horizon`` steps, at most Meta-World's ``max_path_length`` (500).
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional

import gymnasium as gym
import numpy as np

from distmeta.errors import DistmetaError
from distmeta.envs import Task

EXTRA_MSG = ("Meta-World needs the 'metaworld' extra (pip install 'distmeta[metaworld]', i.e. "
             "metaworld==3.1.1 and mujoco==3.3.0 in one resolve)")


def _require_metaworld():
    try:
        import metaworld
    except Exception as exc:
        raise DistmetaError(EXTRA_MSG + f" ({type(exc).__name__}: {exc})") from None
    return metaworld


@functools.lru_cache(maxsize=8)
def _benchmark(benchmark: str, env_name: str, seed: int):
    """One Meta-World benchmark object per (benchmark, env_name, seed) and process: building one
    samples its goal lists (seconds), and a sampler holds many envs over the same benchmark."""
    metaworld = _require_metaworld()
    if benchmark == "ML1":
        return metaworld.ML1(env_name, seed=seed)
    if benchmark == "ML10":
        return metaworld.ML10(seed=seed)
    raise DistmetaError(f"benchmark: {benchmark!r} is not one of ['ML1', 'ML10']")


class MetaWorldAdapter(gym.Env):
    """One gymnasium env over a Meta-World benchmark (ML1 or ML10), task-settable."""

    def __init__(self, benchmark: str = "ML1", env_name: str = "reach-v3", seed: int = 0,
                 horizon: int = 500, task: Optional[Task] = None):
        _require_metaworld()  # before the cache, so a missing extra is always named
        self.bench = _benchmark(benchmark, env_name if benchmark == "ML1" else "", int(seed))
        self._envs: Dict[str, Any] = {}
        self._classes = {**dict(self.bench.train_classes), **dict(self.bench.test_classes)}
        first = task or {"env_name": next(iter(self.bench.train_classes)), "index": 0, "split": "train"}
        self._env = None
        self.set_task(first)
        limit = int(getattr(self._env, "max_path_length", horizon))
        if not 0 < int(horizon) <= limit:
            raise DistmetaError(f"horizon: must be in [1, {limit}] (Meta-World's max_path_length), got {horizon}")
        self.horizon = int(horizon)
        inner = self._env.observation_space
        self.observation_space = gym.spaces.Box(inner.low.astype(np.float32), inner.high.astype(np.float32),
                                                dtype=np.float32)
        self.action_space = self._env.action_space
        self._t = 0

    def _tasks(self, split: str) -> List[Any]:
        return list(self.bench.train_tasks if split == "train" else self.bench.test_tasks)

    def sample_tasks(self, n: int, seed: int, split: str = "train") -> List[Task]:
        tasks = self._tasks(split)
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(tasks), size=n, replace=n > len(tasks))
        return [{"env_name": tasks[i].env_name, "index": int(i), "split": split} for i in idx]

    def held_out_tasks(self, n: int, seed: int) -> List[Task]:
        """Meta-World's own test tasks (goal positions, and for ML10 unseen classes)."""
        return self.sample_tasks(n, seed, split="test")

    def set_task(self, task: Task) -> None:
        name = task["env_name"]
        if name not in self._envs:
            self._envs[name] = self._classes[name]()
        self._env = self._envs[name]
        self._env.set_task(self._tasks(task.get("split", "train"))[int(task["index"])])
        self._task = {"env_name": name, "index": int(task["index"]), "split": task.get("split", "train")}

    def get_task(self) -> Task:
        return dict(self._task)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._t = 0
        obs, info = self._env.reset(seed=seed)
        return np.asarray(obs, np.float32), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self._env.step(action)
        self._t += 1
        return (np.asarray(obs, np.float32), float(reward), bool(terminated),
                bool(truncated) or self._t >= self.horizon, info)


def make_ml1(**kwargs: Any) -> MetaWorldAdapter:
    return MetaWorldAdapter(benchmark="ML1", **kwargs)


def make_ml10(**kwargs: Any) -> MetaWorldAdapter:
    return MetaWorldAdapter(benchmark="ML10", **kwargs)
