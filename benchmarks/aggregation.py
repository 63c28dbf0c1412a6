"""Gradient aggregation in RayEngine: learner sum against collective allreduce,
per-step wall time as the flat gradient grows.

For each gradient size (default about 0.5, 2, 8, 32 and 64 MB) two RayEngines with
2 task workers each are alive at once:
  learner    ``engine.allreduce_threshold_mb: 0``: each worker returns its shard
             gradient, the driver sums them (2 gradients come back per step)
  allreduce  ``engine.allreduce_threshold_mb: 1e-6``: the workers sum their shard
             gradients with a ``ray.util.collective`` gloo allreduce; only rank 0
             returns the sum (1 gradient comes back per step)
They compute the same steps (same parameters, step index s) in turn, step by step,
alternating which goes first (ABBA), so machine-load drift hits both alike.

Workload: first-order MAML on sinusoid regression, meta-batch 2 (one task per
worker), 1 shot and 1 query, 1 inner step, float32, so compute is small and the
step time is mostly parameter broadcast plus aggregation. The model is a backbone
registered by this script, ``aggbench_wide``: Linear(1, H)-ReLU-Linear(H, 16)-ReLU
(+ the regression head, Linear(16, 1)), whose width H is chosen to give the wanted
gradient size (18 H + 33 parameters). Registered components reach the Ray workers
through ``distmeta.registry.user_registrations``.

Columns: median ms/step of each variant, allreduce/learner ratio (< 1: allreduce
faster), the engine's ``bytes_last_step`` (bytes the driver sends and receives
through Ray: parameters plus returned gradients) and, for allreduce, the
worker-to-worker traffic of the collective, estimated for a ring allreduce as
2 (W-1)/W x gradient bytes sent per worker. Crossover: the smallest measured size
from which allreduce is faster at that size and every larger one measured.
``ray.init(address="local", num_cpus=4)`` once, so both 2-worker pools fit.

    python benchmarks/aggregation.py                 # table
    python benchmarks/aggregation.py --json          # one JSON object on stdout
    python benchmarks/aggregation.py --sizes-mb 1 16 --steps 20

Not a test: it takes minutes. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (also puts the repo on sys.path)

_common.quiet_threads()

import torch  # noqa: E402
from torch import nn  # noqa: E402

from distmeta.config import from_dict  # noqa: E402
from distmeta.engine.core import MetaCore  # noqa: E402
from distmeta.registry import MODELS  # noqa: E402

WORKERS = 2
META_BATCH = 2
BOTTLENECK = 16
MODEL_NAME = "aggbench_wide"
VARIANTS = ("learner", "allreduce")


def log(msg: str) -> None:
    print(f"[aggregation {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class WideMLP(nn.Module):
    """Linear(in, H)-ReLU-Linear(H, 16)-ReLU: 18 H + 16 parameters for 1 input."""

    def __init__(self, in_features: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, BOTTLENECK), nn.ReLU())
        self.out_features = BOTTLENECK

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def wide_mlp(model_cfg, input_shape):
    n = 1
    for d in input_shape:
        n *= d
    return WideMLP(n, model_cfg.hidden[0])


MODELS.register(MODEL_NAME, wide_mlp, overwrite=True)


def width_for(size_mb: float) -> int:
    """H such that the flat float32 gradient is about ``size_mb`` MB (18 H + 33 parameters)."""
    return max(1, round((size_mb * 1e6 / 4 - 33) / (2 + BOTTLENECK)))


def config(width: int, threshold_mb: float) -> Dict[str, Any]:
    return {
        "name": "bench-aggregation", "seed": 0, "data": {"dataset": "none"},
        "task": {"kind": "sinusoid", "shots": 1, "queries": 1},
        "model": {"name": MODEL_NAME, "hidden": [width]},
        "algorithm": {"name": "maml", "inner_steps": 1, "inner_lr": 0.01, "first_order": True, "executor": "loop"},
        "optim": {"meta_batch": META_BATCH, "steps": 1000},
        "engine": {"workers": WORKERS, "num_cpus": 1, "device": "cpu", "dtype": "float32",
                   "shard_timeout_s": 600, "allreduce_threshold_mb": threshold_mb},
    }


def measure_size(size_mb: float, warmup: int, steps: int) -> Dict[str, Any]:
    from distmeta.engine.ray_engine import RayEngine

    width = width_for(size_mb)
    engines: Dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        for name, threshold in (("learner", 0.0), ("allreduce", 1e-6)):
            cfg = from_dict(config(width, threshold))
            engines[name] = RayEngine(cfg, MetaCore(cfg))
        startup = time.perf_counter() - t0
        assert not engines["learner"].allreduce and engines["allreduce"].allreduce
        core = engines["learner"].core
        flat = core.initial_flat_params()
        grad_bytes = flat.numel() * flat.element_size()
        walls: Dict[str, List[float]] = {v: [] for v in VARIANTS}
        nbytes: Dict[str, List[int]] = {v: [] for v in VARIANTS}
        grads: Dict[str, torch.Tensor] = {}
        for s in range(warmup + steps):
            order = VARIANTS if s % 2 == 0 else VARIANTS[::-1]   # ABBA: neither always goes first
            for name in order:
                eng = engines[name]
                t = time.perf_counter()
                grad, _, count, _ = eng.meta_gradient(flat, s, META_BATCH)
                wall = time.perf_counter() - t
                assert count == META_BATCH, (name, count)
                if not eng.allreduce and name == "allreduce":
                    raise RuntimeError("the allreduce engine fell back to learner aggregation")
                if s >= warmup:
                    walls[name].append(wall)
                    nbytes[name].append(eng.bytes_last_step)
                if s == warmup + steps - 1:
                    grads[name] = grad
        max_diff = float((grads["learner"] - grads["allreduce"]).abs().max())
    finally:
        for eng in engines.values():
            eng.close()
    out: Dict[str, Any] = {"target_mb": size_mb, "width": width, "params": flat.numel(),
                           "grad_mb": grad_bytes / 1e6, "startup_s": startup, "max_abs_grad_diff": max_diff}
    for name in VARIANTS:
        out[name] = {"step_ms_median": 1e3 * _common.summary(walls[name])["median"],
                     "step_ms_mean": 1e3 * _common.summary(walls[name])["mean"],
                     "step_ms_min": 1e3 * min(walls[name]),
                     "driver_bytes_per_step": int(sum(nbytes[name]) / len(nbytes[name]))}
    out["allreduce"]["collective_bytes_per_worker_est"] = int(2 * (WORKERS - 1) / WORKERS * grad_bytes)
    out["ratio"] = out["allreduce"]["step_ms_median"] / out["learner"]["step_ms_median"]
    return out


def crossover(rows: List[Dict[str, Any]]) -> Optional[float]:
    """Smallest grad size (MB) from which allreduce is faster at it and every larger size."""
    best = None
    for r in sorted(rows, key=lambda r: r["grad_mb"], reverse=True):
        if r["ratio"] >= 1.0:
            break
        best = r["grad_mb"]
    return best


def fmt_mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def table(res: Dict[str, Any]) -> str:
    head = (f"{'grad':>9}{'params':>12}{'learner ms':>12}{'allreduce ms':>14}{'ratio':>8}"
            f"{'driver bytes L':>16}{'driver bytes A':>16}{'collective/worker':>19}")
    lines = [head, "-" * len(head)]
    for r in res["sizes"]:
        lines.append(
            f"{r['grad_mb']:>6.2f} MB{r['params']:>12,}{r['learner']['step_ms_median']:>12.1f}"
            f"{r['allreduce']['step_ms_median']:>14.1f}{r['ratio']:>7.2f}x"
            f"{fmt_mb(r['learner']['driver_bytes_per_step']):>16}"
            f"{fmt_mb(r['allreduce']['driver_bytes_per_step']):>16}"
            f"{fmt_mb(r['allreduce']['collective_bytes_per_worker_est']):>19}")
    c = res["crossover_mb"]
    lines.append(f"crossover: {'none up to %.0f MB' % res['sizes'][-1]['grad_mb'] if c is None else '%.2f MB' % c}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes-mb", type=float, nargs="+", default=[0.5, 2, 8, 32, 64],
                   help="flat gradient sizes in MB (float32)")
    p.add_argument("--steps", type=int, default=15, help="timed steps per variant and size")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (each size)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    if any(s <= 0 for s in args.sizes_mb) or args.steps < 1 or args.warmup < 0:
        p.error("sizes must be > 0, --steps >= 1, --warmup >= 0")
    torch.set_num_threads(1)

    import ray

    log(f"ray.init(address='local', num_cpus={2 * WORKERS})")
    ray.init(address="local", num_cpus=2 * WORKERS, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    rows = []
    # Ray prints driver-side notices (e.g. "(raylet) ... detached actor", from ray.util.collective)
    # on file descriptor 1: send fd 1 to stderr while Ray runs, so stdout holds only the result.
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        for size in sorted(args.sizes_mb):
            log(f"{size:g} MB: width {width_for(size)}, {args.warmup} warm-up + {args.steps} timed steps each")
            rows.append(measure_size(size, args.warmup, args.steps))
            r = rows[-1]
            log(f"  learner {r['learner']['step_ms_median']:.1f} ms, allreduce {r['allreduce']['step_ms_median']:.1f}"
                f" ms, ratio {r['ratio']:.2f}, max |grad diff| {r['max_abs_grad_diff']:.2e}")
    finally:
        ray.shutdown()
        sys.stdout.flush()
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
    machine = {"cpu_cores": cores, "platform": platform.platform(), "python": platform.python_version(),
               "torch": torch.__version__, "ray": ray.__version__,
               "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    out = {"machine": machine, "workers": WORKERS, "meta_batch": META_BATCH, "warmup": args.warmup,
           "steps": args.steps, "sizes": rows, "crossover_mb": crossover(rows)}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"machine: {cores} CPU cores, {machine['platform']}, torch {machine['torch']}, ray {machine['ray']}, "
          f"load average at end {', '.join(f'{x:.1f}' for x in machine['loadavg_at_end'] or [])}")
    print(f"\n{WORKERS} workers, first-order MAML on sinusoid, meta-batch {META_BATCH}, 1 shot, float32; "
          f"median ms/step of {args.steps} interleaved steps after {args.warmup} warm-up")
    print(table(out))
    print("\nratio: allreduce / learner (< 1: allreduce faster); driver bytes: engine.bytes_last_step "
          "(L learner, A allreduce); collective/worker: ring-allreduce estimate, 2(W-1)/W x gradient bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
