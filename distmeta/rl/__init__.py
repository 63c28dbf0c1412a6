"""Meta-RL on RLlib's new API stack: RL^2 (PPO + LSTM over trials) and MAML-RL.

Entry points used by ``distmeta train`` / ``distmeta eval`` for configs with an
``rl:`` section:

- ``validate_rl(cfg)``: check ``cfg.rl``; raises ``ConfigError`` naming the field.
- ``train_rl(cfg, run_dir, steps=None, resume=False) -> dict``: train, checkpoint,
  evaluate; returns the final metrics.
- ``evaluate_rl(run_dir, episodes=None) -> dict``: the JSON object of
  ``distmeta eval --json`` (``mean_return``, ``ci95``, ``tasks``, ``baselines``...).

Ray and RLlib are imported only inside these functions' submodules, so
``import distmeta.rl`` stays light.
"""
from __future__ import annotations

from typing import Any, Dict, Optional


def validate_rl(cfg) -> Any:
    """Parse and range-check ``cfg.rl`` (raises ``distmeta.config.ConfigError``); returns the RLConfig."""
    from distmeta.rl.config import parse_rl

    return parse_rl(cfg.rl)


def train_rl(cfg, run_dir, steps: Optional[int] = None, resume: bool = False) -> Dict[str, Any]:
    from distmeta.rl.runner import train_rl as _train

    return _train(cfg, run_dir, steps=steps, resume=resume)


def evaluate_rl(run_dir, episodes: Optional[int] = None) -> Dict[str, Any]:
    from distmeta.rl.runner import evaluate_rl as _evaluate

    return _evaluate(run_dir, episodes=episodes)


def rl_tune_trainable(cfg):
    """The Tune trainable for an ``rl:`` config (see :mod:`distmeta.rl.tuning`)."""
    from distmeta.rl.tuning import rl_tune_trainable as _trainable

    return _trainable(cfg)


__all__ = ["validate_rl", "train_rl", "evaluate_rl", "rl_tune_trainable"]
