"""Tune trainable for Meta-RL configs.

The trial's placement group is sized by the RLlib Algorithm class's own
resource request (``Algorithm.default_resource_request(config)``: the
learner(s) plus the EnvRunners), and each trial reports ``mean_return`` on the
held-out tasks, the name ``distmeta eval --json`` uses, with a checkpoint of the
learner state (module weights and optimizer) that PBT and ``--resume`` restore.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict

CHECKPOINT_FILE = "rl_learner.pt"


def rl2_trial(params: Dict[str, Any], base: Dict[str, Any]) -> None:
    import torch
    from ray import tune
    from ray.rllib.core import COMPONENT_LEARNER

    from distmeta.config import from_dict
    from distmeta.rl import rl2
    from distmeta.rl.baselines import summarize
    from distmeta.rl.config import parse_rl
    from distmeta.rl.runner import _rl2_state, held_out_tasks
    from distmeta.tune import trial_config

    cfg = from_dict(trial_config(base, params))
    rl = parse_rl(cfg.rl)
    train_tasks, test_tasks = held_out_tasks(rl)
    algo = rl2.build_ppo_config(rl, cfg.seed, train_tasks or None).build_algo()
    iteration, env_steps_offset = 0, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        algo.learner_group.set_state({COMPONENT_LEARNER: state["learner"]})
        algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)
        iteration, env_steps_offset = int(state["iteration"]), int(state["env_steps"])
    every = max(rl.eval_every, 1)
    try:
        while True:
            result = algo.train()
            iteration += 1
            env_steps = env_steps_offset + int(result.get("num_env_steps_sampled_lifetime", 0))
            if iteration % every == 0 or env_steps >= rl.env_steps:
                returns = rl2.evaluate_module(algo.get_module(), rl, test_tasks, seed=cfg.seed + 1)
                stats = summarize(returns)
                report = {"mean_return": stats["mean_return"], "ci95": stats.get("ci95"), "step": iteration,
                          "env_steps": env_steps}
                with tempfile.TemporaryDirectory() as d:
                    torch.save({"learner": _rl2_state(algo), "iteration": iteration, "env_steps": env_steps},
                               Path(d) / CHECKPOINT_FILE)
                    tune.report({k: v for k, v in report.items() if v is not None},
                                checkpoint=tune.Checkpoint.from_directory(d))
            if env_steps >= rl.env_steps:
                break
    finally:
        algo.stop()


def rl_tune_trainable(cfg):
    """The trainable for ``distmeta tune`` on an ``rl:`` config, with the
    placement group the RLlib Algorithm class requests for it."""
    from ray import tune

    from distmeta.config import ConfigError
    from distmeta.rl import rl2
    from distmeta.rl.config import parse_rl
    from distmeta.rl.runner import held_out_tasks

    rl = parse_rl(cfg.rl)
    if rl.algorithm != "rl2":
        raise ConfigError(f"rl.algorithm: distmeta tune supports 'rl2' configs; {rl.algorithm!r} trains with "
                          f"distmeta train")
    train_tasks, _ = held_out_tasks(rl)
    algo_config = rl2.build_ppo_config(rl, cfg.seed, train_tasks or None)
    resources = algo_config.algo_class.default_resource_request(algo_config)
    base = cfg.to_dict()
    return tune.with_resources(tune.with_parameters(rl2_trial, base=base), resources)
