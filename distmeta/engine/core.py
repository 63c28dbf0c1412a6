"""``MetaCore``: everything one process needs to compute meta-gradients for a
config (datasets, task distributions, model, algorithm), and the executors that
run a shard of a meta-batch.

Contract: ``core.shard_gradient(flat_params, step, indices)`` returns
``(flat_grad_sum, metric_sums, count)``: the sum over the tasks ``indices`` of
meta-step ``step`` of each task's gradient (``algorithm.task_gradient``) as one
flat float64 tensor, the summed metrics and the number of tasks. The in-process
loop and every Ray worker call exactly this, so results do not depend on who
computes which shard. Sums are accumulated in float64 whatever ``engine.dtype``:
float32 task gradients then add up to the same float32 mean however the tasks are
split into shards (a float32 sum depends on the grouping, and Adam turns that
rounding noise into whole steps on parameters whose true gradient is zero).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from distmeta.schema import ExperimentConfig
from distmeta.registry import ALGORITHMS, DATASETS, TASKS
from distmeta.tasks.base import stack_tasks, to_torch


def set_threads(num_cpus: Optional[float] = None) -> int:
    """Set torch's intra-op threads from the CPUs this process owns (at least 1)."""
    if num_cpus is None:
        try:
            num_cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            num_cpus = os.cpu_count() or 1
    n = max(1, int(num_cpus))
    torch.set_num_threads(n)
    return n


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from distmeta.errors import DistmetaError

        raise DistmetaError(f"engine.device: {name!r} but CUDA is not available on this machine (use auto or cpu)")
    return torch.device(name)


def resolve_executor(name: str, device: torch.device, algorithm, model: torch.nn.Module) -> str:
    """``auto`` picks the executor that measured faster (``benchmarks/meta_step.py``,
    docs/results.md): vmap on GPU and for small convolution-free models (sinusoid MLP,
    meta-batch 25, second order, 1 CPU thread: 3.9 against the loop's 23.6 ms per
    meta-step with 1 inner step, 12.2 against 82.7 ms with 5), the per-task loop for
    convolutional models on CPU. conv4, Omniglot 5-way 1-shot, 15 queries, meta-batch
    32, second order, 1 thread: the loop took 3.14 s of CPU per meta-step (1 inner
    step; 5.86 s with 5), the learn2learn-style loop 3.16 (6.01), vmap 5.00 plus 8.05 s
    of page faults (8.60 plus 16.5): vmapped per-task convolutions become grouped
    convolutions, slower on CPU than one convolution per task, as was a grouped-
    convolution executor written by hand (1.26x the loop's time: 8 tasks, 1 inner step)."""
    if not algorithm.vmappable:
        return "loop"
    if name == "auto":
        has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        return "vmap" if device.type == "cuda" or not has_conv else "loop"
    return name


def flatten(tensors: Dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    return torch.cat([tensors[n].reshape(-1) for n in names])


def unflatten(flat: torch.Tensor, like: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, ref in like.items():
        out[name] = flat[i: i + ref.numel()].view_as(ref)
        i += ref.numel()
    return out


def load_datasets(cfg: ExperimentConfig):
    return DATASETS.get(cfg.data.dataset)(cfg.data)


def meta_batch_gradient(algorithm, model, params, buffers, tasks: List[Dict[str, torch.Tensor]],
                        executor: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Sum over ``tasks`` of ``algorithm.task_gradient`` (accumulated in float64), as a
    Python loop (``algorithm.eager_task_gradient`` per task: plain autograd, fused
    batch norm) or one vmap (``task_gradient`` under ``torch.func.vmap``, layers in
    their composite form: ``distmeta.models.layers.composite_ops``)."""
    f64 = torch.float64
    if executor == "vmap":
        from distmeta.models.layers import composite_ops

        fn = torch.func.vmap(lambda task: algorithm.task_gradient(model, params, buffers, task),
                             randomness="same")
        with composite_ops():
            grads, metrics = fn(stack_tasks(tasks))
        return ({k: g.to(f64).sum(0) for k, g in grads.items()},
                {k: m.to(f64).sum(0) for k, m in metrics.items()})
    grad_sum: Dict[str, torch.Tensor] = {}
    metric_sum: Dict[str, torch.Tensor] = {}
    for task in tasks:
        grads, metrics = algorithm.eager_task_gradient(model, params, buffers, task)
        for name, g in grads.items():
            grad_sum[name] = grad_sum[name] + g.to(f64) if name in grad_sum else g.to(f64)
        for name, m in metrics.items():
            metric_sum[name] = metric_sum[name] + m.to(f64) if name in metric_sum else m.to(f64)
    return grad_sum, metric_sum


class MetaCore:
    def __init__(self, cfg: ExperimentConfig, datasets=None, device: Optional[str] = None):
        from distmeta.models.network import build_network

        self.cfg = cfg
        self.device = resolve_device(device or cfg.engine.device)
        self.dtype = getattr(torch, cfg.engine.dtype)
        self.datasets = load_datasets(cfg) if datasets is None else datasets
        self.tasks = {}
        train = self.task_distribution("train")
        kind = train.kind
        self.algorithm = ALGORITHMS.get(cfg.algorithm.name)(cfg.algorithm, kind)
        torch.manual_seed(cfg.seed)
        self.model = build_network(cfg, train.input_shape, self.algorithm, train.output_dim).to(
            self.device, self.dtype)
        self.param_names = [n for n, _ in self.model.named_parameters()]
        self.buffers = {n: b for n, b in self.model.named_buffers()}
        self.executor = resolve_executor(cfg.algorithm.executor, self.device, self.algorithm, self.model)

    def task_distribution(self, split: str, **overrides):
        """The task distribution of ``split``, optionally with other ways/shots/queries."""
        key = (split, tuple(sorted(overrides.items())))
        if key not in self.tasks:
            task_cfg = self.cfg.task.model_copy(update=overrides)
            for field in ("ways", "shots"):
                if overrides.get(field):
                    task_cfg = task_cfg.model_copy(update={f"train_{field}": None})
            self.tasks[key] = TASKS.get(task_cfg.kind)(task_cfg, self.datasets, split)
        return self.tasks[key]

    def initial_flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def params_from_flat(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        like = dict(self.model.named_parameters())
        return unflatten(flat.to(self.device, self.dtype), like)

    def make_tasks(self, split: str, step: int, indices: Sequence[int], **overrides):
        """The tasks ``indices`` of meta-step ``step`` as torch tensors: a stacked ``TaskBatch``
        when the distribution samples in bulk (``sample_batch``), else a list of task dicts.
        Both are sequences of task dicts; ``stack_tasks`` passes a ``TaskBatch`` through."""
        dist = self.task_distribution(split, **overrides)
        batch = getattr(dist, "sample_batch", None)
        if batch is not None:
            return batch(self.cfg.seed, split, step, indices).to(self.dtype, self.device)
        return [to_torch(t, self.dtype, self.device) for t in dist.sample_many(self.cfg.seed, split, step, indices)]

    def shard_gradient(self, flat_params: torch.Tensor, step: int, indices: Sequence[int], tasks=None):
        """``tasks``: the already sampled ``make_tasks("train", step, indices)``, if any."""
        params = self.params_from_flat(flat_params)
        if tasks is None:
            tasks = self.make_tasks("train", step, indices)
        grads, metrics = meta_batch_gradient(self.algorithm, self.model, params, self.buffers, tasks,
                                             self.executor)
        flat = flatten({n: grads[n].detach() for n in self.param_names}, self.param_names).cpu()
        return flat, {k: float(v) for k, v in metrics.items()}, len(indices)
