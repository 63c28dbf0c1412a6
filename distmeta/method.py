"""The protocol every method implements so that one run loop drives it.

The run loop (:mod:`distmeta.engine.trainer`) owns everything around a method:
iterating, validating every ``eval.every`` iterations, logging (CSV,
TensorBoard, progress line), checkpointing, resuming, reporting to Tune and the
final test evaluation. A method owns what one iteration means:

- the supervised methods (:class:`distmeta.engine.supervised.SupervisedMethod`):
  one meta-step of the engine (in-process or Ray task workers);
- RL^2 (:class:`distmeta.rl.rl2_method.RL2Method`): one RLlib PPO iteration;
- MAML-RL (:class:`distmeta.rl.maml_method.MAMLRLMethod`): one meta-iteration
  of the MAML-RL RLlib Algorithm.

Contract:
- ``build(cfg)`` (a classmethod) creates the method from a validated config;
  ``from_checkpoint(cfg, state)`` creates one for evaluation only (no actors;
  ``distmeta eval``); ``resources(cfg)`` (a classmethod) is the Ray resource
  request of one run (a Tune trial's placement group), or None for the driver alone.
- ``iteration`` counts finished iterations; ``done()`` says the budget is spent.
- ``step()`` runs one iteration and returns its metrics (floats), including
  ``work`` (tasks or env steps done) under the name ``work_unit`` says.
- ``evaluate(split, episodes)`` scores ``episodes`` tasks of ``split`` ("val"
  during training, "test" at the end) and returns plain values, with the
  headline metric under ``score_key`` and ``ci95``.
- ``state()`` returns torch tensors and plain Python values only (a checkpoint
  is loaded with ``weights_only=True`` and never runs code); ``load(state)``
  restores it so the run continues as if never interrupted.
- ``close()`` releases actors. ``artifacts(run_dir, rows)`` writes the method's
  own plots into the run folder (after training).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, runtime_checkable


@runtime_checkable
class Method(Protocol):
    name: str
    score_key: str            # headline metric of evaluate(): accuracy, mse or mean_return
    higher_is_better: bool    # False for mse
    work_unit: str            # "tasks" or "env_steps": what step()["work"] counts
    progress_keys: List[str]  # training metrics worth a place on the progress line
    iteration: int

    @classmethod
    def build(cls, cfg) -> "Method": ...

    @classmethod
    def from_checkpoint(cls, cfg, state: Dict[str, Any]) -> "Method": ...

    @classmethod
    def resources(cls, cfg) -> Optional[Any]: ...

    def done(self) -> bool: ...

    def step(self) -> Dict[str, float]: ...

    def evaluate(self, split: str, episodes: Optional[int] = None) -> Dict[str, Any]: ...

    def state(self) -> Dict[str, Any]: ...

    def load(self, state: Dict[str, Any]) -> None: ...

    def close(self) -> None: ...

    def artifacts(self, run_dir: Path, rows: List[Dict[str, Any]]) -> None: ...


# Where each method lives, by the config that selects it: no caller lists method names.
METHODS = {
    "supervised": "distmeta.engine.supervised:SupervisedMethod",
    "rl2": "distmeta.rl.rl2_method:RL2Method",
    "maml_rl": "distmeta.rl.maml_method:MAMLRLMethod",
}


def method_key(cfg) -> str:
    return "supervised" if cfg.rl is None else cfg.rl.algorithm


def method_class(cfg):
    """The Method class a validated config selects."""
    import importlib

    module, _, name = METHODS[method_key(cfg)].partition(":")
    return getattr(importlib.import_module(module), name)
