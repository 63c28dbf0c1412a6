"""Cost of one meta-step, against the physical yardstick: plain training on the same images.

One command measures, in ONE process and run, for conv4 on Omniglot 5-way 1-shot
(15 queries, meta-batch 32) and for the sinusoid MLP (meta-batch 25), with 1 and 5
inner steps, first and second order:

- ``loop``:  ``distmeta.engine.core.meta_batch_gradient(..., "loop")`` (a Python loop over tasks)
- ``vmap``:  ``meta_batch_gradient(..., "vmap")`` (one ``torch.func.vmap`` over the task dimension)
- ``l2l``:   a learn2learn-style baseline written here: per task, clone the ``nn.Module``
             (parameters as differentiable copies), adapt it with
             ``torch.autograd.grad(create_graph=second_order)`` and manual parameter
             updates, then ``backward()`` of the query loss into the original parameters
- ``plain``: the yardstick, non-meta supervised training of the same network on exactly
             the batches a meta-step touches: per task, ``inner_steps`` forward+backward
             passes over the support set and one over the query set
- ``plain_sq``: a looser yardstick, meta_batch x (support + query) x (inner_steps + 1)
             images: (inner_steps + 1) passes per task over support AND query

and reports ms per meta-step, tasks/s and the ratio to ``plain`` ("x plain": 1.0 means a
meta-step costs what plain training on the same images costs) and loop / vmap (> 1: vmap wins).

    python benchmarks/meta_step.py                      # full table on this machine's CPUs
    python benchmarks/meta_step.py --quick              # meta-batch 4, 1 repeat: a smoke run
    python benchmarks/meta_step.py --device cuda --json # one JSON object
    python benchmarks/meta_step.py --data-root DIR   # real episodes

Without ``--data-root`` the episodes are random tensors of the same shapes (the cost
does not depend on pixel values).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distmeta.algorithms.base import task_loss  # noqa: E402
from distmeta.algorithms.maml import MAML  # noqa: E402
from distmeta.algorithms.maml import MAMLConfig  # noqa: E402
from distmeta.config import ModelConfig  # noqa: E402
from distmeta.engine.core import meta_batch_gradient  # noqa: E402
from distmeta.models.backbones import MLP, Conv4  # noqa: E402
from distmeta.models.network import Network  # noqa: E402


# --------------------------------------------------------------------------- tasks
def random_classification_tasks(n, ways, shots, queries, size, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append({"support_x": torch.rand(ways * shots, 1, size, size, generator=g).to(device),
                    "support_y": torch.arange(ways).repeat_interleave(shots).to(device),
                    "query_x": torch.rand(ways * queries, 1, size, size, generator=g).to(device),
                    "query_y": torch.arange(ways).repeat_interleave(queries).to(device)})
    return out


def omniglot_tasks(n, ways, shots, queries, size, device, root):
    from distmeta.config import DataConfig, TaskConfig
    from distmeta.registry import DATASETS, TASKS
    from distmeta.tasks.base import to_torch
    import distmeta.builtin  # noqa: F401

    data = DATASETS.get("omniglot")(DataConfig(dataset="omniglot", root=root, preset="minimal", image_size=size,
                                               download=False))
    task_cfg = TaskConfig(kind="classification", ways=ways, shots=shots, queries=queries, rotations=True)
    dist = TASKS.get("classification")(task_cfg, data, "train")
    keep = ("support_x", "support_y", "query_x", "query_y")
    return [{k: v for k, v in to_torch(t, torch.float32, device).items() if k in keep}
            for t in dist.sample_many(0, "train", 0, range(n))]


def sinusoid_tasks(n, shots, queries, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        amp, phase = 0.1 + 4.9 * torch.rand(1, generator=g), 3.14159 * torch.rand(1, generator=g)
        xs, xq = 10 * torch.rand(shots, 1, generator=g) - 5, 10 * torch.rand(queries, 1, generator=g) - 5
        out.append({k: v.to(device) for k, v in {"support_x": xs, "support_y": amp * torch.sin(xs - phase),
                                                 "query_x": xq, "query_y": amp * torch.sin(xq - phase)}.items()})
    return out


# --------------------------------------------------------------------------- executors
def clone_module(module: torch.nn.Module) -> torch.nn.Module:
    """learn2learn's ``clone_module``: a copy whose parameters are differentiable
    functions (``p.clone()``) of the original's."""
    clone = copy.deepcopy(module)
    originals = dict(module.named_parameters())
    for name, sub in clone.named_modules():
        for pname, value in list(sub._parameters.items()):
            if value is not None:
                sub._parameters[pname] = originals[f"{name}.{pname}" if name else pname].clone()
    return clone


def update_module(module: torch.nn.Module, updates: Dict[str, torch.Tensor]) -> None:
    """learn2learn's ``update_module``: p <- p + update, replacing the tensors in place."""
    for name, sub in module.named_modules():
        for pname, value in list(sub._parameters.items()):
            if value is not None:
                sub._parameters[pname] = value + updates[f"{name}.{pname}" if name else pname]


def l2l_meta_step(model, tasks, kind, inner_steps, inner_lr, second_order):
    model.zero_grad(set_to_none=True)
    for task in tasks:
        learner = clone_module(model)
        for _ in range(inner_steps):
            loss = task_loss(kind, learner(task["support_x"]), task["support_y"])
            params = dict(learner.named_parameters())
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=second_order)
            update_module(learner, {n: -inner_lr * g for n, g in zip(params, grads)})
        task_loss(kind, learner(task["query_x"]), task["query_y"]).backward()
    return model


def plain_step(model, tasks, kind, inner_steps):
    """Yardstick: plain training on exactly the batches a meta-step pushes through the
    network: per task, ``inner_steps`` forward+backward passes over the support set and
    one over the query set (no inner loop, no second order, no per-task weights)."""
    model.zero_grad(set_to_none=True)
    for task in tasks:
        for _ in range(inner_steps):
            task_loss(kind, model(task["support_x"]), task["support_y"]).backward()
        task_loss(kind, model(task["query_x"]), task["query_y"]).backward()
    return model


def plain_sq_step(model, tasks, kind, inner_steps):
    """The upper yardstick: (inner_steps + 1) forward+backward passes per task over its
    support AND query images, i.e. meta_batch x (support + query) x (inner_steps + 1) images."""
    model.zero_grad(set_to_none=True)
    for task in tasks:
        x = torch.cat([task["support_x"], task["query_x"]])
        y = torch.cat([task["support_y"], task["query_y"]])
        for _ in range(inner_steps + 1):
            task_loss(kind, model(x), y).backward()
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], device, repeats: int, warmup: int) -> float:
    """Median seconds of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_mb(device):
    """Peak GPU memory of the cell (CUDA only; CPU RSS cannot be split per cell)."""
    return torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None


# --------------------------------------------------------------------------- benchmark
def bench_setting(label, model, tasks, kind, inner_steps, inner_lr, second_order, device, repeats, warmup,
                  executors):
    algo = MAML(MAMLConfig(name="maml", inner_steps=inner_steps, inner_lr=inner_lr,
                                first_order=not second_order), kind)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    fns = {
        "loop": lambda: meta_batch_gradient(algo, model, params, buffers, tasks, "loop"),
        "vmap": lambda: meta_batch_gradient(algo, model, params, buffers, tasks, "vmap"),
        "l2l": lambda: l2l_meta_step(model, tasks, kind, inner_steps, inner_lr, second_order),
        "plain": lambda: plain_step(model, tasks, kind, inner_steps),
        "plain_sq": lambda: plain_sq_step(model, tasks, kind, inner_steps),
    }
    rows = []
    check = None
    if "l2l" in executors:  # the baseline computes the same meta-gradient as the core
        ref, _ = meta_batch_gradient(algo, model, params, buffers, tasks, "loop")
        l2l_meta_step(model, tasks, kind, inner_steps, inner_lr, second_order)
        num = sum(float((p.grad - ref[n]).norm() ** 2) for n, p in model.named_parameters())
        den = sum(float(ref[n].norm() ** 2) for n, _ in model.named_parameters())
        check = (num / max(den, 1e-30)) ** 0.5
        model.zero_grad(set_to_none=True)
    for name in executors:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            seconds = timeit(fns[name], device, repeats, warmup)
            error = None
        except (RuntimeError, torch.OutOfMemoryError) as exc:  # e.g. vmap out of memory
            seconds, error = float("nan"), str(exc).splitlines()[0][:120]
        rows.append({"setting": label, "executor": name, "inner_steps": inner_steps,
                     "order": "second" if second_order else "first", "meta_batch": len(tasks),
                     "ms_per_step": seconds * 1e3, "tasks_per_s": len(tasks) / seconds if seconds else 0.0,
                     "peak_mb": peak_memory_mb(device), "error": error})
        if name == "l2l":
            rows[-1]["l2l_grad_rel_err"] = check
        print(f"  {label:<8} {name:<6} steps={inner_steps} {rows[-1]['order']:<6} "
              f"{seconds * 1e3:10.1f} ms", file=sys.stderr, flush=True)
    plain = next((r["ms_per_step"] for r in rows if r["executor"] == "plain"), float("nan"))
    by = {r["executor"]: r["ms_per_step"] for r in rows}
    for r in rows:
        r["x_plain"] = r["ms_per_step"] / plain
        if r["executor"] == "loop" and "vmap" in by:
            r["loop_over_vmap"] = by["loop"] / by["vmap"]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--meta-batch", type=int, default=32, help="conv4 tasks per meta-step (sinusoid: 25)")
    p.add_argument("--sinusoid-meta-batch", type=int, default=25)
    p.add_argument("--repeats", type=int, default=None, help="timed meta-steps per cell, median (default 3; --quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed meta-steps first (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: CPUs available)")
    p.add_argument("--data-root", help="Omniglot zips folder: real episodes (minimal preset, train split)")
    p.add_argument("--inner-steps", type=int, nargs="+", default=[1, 5])
    p.add_argument("--orders", nargs="+", choices=["first", "second"], default=["first", "second"])
    p.add_argument("--executors", nargs="+", choices=["loop", "vmap", "l2l", "plain", "plain_sq"],
                   default=["loop", "vmap", "l2l", "plain", "plain_sq"])
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--skip-conv", action="store_true")
    p.add_argument("--skip-sinusoid", action="store_true")
    p.add_argument("--quick", action="store_true", help="meta-batch 4 (sinusoid 5) and 1 repeat unless --repeats")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--json-out", help="also write the JSON object to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.meta_batch, args.sinusoid_meta_batch = 4, 5
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.warmup = 1 if args.warmup is None else args.warmup
    if args.threads is None:
        try:
            args.threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover
            args.threads = os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")

    rows: List[dict] = []
    ways, shots, size = args.ways, 1, 28
    if not args.skip_conv:
        torch.manual_seed(0)
        model = Network(Conv4(1, args.channels, size), torch.nn.Linear(args.channels, ways)).to(device)
        tasks = (omniglot_tasks(args.meta_batch, ways, shots, args.queries, size, device, args.data_root)
                 if args.data_root else
                 random_classification_tasks(args.meta_batch, ways, shots, args.queries, size, device))
        for k in args.inner_steps:
            for order in args.orders:
                rows += bench_setting("conv4", model, tasks, "classification", k, 0.4, order == "second",
                                      device, args.repeats, args.warmup, args.executors)
    if not args.skip_sinusoid:
        torch.manual_seed(0)
        model = Network(MLP(1, [40, 40]), torch.nn.Linear(40, 1)).to(device)
        tasks = sinusoid_tasks(args.sinusoid_meta_batch, 10, 10, device)
        for k in args.inner_steps:
            for order in args.orders:
                rows += bench_setting("sinusoid", model, tasks, "regression", k, 0.01, order == "second",
                                      device, args.repeats, args.warmup, args.executors)

    meta = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": args.threads, "torch": torch.__version__, "repeats": args.repeats,
            "conv4": {"ways": ways, "shots": shots, "queries": args.queries, "image_size": size,
                      "channels": args.channels, "meta_batch": args.meta_batch,
                      "data": "omniglot" if args.data_root else "random"},
            "sinusoid": {"shots": 10, "queries": 10, "hidden": [40, 40], "meta_batch": args.sinusoid_meta_batch}}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({**meta, "rows": rows}, indent=1))
    if args.json:
        print(json.dumps({**meta, "rows": rows}))
        return 0
    print(f"device {meta['device']} ({args.device}), torch {torch.__version__}, {args.threads} thread(s), "
          f"median of {args.repeats}; conv4 {ways}-way {shots}-shot {args.queries} queries "
          f"meta-batch {args.meta_batch} ({meta['conv4']['data']} episodes); sinusoid meta-batch "
          f"{args.sinusoid_meta_batch}")
    print(f"{'model':<9}{'inner':>5} {'order':<7}{'executor':<9}{'ms/step':>10}{'tasks/s':>10}"
          f"{'x plain':>9}{'loop/vmap':>10}{'GPU MB':>9}")
    for r in rows:
        lv = f"{r['loop_over_vmap']:.2f}" if "loop_over_vmap" in r else ""
        ms = "failed" if r["error"] else f"{r['ms_per_step']:.1f}"
        mem = "" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        print(f"{r['setting']:<9}{r['inner_steps']:>5} {r['order']:<7}{r['executor']:<9}{ms:>10}"
              f"{r['tasks_per_s']:>10.1f}{r['x_plain']:>9.2f}{lv:>10}{mem:>9}")
    checks = [r["l2l_grad_rel_err"] for r in rows if r.get("l2l_grad_rel_err") is not None]
    if checks:
        print(f"l2l baseline vs core loop meta-gradient: max relative error {max(checks):.1e}")
    for r in rows:
        if r["error"]:
            print(f"{r['setting']} {r['executor']} steps={r['inner_steps']} {r['order']}: {r['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
