"""What a task is and how it is seeded.

A task is a dict of arrays ``support_x, support_y, query_x, query_y`` plus its
``seed``. Task ``i`` of meta-step ``t`` in stream ``split`` is a function of
``(run_seed, split, t, i)`` alone: never of which worker asked for it, so a
meta-batch can be sharded over any number of workers (docs/architecture.md,
invariant 2) and a resumed run sees the same tasks.

A task distribution provides ``kind`` (``classification`` | ``regression``),
``input_shape``, ``output_dim`` and ``sample_many(run_seed, split, step, indices)
-> [task]``; the default draws each task from its own generator seeded with
``task_seed(run_seed, split, step, i)`` (``sample(seed) -> task``). A distribution
whose tasks are cheap to draw in bulk (the sinusoid) may also provide
``sample_batch(run_seed, split, step, indices) -> TaskBatch``, the same tasks
already stacked: one array operation for the whole batch instead of a
``SeedSequence``, a generator and a tensor conversion per task. Its per-task random
numbers come from ``task_draws``: counter-based Philox streams keyed by
``(run_seed, split, step, stream)``, task ``i`` reading the fixed block of counters that
starts at ``i * draws``, so any subset of indices reads the same numbers.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Sequence, Union

import numpy as np
import torch

STREAMS = {"train": 0, "val": 1, "test": 2}
BATCH_DOMAIN = 0x5A4D   # keeps the per-step Philox keys apart from task_seed's per-task seeds


def task_seed(run_seed: int, split: str, step: int, index: int) -> int:
    """A 63-bit seed from (run seed, stream, meta-step, task index)."""
    seq = np.random.SeedSequence([int(run_seed), STREAMS.get(split, 3), int(step), int(index)])
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def step_key(run_seed: int, split: str, step: int, stream: int = 0) -> np.ndarray:
    """The 128-bit Philox key of (run seed, split, meta-step, stream): one ``SeedSequence`` per
    step and stream (a distribution's independent sequences, e.g. per-task and per-point draws)."""
    seq = np.random.SeedSequence([int(run_seed), STREAMS.get(split, 3), int(step), BATCH_DOMAIN, int(stream)])
    return seq.generate_state(2, dtype=np.uint64)


def task_draws(run_seed: int, split: str, step: int, indices: Sequence[int], draws: int,
               stream: int = 0) -> np.ndarray:
    """``draws`` raw 64-bit random numbers per task, shape ``(len(indices), draws)``:
    row ``j`` is a function of ``(run_seed, split, step, stream, indices[j])`` alone. Philox
    is counter-based, so task ``i`` starts its own block at counter ``i * draws / 4`` (each
    counter value yields four numbers) and a contiguous run of indices is one call.
    ``draws`` must be a multiple of 4."""
    if draws % 4:
        raise ValueError(f"draws: {draws} is not a multiple of 4")
    idx = [int(i) for i in indices]
    out = np.empty((len(idx), draws), dtype=np.uint64)
    key, j = step_key(run_seed, split, step, stream), 0
    while j < len(idx):  # one Philox call per contiguous run of indices (usually one per shard)
        k = j + 1
        while k < len(idx) and idx[k] == idx[k - 1] + 1:
            k += 1
        if idx[j] < 0:
            raise ValueError(f"task index {idx[j]} < 0")
        gen = np.random.Philox(key=key, counter=idx[j] * (draws // 4))
        out[j:k] = gen.random_raw((k - j) * draws).reshape(k - j, draws)
        j = k
    return out


def uniform(raw: np.ndarray, low: float, high: float) -> np.ndarray:
    """Raw 64-bit numbers to float64 uniforms in ``[low, high)`` (53 random bits each)."""
    return low + (high - low) * ((raw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0))


class TaskBatch:
    """Tasks stacked along a leading task dimension: ``tensors[k][j]`` is field ``k`` of
    the ``j``-th task. The vmap executor takes ``tensors`` as is (``stack_tasks``); as a
    sequence it yields one task dict of views per task, so the per-task loop executor,
    evaluation and plots read it like a list of tasks."""

    def __init__(self, tensors: Dict[str, torch.Tensor]):
        self.tensors = tensors
        self._len = len(next(iter(tensors.values()))) if tensors else 0

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, j: int) -> Dict[str, torch.Tensor]:
        if not -self._len <= j < self._len:
            raise IndexError(j)
        return {k: v[j] for k, v in self.tensors.items()}

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        return (self[j] for j in range(self._len))

    def to(self, dtype=torch.float32, device="cpu") -> "TaskBatch":
        """Floating fields to ``dtype``, everything to ``device`` (as ``to_torch``)."""
        return TaskBatch({k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
                          for k, v in self.tensors.items()})

    def numpy_tasks(self) -> List[Dict[str, np.ndarray]]:
        """The tasks as ``sample_many`` returns them: one dict of numpy arrays (0-d fields as
        numpy scalars) per task."""
        arrays = {k: v.cpu().numpy() for k, v in self.tensors.items()}
        return [{k: a[j] for k, a in arrays.items()} for j in range(self._len)]


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


def stack_tasks(tasks: Union[List[Dict[str, torch.Tensor]], TaskBatch]) -> Dict[str, torch.Tensor]:
    """Stack same-shaped tasks along a new leading task dimension (for vmap); a
    ``TaskBatch`` is stacked already."""
    if isinstance(tasks, TaskBatch):
        return tasks.tensors
    return {k: torch.stack([t[k] for t in tasks]) for k in tasks[0]}
