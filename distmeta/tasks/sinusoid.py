"""Sinusoid regression (Finn et al. 2017): y = A sin(x - phi) with
A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5]; K support points and separate query
points. Held-out (val/test) tasks use a dense grid of 100 query points over the
x range, so their MSE measures the whole adapted curve.
"""
from __future__ import annotations

import numpy as np

from distmeta.registry import TASKS
from distmeta.tasks.base import TaskDistribution

GRID_POINTS = 100


class SinusoidTasks(TaskDistribution):
    kind = "regression"
    input_shape = (1,)
    output_dim = 1

    def __init__(self, shots: int, queries: int, amplitude, phase, x_range, grid_queries: bool):
        self.shots, self.queries = shots, queries
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.grid_queries = grid_queries

    def sample(self, seed: int):
        rng = np.random.default_rng(seed)
        amp = rng.uniform(*self.amplitude)
        phase = rng.uniform(*self.phase)
        xs = rng.uniform(*self.x_range, size=(self.shots, 1))
        if self.grid_queries:
            xq = np.linspace(*self.x_range, GRID_POINTS)[:, None]
        else:
            xq = rng.uniform(*self.x_range, size=(self.queries, 1))
        f = lambda x: (amp * np.sin(x - phase)).astype(np.float32)
        return {"support_x": xs.astype(np.float32), "support_y": f(xs), "query_x": xq.astype(np.float32),
                "query_y": f(xq), "seed": np.int64(seed % (2 ** 62)), "amplitude": np.float32(amp),
                "phase": np.float32(phase)}


@TASKS.register("sinusoid")
def sinusoid(task_cfg, datasets, split):
    return SinusoidTasks(task_cfg.shots, task_cfg.queries, task_cfg.amplitude, task_cfg.phase,
                         task_cfg.x_range, grid_queries=(split != "train"))


sinusoid.kind, sinusoid.inputs = "regression", "vectors"  # what config checks compare methods and models to
