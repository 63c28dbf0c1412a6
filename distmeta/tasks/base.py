"""What a task is and how it is seeded.

A task is a dict of arrays ``support_x, support_y, query_x, query_y`` plus its
``seed``. Task ``i`` of meta-step ``t`` in stream ``split`` is a function of
``task_seed(run_seed, split, t, i)`` alone: never of which worker asked for it,
so a meta-batch can be sharded over any number of workers (docs/architecture.md,
invariant 2) and a resumed run sees the same tasks.

A task distribution provides ``kind`` (``classification`` | ``regression``),
``input_shape``, ``output_dim`` and ``sample(seed) -> task``.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch

STREAMS = {"train": 0, "val": 1, "test": 2}


def task_seed(run_seed: int, split: str, step: int, index: int) -> int:
    """A 63-bit seed from (run seed, stream, meta-step, task index)."""
    seq = np.random.SeedSequence([int(run_seed), STREAMS.get(split, 3), int(step), int(index)])
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class TaskDistribution:
    kind = "classification"
    input_shape: Sequence[int] = ()
    output_dim = 1

    def sample(self, seed: int) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def sample_many(self, run_seed: int, split: str, step: int, indices: Sequence[int]) -> List[Dict[str, np.ndarray]]:
        return [self.sample(task_seed(run_seed, split, step, i)) for i in indices]


def to_torch(task: Dict[str, np.ndarray], dtype=torch.float32, device="cpu") -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in task.items():
        t = torch.as_tensor(value)
        if t.is_floating_point():
            t = t.to(dtype)
        out[key] = t.to(device)
    return out


def stack_tasks(tasks: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Stack same-shaped tasks along a new leading task dimension (for vmap)."""
    return {k: torch.stack([t[k] for t in tasks]) for k in tasks[0]}
