"""Sinusoid regression (Finn et al. 2017): y = A sin(x - phi) with
A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5]; K support points and separate query
points. Held-out (val/test) tasks use a dense grid of 100 query points over the
x range, so their MSE measures the whole adapted curve.

Tasks are drawn in bulk (``sample_batch``): two Philox streams per (run seed,
split, meta-step), one for the curves (amplitude, phase, the task's seed) and one
for the x values, task ``i`` reading its own fixed block of each
(``tasks.base.task_draws``), so a shard of any size gets the same tasks and the
whole meta-batch is a handful of array operations and one tensor per field.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch

from distmeta.registry import TASKS
from distmeta.tasks.base import TaskBatch, TaskDistribution, task_draws, uniform

GRID_POINTS = 100


class SinusoidTasks(TaskDistribution):
    kind = "regression"
    input_shape = (1,)
    output_dim = 1

    def __init__(self, shots: int, queries: int, amplitude, phase, x_range, grid_queries: bool):
        self.shots, self.queries = shots, queries
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.grid_queries = grid_queries
        points = shots + (0 if grid_queries else queries)     # support x, then query x
        self.point_draws = -(-points // 4) * 4                  # a whole number of Philox blocks per task
        self._grid = np.linspace(*x_range, GRID_POINTS)[:, None]

    def _tasks(self, curve: np.ndarray, points: np.ndarray) -> Dict[str, np.ndarray]:
        """The stacked numpy fields of the tasks whose raw draws are the rows of ``curve`` (seed,
        amplitude, phase, unused) and ``points`` (the x values). The curve has its own stream, so
        task i of a step is the same curve whatever ``task.shots``/``queries`` (``distmeta eval
        --shots K`` scores every K on the same curves)."""
        n, k = len(curve), self.shots
        amp = uniform(curve[:, 1], *self.amplitude)[:, None, None]
        phase = uniform(curve[:, 2], *self.phase)[:, None, None]
        xs = uniform(points[:, :k], *self.x_range)[:, :, None]
        if self.grid_queries:
            xq = np.broadcast_to(self._grid, (n, GRID_POINTS, 1))
        else:
            xq = uniform(points[:, k:k + self.queries], *self.x_range)[:, :, None]
        f = lambda x: (amp * np.sin(x - phase)).astype(np.float32)
        # The fields a task has (tasks.base), nothing more: every field is one more input to vmap.
        return {"support_x": xs.astype(np.float32), "support_y": f(xs), "query_x": xq.astype(np.float32),
                "query_y": f(xq), "seed": (curve[:, 0] >> np.uint64(2)).astype(np.int64)}

    def sample_batch(self, run_seed: int, split: str, step: int, indices: Sequence[int]) -> TaskBatch:
        """The tasks ``indices`` of meta-step ``step``, stacked (float32 tensors, seed int64)."""
        fields = self._tasks(task_draws(run_seed, split, step, indices, 4, stream=0),
                             task_draws(run_seed, split, step, indices, self.point_draws, stream=1))
        return TaskBatch({key: torch.from_numpy(value) for key, value in fields.items()})

    def sample_many(self, run_seed: int, split: str, step: int, indices: Sequence[int]) -> List[Dict[str, np.ndarray]]:
        """The same tasks as ``sample_batch``, one dict of numpy arrays each."""
        return self.sample_batch(run_seed, split, step, indices).numpy_tasks()

    def sample(self, seed: int):
        """One task from an integer seed alone (its own Philox stream)."""
        keys = [np.random.SeedSequence([int(seed), stream]).generate_state(2, dtype=np.uint64) for stream in (0, 1)]
        curve, points = (np.random.Philox(key=key).random_raw(n).reshape(1, n)
                         for key, n in zip(keys, (4, self.point_draws)))
        return {k: v[0] for k, v in self._tasks(curve, points).items()}


@TASKS.register("sinusoid")
def sinusoid(task_cfg, datasets, split):
    return SinusoidTasks(task_cfg.shots, task_cfg.queries, task_cfg.amplitude, task_cfg.phase,
                         task_cfg.x_range, grid_queries=(split != "train"))


sinusoid.kind, sinusoid.inputs = "regression", "vectors"  # what config checks compare methods and models to
