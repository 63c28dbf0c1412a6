"""Siamese networks for one-shot learning.

Pairs (a, b) come from an episode, balanced between same-class and
different-class pairs: ``pair_sampling: sampled`` draws ``pairs`` of them, half of
each kind; ``all`` takes every pair of the episode's examples and weighs the two
kinds equally, L = mean_same l(a, b) / 2 + mean_different l(a, b) / 2, so a 20-way
episode with 6 examples per class (7,140 pairs from 120 embeddings) costs one
forward pass. Two losses l:

- ``contrastive`` (Hadsell, Chopra & LeCun 2006), with d = ||f(a) - f(b)||_2 and
  **y = 1 for a DIFFERENT-class pair, y = 0 for a same-class pair**:
      L = (1 - y) d^2 + y max(0, m - d)^2
  so same-class pairs are pulled together and different-class pairs pushed
  beyond the margin m. (With the opposite labelling this formula pushes
  same-class pairs apart; ``tests/test_algorithms.py`` guards against that.)
- ``verification`` (Koch, Zemel & Salakhutdinov 2015): p(same) =
  sigmoid(w . |f(a) - f(b)| + b), trained with binary cross-entropy against
  t = 1 for a same-class pair.

One-shot classification scores each query against every support example
(-d for contrastive, the verification logit otherwise), averages per class and
predicts the class with the highest similarity.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from typing import Literal

from pydantic import Field

from distmeta.algorithms.base import Algorithm, forward
from distmeta.registry import ALGORITHMS
from distmeta.schema import AlgorithmConfig, Float, Int


class SiameseConfig(AlgorithmConfig):
    loss: Literal["contrastive", "verification"] = Field("contrastive", description="pair loss")
    margin: Float = Field(1.0, ge=0, description="contrastive margin m")
    pairs: Int = Field(64, gt=0, description="pairs per episode (pair_sampling: sampled), half same-class")
    pair_sampling: Literal["sampled", "all"] = Field(
        "sampled", description="sampled: `pairs` random pairs; all: every pair, both kinds weighted equally")


def contrastive_loss(d: torch.Tensor, different: torch.Tensor, margin: float,
                     weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mean[(1 - y) d^2 + y max(0, m - d)^2] with y = 1 for different-class pairs
    (the ``weight``-weighted sum instead of the mean when weights are given)."""
    y = different.to(d.dtype)
    per_pair = (1 - y) * d ** 2 + y * torch.clamp(margin - d, min=0) ** 2
    return per_pair.mean() if weight is None else (weight * per_pair).sum()


def all_pairs(labels: torch.Tensor):
    """Every pair i < j of the examples, and weights that give same-class and
    different-class pairs half of the total each (a kind that is absent gets none)."""
    a, b = torch.triu_indices(len(labels), len(labels), offset=1)
    same = labels[a] == labels[b]
    n_same, n_diff = int(same.sum()), int((~same).sum())
    kinds = (n_same > 0) + (n_diff > 0)
    weight = torch.where(same, 1.0 / max(n_same, 1), 1.0 / max(n_diff, 1)) / max(kinds, 1)
    return a, b, weight


def balanced_pairs(labels: torch.Tensor, n_pairs: int, seed: int):
    """``n_pairs`` index pairs (half same-class, half different-class) drawn with ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    labels = labels.cpu()
    classes = labels.unique()
    by_class = [torch.nonzero(labels == c).flatten() for c in classes]
    multi = [idx for idx in by_class if len(idx) >= 2]
    a, b = [], []
    n_same = n_pairs // 2 if multi else 0
    for _ in range(n_same):
        idx = multi[int(torch.randint(len(multi), (1,), generator=gen))]
        i, j = torch.randperm(len(idx), generator=gen)[:2]
        a.append(int(idx[i])), b.append(int(idx[j]))
    for _ in range(n_pairs - n_same):
        ci, cj = torch.randperm(len(by_class), generator=gen)[:2]
        a.append(int(by_class[ci][torch.randint(len(by_class[ci]), (1,), generator=gen)]))
        b.append(int(by_class[cj][torch.randint(len(by_class[cj]), (1,), generator=gen)]))
    return torch.tensor(a), torch.tensor(b)


@ALGORITHMS.register("siamese")
class Siamese(Algorithm):
    name = "siamese"
    config_class = SiameseConfig
    task_kinds = ("classification",)
    train_metrics = ("loss", "pair_accuracy")

    def make_head(self, embedding_dim, output_dim):
        return None

    def make_extras(self, embedding_dim):
        return {"verifier": nn.Linear(embedding_dim, 1)} if self.cfg.loss == "verification" else {}

    def pair_similarity(self, params, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        """Similarity of embedding pairs: -distance (contrastive) or the verification logit."""
        if self.cfg.loss == "verification":
            return (za - zb).abs() @ params["verifier.weight"].t().squeeze(-1) + params["verifier.bias"]
        return -torch.sqrt(((za - zb) ** 2).sum(-1) + 1e-12)

    def task_gradient(self, model, params, buffers, task):
        x = torch.cat([task["support_x"], task["query_x"]])
        y = torch.cat([task["support_y"], task["query_y"]])
        if self.cfg.pair_sampling == "all":
            a, b, weight = all_pairs(y)
        else:
            a, b = balanced_pairs(y, self.cfg.pairs, int(task["seed"]))
            weight = torch.full((len(a),), 1.0 / len(a))
        different = (y[a] != y[b])

        def pair_loss(p):
            z = forward(model, p, buffers, x)
            sim = self.pair_similarity(p, z[a], z[b])
            w = weight.to(sim.dtype)
            if self.cfg.loss == "verification":
                loss = F.binary_cross_entropy_with_logits(sim, (~different).to(sim.dtype), weight=w,
                                                          reduction="sum")
                correct = (sim > 0) == ~different
            else:
                loss = contrastive_loss(-sim, different, self.cfg.margin, w)
                correct = (-sim < self.cfg.margin / 2) == ~different
            return loss, {"loss": loss.detach(), "pair_accuracy": (w * correct.to(w.dtype)).sum()}

        return torch.func.grad(pair_loss, has_aux=True)(params)

    def adapt(self, model, params, buffers, support_x, support_y, steps: Optional[int] = None):
        return forward(model, params, buffers, support_x), support_y

    def predict(self, model, params, buffers, state, query_x):
        support_z, support_y = state
        zq = forward(model, params, buffers, query_x)
        sim = self.pair_similarity(params, zq[:, None, :], support_z[None, :, :])  # [Q, S]
        ways = int(support_y.max()) + 1
        onehot = F.one_hot(support_y, ways).to(sim.dtype)
        return sim @ onehot / onehot.sum(0)
