"""Evaluation on held-out tasks: adapt on each episode's support set, score its
queries, and report the mean with a 95 % confidence interval,
    ci95 = 1.96 * std(per-episode metric) / sqrt(episodes),
as the few-shot papers report (600 episodes for final numbers).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from distmeta.algorithms.base import task_loss
from distmeta.tasks.test_time import augmented_scores


def mean_ci95(values: Sequence[float]) -> Dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return {"mean": float("nan"), "ci95": float("nan")}
    std = v.std(ddof=1) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "ci95": float(1.96 * std / math.sqrt(len(v)))}


def evaluate(core, flat_params: torch.Tensor, split: str = "val", episodes: int = 100,
             inner_steps: Optional[int] = None, ways: Optional[int] = None, shots: Optional[int] = None,
             queries: Optional[int] = None, batch: int = 50, augment_copies: int = 0,
             augment_ranges=None, seed: int = 0) -> Dict[str, float]:
    """Mean and 95 % CI of accuracy (classification) or MSE (regression) over
    ``episodes`` held-out tasks of ``split``; regression also reports the
    pre-adaptation MSE. ``augment_copies > 0`` (classification): test-time augmentation
    with ``augment_ranges`` (tasks/test_time.py), episode i's jitter drawn from
    ``default_rng([seed, i])``."""
    overrides = {k: v for k, v in (("ways", ways), ("shots", shots), ("queries", queries)) if v}
    params = {k: v.detach() for k, v in core.params_from_flat(flat_params).items()}
    algo, model, buffers = core.algorithm, core.model, core.buffers
    kind = core.task_distribution(split, **overrides).kind
    if augment_copies and kind != "classification":
        raise ValueError(f"test-time augmentation: needs image classification tasks, not {kind}")
    scores, pre = [], []
    for start in range(0, episodes, batch):
        indices = range(start, min(start + batch, episodes))
        for i, task in zip(indices, core.make_tasks(split, 0, indices, **overrides)):
            if kind == "classification":
                pred = augmented_scores(algo, model, params, buffers, task["support_x"], task["support_y"],
                                        task["query_x"], inner_steps, augment_copies, augment_ranges,
                                        np.random.default_rng([seed, i]))
                scores.append(float((pred.argmax(-1) == task["query_y"]).float().mean()))
                continue
            state = algo.adapt(model, params, buffers, task["support_x"], task["support_y"], inner_steps)
            with torch.no_grad():
                pred = algo.predict(model, params, buffers, state, task["query_x"])
                scores.append(float(task_loss(kind, pred, task["query_y"])))
                base = algo.predict(model, params, buffers, params, task["query_x"])
                pre.append(float(task_loss(kind, base, task["query_y"])))
    key = "accuracy" if kind == "classification" else "mse"
    stats = mean_ci95(scores)
    out = {key: stats["mean"], "ci95": stats["ci95"], "episodes": episodes}
    if augment_copies:
        out["test_time_augment"] = augment_copies
    diverged = int(sum(not math.isfinite(v) for v in scores))
    if diverged:  # adaptation blew up on some tasks: say so instead of hiding it in a NaN mean
        out["nonfinite_episodes"] = diverged
    if pre:
        out["mse_before_adaptation"] = mean_ci95(pre)["mean"]
    return out
