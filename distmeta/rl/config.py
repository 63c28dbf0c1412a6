"""The ``rl:`` section of a distmeta experiment config, typed and validated.

Example (``experiments/rl2_bandits.yaml``)::

    rl:
      algorithm: rl2
      env: bandit
      env_config: {k: 5}
      env_steps: 2000000
      rl2: {episodes_per_trial: 100, cell_size: 128}

Shared fields sit at the top; ``rl2`` holds PPO/recurrent-module settings, ``maml`` the
MAML-RL settings. :func:`parse_rl` turns the dict into :class:`RLConfig` or
raises :class:`distmeta.config.ConfigError` naming the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from distmeta.config import ConfigError, _build

ALGORITHMS = ["rl2", "maml_rl"]
RECURRENT = ["lstm", "gru"]
MAML_BASELINES = ["linear", "none"]
MAML_OUTER = ["promp", "vpg"]
MAML_SAMPLERS = ["learner", "env_runners"]


@dataclass
class RL2Section:
    episodes_per_trial: int = 10      # K sub-episodes of one task joined into one RLlib episode
    trial_progress: bool = False      # append k/K (episodes of the trial finished) to the observation
    recurrent: str = "lstm"           # lstm: RLlib's default PPO RLModule (LSTM encoder) | gru: distmeta.rl.gru_module
    cell_size: int = 64
    hidden: List[int] = field(default_factory=lambda: [64])
    max_seq_len: int = 20             # BPTT chunk length (state carried between chunks)
    train_batch_size: int = 4000
    minibatch_size: int = 1000
    num_epochs: int = 5
    lr: float = 0.0005
    gamma: float = 0.99
    gae_lambda: float = 0.3
    clip_param: float = 0.2
    entropy_coeff: float = 0.01
    vf_loss_coeff: float = 0.5
    grad_clip: float = 10.0


@dataclass
class MAMLSection:
    meta_batch: int = 20              # tasks per meta-iteration
    episodes_per_task: int = 20       # trajectories per task for each of pre/post adaptation
    inner_steps: int = 1
    inner_lr: float = 0.1
    first_order: bool = False
    outer: str = "promp"              # promp: PPO-clip surrogate through the inner step | vpg
    outer_lr: float = 0.001
    outer_epochs: int = 5             # ProMP: gradient steps on the clipped surrogate per iteration
    clip_param: float = 0.2
    kl_coeff: float = 0.0             # ProMP inner-KL penalty on the pre-adaptation policy
    baseline: str = "linear"          # linear feature baseline (Duan et al. 2016) | none
    gamma: float = 0.99
    hidden: List[int] = field(default_factory=lambda: [100, 100])
    init_log_std: float = -1.0
    eval_inner_steps: int = 3         # evaluate after 0..eval_inner_steps inner steps
    sampler: str = "learner"          # learner: in-process batched sampler | env_runners: the RLlib MAMLRL Algorithm


@dataclass
class RLConfig:
    algorithm: str = "rl2"
    env: str = "bandit"               # short alias (bandit, tabular_mdp, point_nav, ...) or gymnasium id
    env_config: Dict[str, Any] = field(default_factory=dict)
    env_steps: int = 100000           # training budget in environment steps
    num_env_runners: int = 0          # 0: sample in the driver's local EnvRunner
    num_envs_per_env_runner: int = 8
    num_learners: int = 0
    train_tasks: int = 0              # 0: a fresh task per trial from the distribution; N: fixed set
    eval_tasks: int = 200             # held-out tasks for the final evaluation
    eval_every: int = 0               # iterations between held-out evaluations (0: only at the end)
    task_seed: int = 0                # seed of the train/held-out task split
    baselines: bool = True            # compute the same-run baselines at evaluation
    rl2: RL2Section = field(default_factory=RL2Section)
    maml: MAMLSection = field(default_factory=MAMLSection)


_POSITIVE = {
    "env_steps": "", "num_envs_per_env_runner": "", "eval_tasks": "",
    "rl2.episodes_per_trial": "", "rl2.cell_size": "", "rl2.max_seq_len": "", "rl2.train_batch_size": "",
    "rl2.minibatch_size": "", "rl2.num_epochs": "", "rl2.lr": "",
    "maml.meta_batch": "", "maml.episodes_per_task": "", "maml.outer_lr": "", "maml.outer_epochs": "",
}
_NON_NEGATIVE = ["num_env_runners", "num_learners", "train_tasks", "eval_every", "rl2.entropy_coeff",
                 "rl2.vf_loss_coeff", "rl2.grad_clip", "rl2.clip_param", "maml.inner_steps", "maml.inner_lr",
                 "maml.clip_param", "maml.kl_coeff", "maml.eval_inner_steps"]
_UNIT = ["rl2.gamma", "rl2.gae_lambda", "maml.gamma"]


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def parse_rl(data: Dict[str, Any]) -> RLConfig:
    """Build and range-check the ``rl`` section; raise ConfigError naming the field."""
    rl = _build(RLConfig, data, "rl")
    choices = {"algorithm": ALGORITHMS, "rl2.recurrent": RECURRENT, "maml.baseline": MAML_BASELINES,
               "maml.outer": MAML_OUTER, "maml.sampler": MAML_SAMPLERS}
    for key, allowed in choices.items():
        if _get(rl, key) not in allowed:
            raise ConfigError(f"rl.{key}: {_get(rl, key)!r} is not one of {allowed}")
    for key in _POSITIVE:
        if _get(rl, key) <= 0:
            raise ConfigError(f"rl.{key}: must be > 0, got {_get(rl, key)!r}")
    for key in _NON_NEGATIVE:
        if _get(rl, key) < 0:
            raise ConfigError(f"rl.{key}: must be >= 0, got {_get(rl, key)!r}")
    for key in _UNIT:
        if not 0.0 <= _get(rl, key) <= 1.0:
            raise ConfigError(f"rl.{key}: must be in [0, 1], got {_get(rl, key)!r}")
    for key, hidden in (("rl2.hidden", rl.rl2.hidden), ("maml.hidden", rl.maml.hidden)):
        if any(h <= 0 for h in hidden):
            raise ConfigError(f"rl.{key}: layer sizes must be > 0, got {hidden}")
    if rl.rl2.minibatch_size > rl.rl2.train_batch_size:
        raise ConfigError(f"rl.rl2.minibatch_size: must be <= rl.rl2.train_batch_size "
                          f"({rl.rl2.train_batch_size}), got {rl.rl2.minibatch_size}")
    if rl.algorithm == "maml_rl" and rl.maml.inner_steps < 1:
        raise ConfigError("rl.maml.inner_steps: MAML-RL needs at least 1 inner step, got 0")
    if rl.num_learners > 1 and rl.algorithm == "maml_rl" and rl.maml.meta_batch < rl.num_learners:
        raise ConfigError(f"rl.maml.meta_batch: must be >= rl.num_learners ({rl.num_learners}) so every "
                          f"learner gets a task, got {rl.maml.meta_batch}")
    from distmeta.envs import ENV_IDS, resolve_env_id

    env_id = resolve_env_id(rl.env)
    if env_id not in ENV_IDS:
        import gymnasium as gym

        if env_id not in gym.registry:
            raise ConfigError(f"rl.env: {rl.env!r} is not one of {sorted(ENV_IDS)} or their short names "
                              f"(bandit, tabular_mdp, point_nav, cartpole_physics, pendulum_physics, "
                              f"halfcheetah_vel, halfcheetah_dir, ant_dir, metaworld_ml1, metaworld_ml10)")
    return rl
