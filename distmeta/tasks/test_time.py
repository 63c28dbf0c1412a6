"""Test-time augmentation (TTA) of one-shot classification episodes.

With ``n`` copies, adaptation sees the support set and ``n`` affine-jittered copies of it
(the labels repeated: ``(1 + n) * shots`` examples per class), and the class scores of a
query are the mean log-softmax over the query and ``n`` jittered copies of it:

    scores(x) = 1 / (1 + n) * sum_{v = 0..n} log_softmax(predict(adapt(S_aug), A_v(x))),
    A_0 = identity, A_v ~ the jitter of ``task.augment`` (tasks/augment.py).

For ProtoNets this ranks classes like the distance from the mean query embedding to the
prototype of the augmented support. Each query view is scored as its own batch, the way the
query set is scored without TTA (batch-norm statistics come from the batch). The jitter of an
episode comes from its own generator, so the scores are a function of the episode and ``n``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from distmeta.schema import AugmentConfig
from distmeta.tasks.augment import affine_jitter


def jitter(x: torch.Tensor, rng: np.random.Generator, ranges) -> torch.Tensor:
    """``affine_jitter`` of a float image tensor [N, C, H, W], same dtype and device."""
    out = affine_jitter(x.detach().cpu().float().numpy(), rng, ranges)
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


def augmented_scores(algo, model, params, buffers, support_x: torch.Tensor, support_y: torch.Tensor,
                     query_x: torch.Tensor, inner_steps, copies: int, ranges=None,
                     rng: Optional[np.random.Generator] = None) -> torch.Tensor:
    """Class scores [Q, ways] of ``query_x`` after adapting on the augmented support set;
    ``copies = 0``: the plain scores ``predict(adapt(S), x)``. ``ranges``: the jitter
    (``task.augment``; None: its defaults)."""
    if copies < 0:
        raise ValueError(f"copies: expected >= 0, got {copies}")
    ranges = ranges if ranges is not None else AugmentConfig()
    sx = torch.cat([support_x] + [jitter(support_x, rng, ranges) for _ in range(copies)])
    state = algo.adapt(model, params, buffers, sx, support_y.repeat(1 + copies), inner_steps)
    with torch.no_grad():
        if not copies:
            return algo.predict(model, params, buffers, state, query_x)
        views = [query_x] + [jitter(query_x, rng, ranges) for _ in range(copies)]
        return torch.stack([torch.log_softmax(algo.predict(model, params, buffers, state, v), -1)
                            for v in views]).mean(0)
