"""The RL^2 trial wrapper: K episodes of one task joined into one episode.

RLlib resets a stateful RLModule's recurrent state at every episode boundary.
RL^2 (Duan et al., 2016) needs the state to carry across the K episodes of one
task (a *trial*) and to reset between tasks. :class:`TrialWrapper` makes a
trial one gymnasium episode, so RLlib's reset falls exactly between trials.

Observation: ``[obs, prev_action, prev_reward, sub_episode_done]`` as one flat
float32 Box (a one-hot previous action for discrete action spaces), and with
``trial_progress=True`` one more entry, ``k / K``: the fraction of the trial's K
episodes already finished. A finite-horizon trial's optimal policy depends on
the episodes left (the Gittins index of a bandit arm does), which a recurrent
policy would otherwise have to count for itself. With ``prev_obs=True`` the
observation also carries the previous observation, so that one input holds the
whole transition ``(s_{t-1}, a_{t-1}, r_{t-1}, s_t)``:
``[obs, prev_obs, prev_action, prev_reward, sub_episode_done(, k / K)]``
(``prev_obs`` is zeros at a trial's first step; at a sub-episode boundary it is
the observation the last action was taken in, ``obs`` the new episode's first).
A recurrent policy that learns what to remember per state and action (a tabular
MDP's reward table) then need not carry the previous state in its memory as well. Inside a
trial, when the inner episode ends, the inner env is reset on the same task and
the observation carries ``sub_episode_done = 1``. The trial ends
(``terminated=True``) after the K-th inner episode.

Tasks: each trial draws a fresh task from the env's distribution (seeded
stream), or from a fixed ``tasks`` list; ``set_task(task)`` pins one task for
every later trial (what evaluation and ``env.unwrapped.call("set_task", ...)``
use), ``set_task(None)`` unpins.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class TrialWrapper(gym.Wrapper):
    def __init__(self, env: gym.Env, episodes_per_trial: int, tasks: Optional[Sequence[Dict[str, Any]]] = None,
                 task_seed: int = 0, trial_progress: bool = False, prev_obs: bool = False):
        super().__init__(env)
        self.trial_progress = bool(trial_progress)
        self.prev_obs = bool(prev_obs)
        if episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial: must be >= 1, got {episodes_per_trial}")
        self.episodes_per_trial = int(episodes_per_trial)
        self._tasks = list(tasks) if tasks else None
        self._pinned: Optional[Dict[str, Any]] = None
        self._task_rng = np.random.default_rng(task_seed)
        inner_obs = env.observation_space
        if not isinstance(inner_obs, spaces.Box):
            raise TypeError(f"TrialWrapper: needs a Box observation space, got {inner_obs}")
        self._obs_dim = int(np.prod(inner_obs.shape))
        act = env.action_space
        if isinstance(act, spaces.Discrete):
            self._act_dim, self._discrete = int(act.n), True
            act_lo, act_hi = np.zeros(self._act_dim), np.ones(self._act_dim)
        elif isinstance(act, spaces.Box):
            self._act_dim, self._discrete = int(np.prod(act.shape)), False
            act_lo, act_hi = act.low.reshape(-1), act.high.reshape(-1)
        else:
            raise TypeError(f"TrialWrapper: needs a Discrete or Box action space, got {act}")
        extra_lo, extra_hi = [-np.inf, 0.0], [np.inf, 1.0]  # prev reward, sub-episode done
        if self.trial_progress:
            extra_lo.append(0.0)
            extra_hi.append(1.0)
        obs_lo, obs_hi = inner_obs.low.reshape(-1), inner_obs.high.reshape(-1)
        if self.prev_obs:  # zeros before the first step: the box must hold them
            obs_lo = np.concatenate([obs_lo, np.minimum(obs_lo, 0.0)])
            obs_hi = np.concatenate([obs_hi, np.maximum(obs_hi, 0.0)])
        low = np.concatenate([obs_lo, act_lo, extra_lo]).astype(np.float32)
        high = np.concatenate([obs_hi, act_hi, extra_hi]).astype(np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self._sub = 0
        self._sub_return = 0.0
        self._last_obs = np.zeros(self._obs_dim, np.float32)   # the inner observation acted in
        self.sub_episode_returns: List[float] = []

    # -- task protocol (forwarded, with pinning) ------------------------------
    def set_task(self, task: Optional[Dict[str, Any]]) -> None:
        """Pin ``task`` for all later trials (None: draw tasks again). The inner env switches
        now (effective from its next reset); later trials all use the pinned task."""
        self._pinned = dict(task) if task is not None else None
        if task is not None:
            self.env.unwrapped.set_task(task)

    def get_task(self) -> Dict[str, Any]:
        return self.env.unwrapped.get_task()

    def sample_tasks(self, n: int, seed: int):
        return self.env.unwrapped.sample_tasks(n, seed)

    def _next_task(self) -> Dict[str, Any]:
        if self._pinned is not None:
            return self._pinned
        if self._tasks:
            return self._tasks[int(self._task_rng.integers(len(self._tasks)))]
        return self.env.unwrapped.sample_tasks(1, int(self._task_rng.integers(2**31 - 1)))[0]

    # -- gymnasium API ------------------------------------------------------
    def _encode(self, obs, action, reward: float, done: float) -> np.ndarray:
        obs = np.array(obs, np.float32).reshape(-1)   # a copy: the env may reuse its buffer
        prev = self._last_obs if action is not None else np.zeros(self._obs_dim, np.float32)
        self._last_obs = obs
        if action is None:
            a = np.zeros(self._act_dim, np.float32)
        elif self._discrete:
            a = np.zeros(self._act_dim, np.float32)
            a[int(action)] = 1.0
        else:
            a = np.asarray(action, np.float32).reshape(-1)
        extra = [reward, done, self._sub / self.episodes_per_trial] if self.trial_progress else [reward, done]
        parts = [obs, prev, a] if self.prev_obs else [obs, a]
        return np.concatenate(parts + [np.array(extra, np.float32)])

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        if seed is not None:
            self._task_rng = np.random.default_rng([seed, 7])
        task = (options or {}).get("task") or self._next_task()
        self.env.unwrapped.set_task(task)
        obs, info = self.env.reset(seed=seed)
        self._sub, self._sub_return = 0, 0.0
        self.sub_episode_returns = []
        return self._encode(obs, None, 0.0, 0.0), {**info, "sub_episode": 0}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward = float(reward)
        self._sub_return += reward
        info = {**info, "sub_episode": self._sub}
        if not (terminated or truncated):
            return self._encode(obs, action, reward, 0.0), reward, False, False, info
        self.sub_episode_returns.append(self._sub_return)
        info["sub_episode_return"] = self._sub_return
        self._sub += 1
        self._sub_return = 0.0
        if self._sub >= self.episodes_per_trial:
            # The trial is over for good: its length is part of the task, so terminate.
            return self._encode(obs, action, reward, 1.0), reward, True, False, info
        obs, _ = self.env.reset()
        return self._encode(obs, action, reward, 1.0), reward, False, False, info
