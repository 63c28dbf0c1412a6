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

import numpy as np
import torch

from distmeta.tasks.augment import affine_jitter


def jitter(x: torch.Tensor, rng: np.random.Generator, ranges) -> torch.Tensor:
    """``affine_jitter`` of a float image tensor [N, C, H, W], same dtype and device."""
    out = affine_jitter(x.detach().cpu().float().numpy(), rng, ranges)
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


def augmented_scores(algo, model, params, buffers, support_x: torch.Tensor, support_y: torch.Tensor,
                     query_x: torch.Tensor, inner_steps, copies: int, ranges,
                     rng: np.random.Generator) -> torch.Tensor:
    """Class scores [Q, ways] of ``query_x`` after adapting on the augmented support set."""
    if copies < 1:
        raise ValueError(f"copies: expected >= 1, got {copies}")
    sx = torch.cat([support_x] + [jitter(support_x, rng, ranges) for _ in range(copies)])
    sy = support_y.repeat(1 + copies)
    state = algo.adapt(model, params, buffers, sx, sy, inner_steps)
    views = [query_x] + [jitter(query_x, rng, ranges) for _ in range(copies)]
    with torch.no_grad():
        return torch.stack([torch.log_softmax(algo.predict(model, params, buffers, state, v), -1)
                            for v in views]).mean(0)
