"""RL^2 (Duan et al., 2016) on RLlib's new API stack: PPO with a recurrent RLModule
over :class:`~distmeta.rl.trial_wrapper.TrialWrapper` episodes (``rl2.recurrent``:
``lstm``, RLlib's default PPO RLModule with an LSTM encoder, ``gru``,
:class:`~distmeta.rl.gru_module.GRUPPOTorchRLModule`, or ``attention``,
:class:`~distmeta.rl.attention_module.AttentionPPOTorchRLModule`).

- :class:`RL2TrialEnv`: the env class RLlib builds on each EnvRunner (a trial
  wrapper around a distmeta env; task stream seeded from the run seed and the
  EnvRunner/vector index).
- :func:`build_ppo_config`: an ``rl.algorithm: rl2`` section -> ``PPOConfig``.
- :func:`build_module` / :func:`module_from_state`: the same RLModule built
  without Ray, for evaluation from a checkpoint (a torch state dict).
- :func:`evaluate_module`: held-out evaluation, batched over tasks, returning
  per-task returns for each episode index within a trial (the adaptation curve)
  and, for envs that report ``info["success"]`` (Meta-World), per-episode success.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch

from distmeta.schema import RLConfig
from distmeta.rl.trial_wrapper import TrialWrapper


def make_base_env(env: str, env_config: Dict[str, Any]) -> gym.Env:
    from distmeta.envs import make

    return make(env, **env_config).unwrapped


class RL2TrialEnv(TrialWrapper):
    """``TrialWrapper(make(env, **env_config), episodes_per_trial)`` built from an RLlib env config."""

    def __init__(self, config: Optional[Dict[str, Any]] = None):
        config = dict(config or {})
        base = make_base_env(config["env"], dict(config.get("env_kwargs") or {}))
        worker = int(getattr(config, "worker_index", 0) or 0)
        vector = int(getattr(config, "vector_index", 0) or 0)
        seed = int(np.random.SeedSequence([int(config.get("seed", 0)), worker, vector]).generate_state(1)[0])
        super().__init__(base, int(config["episodes_per_trial"]), tasks=config.get("tasks"), task_seed=seed,
                         trial_progress=bool(config.get("trial_progress", False)),
                         prev_obs=bool(config.get("prev_obs", False)))


def _apply_task(env_runner, task) -> None:
    """Set the task through the EnvRunner's vector env.
    (The local EnvRunner of a run with remote ones has no env: nothing to do there.)"""
    if getattr(env_runner, "env", None) is not None:
        env_runner.env.unwrapped.call("set_task", task)


def _read_tasks(env_runner):
    return env_runner.env.unwrapped.call("get_task")


def _make_task_callback():
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class TaskReapplyCallback(RLlibCallback):
        """Re-applies the pinned task (``set_task_on_runners``) to EnvRunners that restarted:
        a recreated EnvRunner builds fresh envs and would otherwise forget its task."""

        def on_env_runners_recreated(self, *, algorithm, env_runner_group, env_runner_indices, is_evaluation,
                                     **kwargs):
            task = getattr(algorithm, "_distmeta_task", None)
            if task is not None:
                env_runner_group.foreach_env_runner(lambda er: _apply_task(er, task),
                                                    remote_worker_ids=env_runner_indices, local_env_runner=False)

    return TaskReapplyCallback


def set_task_on_runners(algo, task: Optional[Dict[str, Any]]) -> None:
    """Pin ``task`` on every EnvRunner of ``algo`` (None unpins); restarted runners get it back."""
    algo._distmeta_task = task
    algo.env_runner_group.foreach_env_runner(lambda er: _apply_task(er, task))


def tasks_on_runners(algo) -> List[Any]:
    return algo.env_runner_group.foreach_env_runner(_read_tasks, local_env_runner=False)


def model_config(rl: RLConfig):
    """RLlib's DefaultModelConfig of the default PPO RLModule with an LSTM encoder (``recurrent: lstm``)."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    s = rl.rl2
    return DefaultModelConfig(use_lstm=True, lstm_cell_size=s.cell_size, max_seq_len=s.max_seq_len,
                              fcnet_hiddens=list(s.hidden), fcnet_activation="tanh", vf_share_layers=True)


def module_spec(rl: RLConfig, observation_space=None, action_space=None):
    """The RLModuleSpec of the run's recurrent PPO module (spaces None: RLlib fills them in)."""
    import dataclasses

    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    if rl.rl2.recurrent == "gru":
        from distmeta.rl.gru_module import GRUPPOTorchRLModule, gru_model_config

        s = rl.rl2
        return RLModuleSpec(module_class=GRUPPOTorchRLModule, observation_space=observation_space,
                            action_space=action_space,
                            model_config=gru_model_config(s.cell_size, s.hidden, s.max_seq_len, s.head_hidden,
                                                         s.chrono))
    if rl.rl2.recurrent == "attention":
        from distmeta.rl.attention_module import AttentionPPOTorchRLModule, attention_model_config

        s = rl.rl2
        return RLModuleSpec(module_class=AttentionPPOTorchRLModule, observation_space=observation_space,
                            action_space=action_space,
                            model_config=attention_model_config(s.cell_size, s.hidden, s.max_seq_len, s.head_hidden,
                                                                s.memory, s.heads))
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

    return RLModuleSpec(module_class=DefaultPPOTorchRLModule, observation_space=observation_space,
                        action_space=action_space, model_config=dataclasses.asdict(model_config(rl)))


def env_config(rl: RLConfig, seed: int, tasks: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    return {"env": rl.env, "env_kwargs": dict(rl.env_config), "episodes_per_trial": rl.rl2.episodes_per_trial,
            "trial_progress": rl.rl2.trial_progress, "prev_obs": rl.rl2.prev_obs,
            "seed": int(seed), "tasks": tasks}


def lr_schedule(rl: RLConfig):
    """PPO's learning rate: constant ``rl2.lr``, or annealed linearly to ``rl2.lr_final`` over
    ``env_steps`` (RLlib's ``[[timestep, value], ...]`` schedule)."""
    s = rl.rl2
    return s.lr if s.lr_final is None else [[0, s.lr], [rl.env_steps, s.lr_final]]


def build_ppo_config(rl: RLConfig, seed: int, train_tasks: Optional[List[Dict[str, Any]]] = None):
    from ray.rllib.algorithms.ppo import PPOConfig

    s = rl.rl2
    module = {"rl_module_spec": module_spec(rl)} if s.recurrent != "lstm" else {"model_config": model_config(rl)}
    return (
        PPOConfig()
        .environment(RL2TrialEnv, env_config=env_config(rl, seed, train_tasks))
        .framework("torch")
        .env_runners(num_env_runners=rl.num_env_runners, num_envs_per_env_runner=rl.num_envs_per_env_runner,
                     rollout_fragment_length="auto", num_cpus_per_env_runner=1)
        .learners(num_learners=rl.num_learners)
        .training(train_batch_size_per_learner=s.train_batch_size, minibatch_size=s.minibatch_size,
                  num_epochs=s.num_epochs, lr=lr_schedule(rl), gamma=s.gamma, lambda_=s.gae_lambda, clip_param=s.clip_param,
                  entropy_coeff=s.entropy_coeff, vf_loss_coeff=s.vf_loss_coeff,
                  grad_clip=s.grad_clip or None, use_kl_loss=False, vf_clip_param=1e4)
        .rl_module(**module)
        .debugging(seed=int(seed), log_level="ERROR")
        .callbacks(_make_task_callback())
        .fault_tolerance(restart_failed_env_runners=True)
        .reporting(metrics_num_episodes_for_smoothing=50)
    )


def spaces_for(rl: RLConfig):
    env = RL2TrialEnv(env_config(rl, 0))
    return env.observation_space, env.action_space


def build_module(rl: RLConfig):
    """The recurrent PPO RLModule of an RL^2 run, built without Ray (for evaluation and tests)."""
    return module_spec(rl, *spaces_for(rl)).build()


def module_from_state(rl: RLConfig, state: Dict[str, torch.Tensor]):
    module = build_module(rl)
    module.load_state_dict(state)
    module.eval()
    return module


def _tree_map(fn, tree):
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)


@torch.no_grad()
def evaluate_module(module, rl: RLConfig, tasks: Sequence[Dict[str, Any]], seed: int = 0,
                    batch: int = 1000, return_success: bool = False):
    """Run one trial per task with the recurrent policy (sampling actions, state carried
    through the trial). Returns returns per (task, episode index within the trial).

    ``return_success=True``: ``(returns, success)`` where ``success[task, episode]`` is 1.0 when
    the env's ``info["success"]`` (Meta-World) was true at any step of that episode, else 0.0;
    ``success`` is None when the env never reports ``success``."""
    from ray.rllib.core.columns import Columns

    K = rl.rl2.episodes_per_trial
    out = np.zeros((len(tasks), K))
    success = np.zeros((len(tasks), K))
    reports_success = False
    dist_cls = module.get_exploration_action_dist_cls()
    gen = torch.Generator().manual_seed(int(seed))
    for start in range(0, len(tasks), batch):
        chunk = list(tasks[start:start + batch])
        envs = [RL2TrialEnv(env_config(rl, seed)) for _ in chunk]
        obs = np.stack([env.reset(seed=int(seed) * 100003 + start + i, options={"task": t})[0]
                        for i, (env, t) in enumerate(zip(envs, chunk))])
        # whatever the module's state keys are (LSTM: "h", "c"; GRU: "h"), batched over tasks
        init = _tree_map(torch.as_tensor, module.get_initial_state())
        state = _tree_map(lambda x: x.unsqueeze(0).repeat(len(chunk), *([1] * x.dim())), init)
        done = np.zeros(len(chunk), bool)
        while not done.all():
            fwd = module.forward_exploration({Columns.OBS: torch.as_tensor(obs).unsqueeze(1),
                                              Columns.STATE_IN: state})
            logits = fwd[Columns.ACTION_DIST_INPUTS][:, 0]
            dist = dist_cls.from_logits(logits)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            actions = dist.sample().numpy()
            state = fwd[Columns.STATE_OUT]
            for i, env in enumerate(envs):
                if done[i]:
                    continue
                o, _, term, trunc, info = env.step(actions[i])
                obs[i] = o
                if "success" in info:
                    reports_success = True
                    if info["success"]:
                        success[start + i, int(info["sub_episode"])] = 1.0
                if term or trunc:
                    done[i] = True
                    out[start + i] = env.sub_episode_returns
    if return_success:
        return out, (success if reports_success else None)
    return out
