"""The contract every meta-learning algorithm meets, so that one training loop,
the Ray workers and Tune all call the same pure functions.

An algorithm is built from ``(its config, task_kind)`` and declares what the
rest of distmeta asks of it instead of listing method names:
- ``config_class``: its config section (a subclass of
  :class:`distmeta.schema.AlgorithmConfig` holding its own fields);
- ``task_kinds``: the task kinds it can learn (``classification``, ``regression``);
- ``train_metrics``: the metrics its ``task_gradient`` reports, in display order;
- ``extra_parameters(named_parameters)``: meta-learned tensors besides the
  network's (Meta-SGD's learned inner learning rates);
- ``eval_inner_steps()``: adaptation steps at evaluation (None: it does not
  adapt by gradient steps).

It provides:
- ``task_gradient(model, params, buffers, task) -> (grads, metrics)``: a pure
  function of the meta-parameters ``params`` (a name -> tensor dict), the
  buffers and one task (``support_x/support_y/query_x/query_y`` tensors, plus
  ``seed``). ``grads`` has the keys of ``params``; the learner averages them
  over tasks and applies ``theta <- optimizer(theta, mean grads)``. ``metrics``
  are 0-d tensors (``loss``, ``accuracy`` or ``mse``, ...), averaged likewise.
- ``adapt(model, params, buffers, support_x, support_y, steps)`` -> a state and
  ``predict(model, params, buffers, state, query_x)`` -> class scores or values.
- ``eager_task_gradient(model, params, buffers, task)``: the same gradient for
  callers outside any ``torch.func`` transform, i.e. the per-task loop executor
  (default: ``task_gradient``). MAML builds it with plain ``torch.autograd``: the
  same graph without nested ``torch.func.grad`` levels, which cost 12-15 % more CPU
  time per second-order conv4 meta-step (1 and 5 inner steps; ``benchmarks/meta_step.py``,
  row ``func`` against ``loop``).
- ``make_head(embedding_dim, output_dim)``: the head the algorithm needs.
- ``vmappable``: whether ``task_gradient`` may run under ``torch.func.vmap``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from distmeta.schema import AlgorithmConfig

Tensors = Dict[str, torch.Tensor]


def task_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classification, mean squared error for regression."""
    if kind == "classification":
        return F.cross_entropy(pred, target)
    return F.mse_loss(pred, target)


def score_metrics(kind: str, pred: torch.Tensor, target: torch.Tensor) -> Tensors:
    loss = task_loss(kind, pred, target)
    if kind == "classification":
        return {"loss": loss, "accuracy": (pred.argmax(-1) == target).float().mean()}
    return {"loss": loss, "mse": loss}


def forward(model: nn.Module, params: Tensors, buffers: Tensors, x: torch.Tensor) -> torch.Tensor:
    return functional_call(model, (params, buffers), (x,))


class Algorithm:
    name = "base"
    config_class = AlgorithmConfig
    task_kinds: Tuple[str, ...] = ("classification", "regression")
    train_metrics: Tuple[str, ...] = ("loss", "accuracy", "mse")
    vmappable = False

    def __init__(self, cfg, task_kind: str):
        self.cfg = cfg
        self.kind = task_kind

    def extra_parameters(self, named_parameters) -> Tensors:
        """Meta-learned tensors to add to the network, named ``group.key`` (default: none)."""
        return {}

    def eval_inner_steps(self) -> Optional[int]:
        """Inner steps of adaptation at evaluation; None for methods that do not take any."""
        return None

    def make_head(self, embedding_dim: int, output_dim: int) -> Optional[nn.Module]:
        return nn.Linear(embedding_dim, output_dim)

    def make_extras(self, embedding_dim: int) -> Dict[str, nn.Module]:
        """Extra named sub-modules the algorithm needs besides backbone and head."""
        return {}

    def task_gradient(self, model, params: Tensors, buffers: Tensors, task: Tensors) -> Tuple[Tensors, Tensors]:
        raise NotImplementedError

    def eager_task_gradient(self, model, params: Tensors, buffers: Tensors,
                            task: Tensors) -> Tuple[Tensors, Tensors]:
        """``task_gradient`` for one task outside any ``torch.func`` transform (the loop executor)."""
        return self.task_gradient(model, params, buffers, task)

    def adapt(self, model, params, buffers, support_x, support_y, steps: Optional[int] = None) -> Any:
        raise NotImplementedError

    def predict(self, model, params, buffers, state, query_x) -> torch.Tensor:
        raise NotImplementedError

    def outer_lr(self, base_lr: float, step: int, total_steps: int) -> float:
        """Learning rate of the outer optimizer at ``step`` (default: constant)."""
        return base_lr

    def outer_optimizer(self, parameters, optim_cfg) -> torch.optim.Optimizer:
        if optim_cfg.optimizer == "sgd":
            return torch.optim.SGD(parameters, lr=optim_cfg.lr)
        return torch.optim.Adam(parameters, lr=optim_cfg.lr)
