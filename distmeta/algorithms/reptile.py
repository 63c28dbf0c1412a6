"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning
Algorithms").

For each task i, run k steps of SGD or Adam on its support set from theta to
get phi_i; the outer update is
    theta <- theta + epsilon_t * mean_i (phi_i - theta),
with epsilon_t annealed linearly from ``epsilon`` to ``epsilon_final``. In the
shared protocol each task returns the direction ``theta - phi_i`` and the
learner applies plain SGD with learning rate epsilon_t, which is exactly the
update above. With ``head_init: prototypes`` each inner loop starts from the
prototype head (``maml.prototype_head``) and only the backbone is meta-learned:
the head's own displacement is dropped.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field

from distmeta.algorithms.base import Tensors, forward, score_metrics, task_loss
from distmeta.algorithms.maml import InnerLoopAlgorithm, InnerLoopConfig, training_ways
from distmeta.registry import ALGORITHMS
from distmeta.schema import Float


class ReptileConfig(InnerLoopConfig):
    inner_optimizer: Literal["sgd", "adam"] = Field("sgd", description="inner optimizer (Adam with beta1 = 0)")
    epsilon: Float = Field(1.0, ge=0, description="outer step size, annealed linearly to epsilon_final")
    epsilon_final: Float = Field(0.0, ge=0, description="outer step size at the last step")
    inner_data: Literal["support", "support_and_queries"] = Field(
        "support", description="what a training task's inner loop trains on: its support set, or its support "
                               "and query sets (each its own forward pass, so batch statistics stay per set; "
                               "the reported training loss and accuracy are then on trained-on queries)")


def inner_train(model, params: Tensors, buffers: Tensors, x, y, *, kind: str, steps: int, lr: float,
                optimizer: str, extra=None) -> Tensors:
    """phi after ``steps`` of SGD, or Adam with betas (0, 0.999) as in the paper,
    on (x, y), or on (x, y) and ``extra`` = (x2, y2) with the loss the mean over all
    their examples (each set its own forward pass); no gradient flows back to ``params``."""
    phi = {n: p.detach() for n, p in params.items()}
    m = {n: torch.zeros_like(p) for n, p in phi.items()}
    v = {n: torch.zeros_like(p) for n, p in phi.items()}
    beta2, eps = 0.999, 1e-8
    sets = [(x, y)] + ([extra] if extra is not None else [])
    total = sum(len(t) for _, t in sets)

    def loss_fn(p):
        return sum(task_loss(kind, forward(model, p, buffers, xs), ys) * (len(ys) / total) for xs, ys in sets)

    for t in range(1, steps + 1):
        grads = torch.func.grad(loss_fn)(phi)
        if optimizer == "adam":
            v = {n: beta2 * v[n] + (1 - beta2) * grads[n] ** 2 for n in phi}
            m = grads  # beta1 = 0
            phi = {n: phi[n] - lr * m[n] / (torch.sqrt(v[n] / (1 - beta2 ** t)) + eps) for n in phi}
        else:
            phi = {n: phi[n] - lr * grads[n] for n in phi}
    return phi


@ALGORITHMS.register("reptile")
class Reptile(InnerLoopAlgorithm):
    name = "reptile"
    config_class = ReptileConfig
    vmappable = True

    def _train(self, model, params, buffers, x, y, steps, extra=None):
        return inner_train(model, params, buffers, x, y, kind=self.kind, steps=steps,
                           lr=self.cfg.inner_lr, optimizer=self.cfg.inner_optimizer, extra=extra)

    def task_gradient(self, model, params, buffers, task):
        sx, sy = task["support_x"], task["support_y"]
        ways = training_ways(params)
        rebuilt = self.rebuilds_head(ways)
        with torch.no_grad():
            start = self.initial_params(model, params, buffers, sx, sy, ways)
        queries = (task["query_x"], task["query_y"]) if self.cfg.inner_data == "support_and_queries" else None
        phi = self._train(model, start, buffers, sx, sy, self.cfg.inner_steps, queries)
        with torch.no_grad():
            metrics = score_metrics(self.kind, forward(model, phi, buffers, task["query_x"]), task["query_y"])
        # a head rebuilt from prototypes for every task is not meta-learned: it gets no update
        return {n: torch.zeros_like(p) if rebuilt and n.startswith("head.") else p.detach() - phi[n]
                for n, p in params.items()}, metrics

    def adapt(self, model, params, buffers, support_x, support_y, steps: Optional[int] = None):
        steps = steps if steps is not None else self.eval_inner_steps()
        with torch.no_grad():
            params = self.initial_params(model, params, buffers, support_x, support_y, int(support_y.max()) + 1)
        with torch.enable_grad():
            return self._train(model, params, buffers, support_x, support_y, steps)

    def predict(self, model, params, buffers, state, query_x):
        return forward(model, state, buffers, query_x)

    def outer_lr(self, base_lr: float, step: int, total_steps: int) -> float:
        frac = min(step / max(total_steps, 1), 1.0)
        return (1 - frac) * self.cfg.epsilon + frac * self.cfg.epsilon_final

    def outer_optimizer(self, parameters, optim_cfg):
        return torch.optim.SGD(parameters, lr=self.cfg.epsilon)
