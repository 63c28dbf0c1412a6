"""Prototypical Networks (Snell, Swersky & Zemel 2017).

Prototype of class c: p_c = mean_{(x, y) in S, y = c} f(x). A query x is scored
by negative squared Euclidean distance, logits_c(x) = -||f(x) - p_c||^2, and the
episode loss is the cross-entropy of those logits. Training may use more ways
than testing (``task.train_ways``).
"""
from __future__ import annotations

from typing import Optional

import torch

from distmeta.algorithms.base import Algorithm, forward, score_metrics
from distmeta.registry import ALGORITHMS


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """[ways, D] mean embedding per class."""
    # not F.one_hot: it checks the labels' maximum, which torch.func.vmap cannot do
    onehot = (labels[:, None] == torch.arange(ways, device=labels.device)).to(embeddings.dtype)
    return onehot.t() @ embeddings / onehot.sum(0)[:, None]


def squared_distance_logits(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """-||q_i - p_c||^2 for every query i and prototype c."""
    return -((queries[:, None, :] - protos[None, :, :]) ** 2).sum(-1)


@ALGORITHMS.register("protonet")
class ProtoNet(Algorithm):
    name = "protonet"
    task_kinds = ("classification",)

    def make_head(self, embedding_dim, output_dim):
        return None

    def task_gradient(self, model, params, buffers, task):
        ways = int(task["support_y"].max()) + 1

        def episode_loss(p):
            protos = prototypes(forward(model, p, buffers, task["support_x"]), task["support_y"], ways)
            logits = squared_distance_logits(forward(model, p, buffers, task["query_x"]), protos)
            metrics = score_metrics("classification", logits, task["query_y"])
            return metrics["loss"], {k: v.detach() for k, v in metrics.items()}

        return torch.func.grad(episode_loss, has_aux=True)(params)

    def adapt(self, model, params, buffers, support_x, support_y, steps: Optional[int] = None):
        return prototypes(forward(model, params, buffers, support_x), support_y, int(support_y.max()) + 1)

    def predict(self, model, params, buffers, state, query_x):
        return squared_distance_logits(forward(model, params, buffers, query_x), state)
