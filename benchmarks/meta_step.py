"""Cost of one meta-step, against its physical yardstick: plain training on the same images.

One command measures, in ONE process, for conv4 on Omniglot 5-way 1-shot (15 queries,
meta-batch 32) and for the sinusoid MLP (meta-batch 25), with 1 and 5 inner steps, first
and second order, these rows (``--executors``):

distmeta (``distmeta.engine.core.meta_batch_gradient``):
- ``loop``:  a Python loop over tasks, ``algorithm.eager_task_gradient`` per task (plain
             ``torch.autograd``); what ``algorithm.executor: auto`` picks for conv4 on CPU
- ``vmap``:  one ``torch.func.vmap`` of ``algorithm.task_gradient`` over the task dimension
             (what ``auto`` picks on CUDA and for convolution-free models)
- ``func``:  for comparison, the loop over ``algorithm.task_gradient`` (nested
             ``torch.func.grad``): the loop executor's per-task path before ``eager_task_gradient``
- ``old_loop``: the loop executor as it was before (``func`` with the layers' composite
             form, ``distmeta.models.layers.composite_ops``, and conv4's ReLU before its
             max-pool): the same function of the parameters, the old cost
- ``loop_stock``: ``loop`` on the same network built from torch's stock layers
             (``nn.Conv2d``, ``nn.BatchNorm2d`` without running statistics,
             ``nn.MaxPool2d``, ReLU then pool) instead of ``distmeta.models.layers``' CPU
             paths: what those layers buy
baselines, on the same network and episodes:
- ``l2l``:   a learn2learn-style loop written here: per task, clone the ``nn.Module``
             (parameters as differentiable copies), adapt it with
             ``torch.autograd.grad(create_graph=second_order)`` and manual parameter
             updates, then ``backward()`` of the query loss into the original parameters
- ``plain_batch``: the physical yardstick, plain supervised training batched the way a
             user batches it: ONE forward and backward pass of all the meta-batch's images
             (every task's support and query set, concatenated) through the same network,
             with the usual loss (cross-entropy / MSE) and ``backward()``
- ``plain_batch_stock``: ``plain_batch`` on torch's stock layers (as for ``loop_stock``):
             the network as a user writes it in torch
- ``plain``: plain training on exactly the batches a meta-step pushes through the
             network, task by task: per task, ``inner_steps`` forward+backward passes over
             the support set and one over the query set
- ``plain_sq``: a looser yardstick, (inner_steps + 1) passes per task over support AND query

Each row reports seconds per meta-step (medians): wall clock, this process's CPU time in
user space (``user s``) and in the kernel (``sys s``: page faults on freshly allocated
memory, mostly); tasks/s (wall clock) and ratios: ``x l2l`` (< 1: faster than the
learn2learn-style loop), ``x batch`` (to ``plain_batch``; 1.0 means a meta-step costs what
one batched pass of plain training over the same images costs) and ``x plain`` (to
per-task ``plain``). On CPU the ratios use user CPU time. With 1 thread it is the compute:
it equals wall time on an idle machine, stays comparable when other jobs share the cores
(the 1-minute load average is printed with every row), and leaves out the kernel's page
faults, which swing from run to run with the allocator's state (``plain_batch``, whose
activations are 32 times a task's, measured 0.2 and 2.3 s of them for the same pass) and
would otherwise flatter the meta-step against the batched yardstick. The rows are timed
round-robin (repeat r of every row, then repeat r+1), so a change of load hits every row
alike. ``*`` marks the executor ``algorithm.executor: auto`` runs for the setting
(``distmeta.engine.core.resolve_executor``; the JSON rows carry ``"auto": true``).

    python benchmarks/meta_step.py                      # full table on this machine's CPUs
    python benchmarks/meta_step.py --quick              # meta-batch 4, 1 repeat: a smoke run
    python benchmarks/meta_step.py --device cuda --json # one JSON object
    python benchmarks/meta_step.py --data-root DIR      # real Omniglot episodes (the zips' folder)
    python benchmarks/meta_step.py --meta-batch 32 --threads 1 --repeats 3 --inner-steps 1 5 \
        --orders second --skip-sinusoid --data-root DIR # the published CPU table

Without ``--data-root`` the episodes are random tensors of the same shapes (the cost
does not depend on pixel values).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
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
from distmeta.engine.core import meta_batch_gradient, resolve_executor  # noqa: E402
from distmeta.models.backbones import MLP, Conv4  # noqa: E402
from distmeta.models.layers import TaskBatchNorm2d, composite_ops  # noqa: E402
from distmeta.models.network import Network  # noqa: E402

DISTMETA = ("loop", "vmap", "func", "old_loop", "loop_stock")
BASELINES = ("l2l", "plain_batch", "plain_batch_stock", "plain", "plain_sq")
EXECUTORS = DISTMETA + BASELINES


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


def plain_batch_step(model, x, y, kind):
    """The yardstick: one forward+backward pass of all the meta-batch's images as one batch."""
    model.zero_grad(set_to_none=True)
    task_loss(kind, model(x), y).backward()
    return model


def plain_step(model, tasks, kind, inner_steps):
    """Plain training on exactly the batches a meta-step pushes through the network: per
    task, ``inner_steps`` forward+backward passes over the support set and one over the
    query set (no inner loop, no second order, no per-task weights)."""
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


def func_loop(algo, model, params, buffers, tasks):
    """The per-task loop over ``algorithm.task_gradient`` (nested ``torch.func.grad``), summed in float64."""
    grad_sum, metric_sum = {}, {}
    for task in tasks:
        grads, metrics = algo.task_gradient(model, params, buffers, task)
        for name, g in grads.items():
            grad_sum[name] = grad_sum[name] + g.double() if name in grad_sum else g.double()
        for name, m in metrics.items():
            metric_sum[name] = metric_sum[name] + m.double() if name in metric_sum else m.double()
    return grad_sum, metric_sum


def old_network(model):
    """The same network in its previous form: each conv4 block's ReLU before its max-pool
    (the same function; distmeta now pools first). Parameter names are unchanged."""
    old = copy.deepcopy(model)
    for seq in old.modules():
        if isinstance(seq, torch.nn.Sequential):
            mods = list(seq)
            for i in range(len(mods) - 1):
                if isinstance(mods[i], torch.nn.MaxPool2d) and isinstance(mods[i + 1], torch.nn.ReLU):
                    seq[i], seq[i + 1] = mods[i + 1], mods[i]
    return old


def stock_network(model):
    """The same network (parameters, names, function) from torch's stock layers: each
    ``layers.Conv2d`` an ``nn.Conv2d``, each ``layers.MaxPool2d`` an ``nn.MaxPool2d`` after its
    ReLU, each ``TaskBatchNorm2d`` an ``nn.BatchNorm2d(track_running_stats=False)`` (always the
    batch's statistics: the same function, with torch's own double backward)."""
    stock = old_network(model)
    for module in list(stock.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Conv2d) and type(child) is not torch.nn.Conv2d:
                plain = torch.nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                        child.padding, child.dilation, child.groups, child.bias is not None,
                                        child.padding_mode).to(child.weight)
                plain.load_state_dict(child.state_dict())
                setattr(module, name, plain)
            elif isinstance(child, torch.nn.MaxPool2d) and type(child) is not torch.nn.MaxPool2d:
                setattr(module, name, torch.nn.MaxPool2d(child.kernel_size, child.stride, child.padding))
            elif isinstance(child, TaskBatchNorm2d):
                plain = torch.nn.BatchNorm2d(child.weight.numel(), eps=child.eps,
                                             track_running_stats=False).to(child.weight)
                plain.load_state_dict(child.state_dict())
                setattr(module, name, plain)
    return stock


def old_loop(algo, model, params, buffers, tasks):
    with composite_ops():
        return func_loop(algo, model, params, buffers, tasks)


def rel_err(grads: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor]) -> float:
    num = sum(float((grads[n].double() - ref[n].double()).norm() ** 2) for n in ref)
    den = sum(float(ref[n].double().norm() ** 2) for n in ref)
    return (num / max(den, 1e-30)) ** 0.5


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def user_system_seconds():
    """This process's CPU time so far in user space and in the kernel (page faults of fresh
    allocations, mostly)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def load1() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return float("nan")


# --------------------------------------------------------------------------- benchmark
def bench_setting(label, model, tasks, kind, inner_steps, inner_lr, second_order, device, repeats, warmup,
                  executors):
    algo = MAML(MAMLConfig(name="maml", inner_steps=inner_steps, inner_lr=inner_lr,
                           first_order=not second_order), kind)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    auto = resolve_executor("auto", device, algo, model)
    old = old_network(model) if "old_loop" in executors else None
    stock = stock_network(model) if {"loop_stock", "plain_batch_stock"} & set(executors) else None
    x_all = torch.cat([t[k] for t in tasks for k in ("support_x", "query_x")])
    y_all = torch.cat([t[k] for t in tasks for k in ("support_y", "query_y")])
    fns = {
        "loop": lambda: meta_batch_gradient(algo, model, params, buffers, tasks, "loop"),
        "vmap": lambda: meta_batch_gradient(algo, model, params, buffers, tasks, "vmap"),
        "func": lambda: func_loop(algo, model, params, buffers, tasks),
        "old_loop": lambda: old_loop(algo, old, params, buffers, tasks),
        "loop_stock": lambda: meta_batch_gradient(algo, stock, params, buffers, tasks, "loop"),
        "l2l": lambda: l2l_meta_step(model, tasks, kind, inner_steps, inner_lr, second_order),
        "plain_batch": lambda: plain_batch_step(model, x_all, y_all, kind),
        "plain_batch_stock": lambda: plain_batch_step(stock, x_all, y_all, kind),
        "plain": lambda: plain_step(model, tasks, kind, inner_steps),
        "plain_sq": lambda: plain_sq_step(model, tasks, kind, inner_steps),
    }
    # every meta-gradient row computes the loop executor's meta-gradient (relative error, float32)
    checks: Dict[str, float] = {}
    if any(name in executors for name in ("func", "old_loop", "vmap", "l2l", "loop_stock")):
        ref, _ = meta_batch_gradient(algo, model, params, buffers, tasks, "loop")
    for name in executors:
        if name in ("func", "old_loop", "vmap", "loop_stock"):
            try:
                checks[name] = rel_err(fns[name]()[0], ref)
            except (RuntimeError, torch.OutOfMemoryError):
                pass
        elif name == "l2l":
            l2l_meta_step(model, tasks, kind, inner_steps, inner_lr, second_order)
            checks[name] = rel_err({n: p.grad for n, p in model.named_parameters()}, ref)
            model.zero_grad(set_to_none=True)
    wall: Dict[str, List[float]] = {n: [] for n in executors}
    cpu: Dict[str, List[float]] = {n: [] for n in executors}
    sys_: Dict[str, List[float]] = {n: [] for n in executors}
    user: Dict[str, List[float]] = {n: [] for n in executors}
    loads: Dict[str, List[float]] = {n: [] for n in executors}
    errors: Dict[str, str] = {}
    peak: Dict[str, float] = {}
    for name in executors:  # warm-up (and, on CUDA, the row's peak memory)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            for _ in range(warmup):
                fns[name]()
            sync(device)
        except (RuntimeError, torch.OutOfMemoryError) as exc:  # e.g. vmap out of memory
            errors[name] = str(exc).splitlines()[0][:120]
        if device.type == "cuda":
            peak[name] = torch.cuda.max_memory_allocated() / 2 ** 20
    for _ in range(repeats):  # round-robin: repeat r of every row, then r + 1
        for name in executors:
            if name in errors:
                continue
            try:
                sync(device)
                t0, c0, (u0, s0) = time.perf_counter(), time.process_time(), user_system_seconds()
                fns[name]()
                sync(device)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                u1, s1 = user_system_seconds()
                user[name].append(u1 - u0)
                sys_[name].append(s1 - s0)
                loads[name].append(load1())
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                errors[name] = str(exc).splitlines()[0][:120]
    rows = []
    for name in executors:
        ok = name not in errors and wall[name]
        seconds = statistics.median(wall[name]) if ok else float("nan")
        cpu_s = statistics.median(cpu[name]) if ok else float("nan")
        sys_s = statistics.median(sys_[name]) if ok else float("nan")
        user_s = statistics.median(user[name]) if ok else float("nan")
        rows.append({"setting": label, "executor": name, "inner_steps": inner_steps,
                     "order": "second" if second_order else "first", "meta_batch": len(tasks),
                     "auto": name == auto, "ms_per_step": seconds * 1e3, "cpu_ms_per_step": cpu_s * 1e3,
                     "user_ms_per_step": user_s * 1e3, "sys_ms_per_step": sys_s * 1e3,
                     "tasks_per_s": len(tasks) / seconds if ok and seconds else 0.0,
                     "load1": statistics.mean(loads[name]) if loads[name] else float("nan"),
                     "peak_mb": peak.get(name), "error": errors.get(name)})
        if name in checks:
            rows[-1]["grad_rel_err_vs_loop"] = checks[name]
        if name == "l2l":
            rows[-1]["l2l_grad_rel_err"] = checks.get(name)
        print(f"  {label:<8} {name:<11} steps={inner_steps} {rows[-1]['order']:<6} "
              f"{seconds:8.3f} s wall {user_s:8.3f} s user {sys_s:6.2f} s sys", file=sys.stderr, flush=True)
    key = "user_ms_per_step" if device.type == "cpu" else "ms_per_step"
    by = {r["executor"]: r[key] for r in rows}
    nan = float("nan")
    for r in rows:
        r["ratio_clock"] = "user" if device.type == "cpu" else "wall"
        r["x_l2l"] = r[key] / by.get("l2l", nan)
        r["x_plain_batch"] = r[key] / by.get("plain_batch", nan)
        r["x_plain"] = r[key] / by.get("plain", nan)
        if r["executor"] == "loop" and "vmap" in by:
            r["loop_over_vmap"] = by["loop"] / by["vmap"]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--meta-batch", type=int, default=32, help="conv4 tasks per meta-step (sinusoid: 25)")
    p.add_argument("--sinusoid-meta-batch", type=int, default=25)
    p.add_argument("--repeats", type=int, default=None, help="timed meta-steps per row, median (default 3; --quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed meta-steps first (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: CPUs available)")
    p.add_argument("--data-root", help="Omniglot zips folder: real episodes (minimal preset, train split)")
    p.add_argument("--inner-steps", type=int, nargs="+", default=[1, 5])
    p.add_argument("--orders", nargs="+", choices=["first", "second"], default=["first", "second"])
    p.add_argument("--executors", nargs="+", choices=list(EXECUTORS), default=list(EXECUTORS),
                   help="rows to time, in this order (default: all)")
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
    executors = list(dict.fromkeys(args.executors))
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.time()

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
                                      device, args.repeats, args.warmup, executors)
    if not args.skip_sinusoid:
        torch.manual_seed(0)
        model = Network(MLP(1, [40, 40]), torch.nn.Linear(40, 1)).to(device)
        tasks = sinusoid_tasks(args.sinusoid_meta_batch, 10, 10, device)
        for k in args.inner_steps:
            for order in args.orders:
                rows += bench_setting("sinusoid", model, tasks, "regression", k, 0.01, order == "second",
                                      device, args.repeats, args.warmup, executors)

    meta = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": args.threads, "torch": torch.__version__, "repeats": args.repeats, "warmup": args.warmup,
            "ratio_clock": "user" if device.type == "cpu" else "wall",
            "loadavg_start": list(load_start) if load_start else None,
            "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "seconds": time.time() - started,
            "conv4": {"ways": ways, "shots": shots, "queries": args.queries, "image_size": size,
                      "channels": args.channels, "meta_batch": args.meta_batch,
                      "data": "omniglot" if args.data_root else "random"},
            "sinusoid": {"shots": 10, "queries": 10, "hidden": [40, 40], "meta_batch": args.sinusoid_meta_batch}}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({**meta, "rows": rows}, indent=1))
    if args.json:
        print(json.dumps({**meta, "rows": rows}))
        return 0
    fmt = lambda la: "n/a" if not la else " ".join(f"{v:.2f}" for v in la)  # noqa: E731
    clock = "user CPU time" if device.type == "cpu" else "wall time"
    print(f"device {meta['device']} ({args.device}), torch {torch.__version__}, {args.threads} thread(s), "
          f"median of {args.repeats} after {args.warmup} warm-up; conv4 {ways}-way {shots}-shot {args.queries} "
          f"queries meta-batch {args.meta_batch} ({meta['conv4']['data']} episodes); sinusoid meta-batch "
          f"{args.sinusoid_meta_batch}")
    print(f"load average (1, 5, 15 min) at start {fmt(meta['loadavg_start'])}, at end {fmt(meta['loadavg_end'])}; "
          f"ratios from {clock}; * = the executor auto picks")
    print(f"{'model':<9}{'inner':>5} {'order':<7}{'executor':<19}{'s/step':>10}{'user s':>10}{'sys s':>8}{'tasks/s':>9}"
          f"{'x l2l':>8}{'x batch':>9}{'x plain':>9}{'load1':>7}{'GPU MB':>8}")
    for r in rows:
        name = r["executor"] + ("*" if r["auto"] else "")
        wall_s = "failed" if r["error"] else f"{r['ms_per_step'] / 1e3:.4g}"
        user_s = "" if r["error"] else f"{r['user_ms_per_step'] / 1e3:.4g}"
        sys_s = "" if r["error"] else f"{r['sys_ms_per_step'] / 1e3:.2f}"
        mem = "" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        print(f"{r['setting']:<9}{r['inner_steps']:>5} {r['order']:<7}{name:<19}{wall_s:>10}{user_s:>10}{sys_s:>8}"
              f"{r['tasks_per_s']:>9.2f}{r['x_l2l']:>8.2f}{r['x_plain_batch']:>9.2f}{r['x_plain']:>9.2f}"
              f"{r['load1']:>7.2f}{mem:>8}")
    errs = {r["executor"]: r["grad_rel_err_vs_loop"] for r in rows if r.get("grad_rel_err_vs_loop") is not None}
    if errs:
        worst = {}
        for r in rows:
            if r.get("grad_rel_err_vs_loop") is not None:
                worst[r["executor"]] = max(worst.get(r["executor"], 0.0), r["grad_rel_err_vs_loop"])
        print("meta-gradient vs the loop executor, max relative error: "
              + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    for r in rows:
        if r["error"]:
            print(f"{r['setting']} {r['executor']} steps={r['inner_steps']} {r['order']}: {r['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
