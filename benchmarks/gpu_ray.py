"""The Ray engine on one GPU: in-process vmap against 1, 2 and 4 Ray task workers that
share the GPU (``engine.num_gpus: 1/W`` each), conv4 MAML on Omniglot 5-way 1-shot,
meta-batch 32, second order, 1 inner step (the shipped ``distmeta/data/omniglot_minimal``
zips; ``benchmarks/_common.omniglot_maml_config``).

Transport: actor calls only (``engine.compiled_graph: never``, ``allreduce_threshold_mb: 0``;
a collective allreduce on GPUs needs cupy/NCCL, which the GPU machine lacks). Every row
computes the meta-gradients of steps ``warmup .. warmup+steps-1`` at the same fixed
parameters, so the rows do the same work; the first timed step's gradient of every Ray
row is compared with the in-process one (relative error).

Columns: tasks/s (meta-batch x timed steps / their wall time), median step ms, ``vs local``
(tasks/s over the in-process row), speed-up over 1 Ray worker, parallel efficiency
(speed-up / W), the engine's overhead outside compute (``transfer`` of
``RayEngine.meta_gradient``'s timing: wall minus the slowest shard's compute; ms and
fraction of the step), bytes moved per step, worker start-up seconds and the devices the
workers report.

    python benchmarks/gpu_ray.py                          # CUDA, W = 1 2 4, meta-batch 32
    python benchmarks/gpu_ray.py --json-out res.json      # also one JSON object (rewritten after each row)
    python benchmarks/gpu_ray.py --cpu-smoke              # same code paths on CPU: tiny sizes, W = 1 2

Run by ``benchmarks/gpu_ray_check.sh`` on the GPU machine (with Ray from the bundle of
``benchmarks/gpu_bundle.sh``). Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (puts the repo on sys.path; Ray-free)

_common.quiet_threads()

import torch  # noqa: E402

from distmeta.config import from_dict  # noqa: E402
from distmeta.engine.core import MetaCore  # noqa: E402
from distmeta.engine.local import LocalEngine  # noqa: E402


def log(msg: str) -> None:
    print(f"[gpu_ray {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def config(root, args, workers: int) -> Dict[str, Any]:
    cfg = _common.omniglot_maml_config(root, meta_batch=args.meta_batch, queries=args.queries,
                                       executor=args.executor, workers=workers)
    cfg["model"]["channels"] = args.channels
    cfg["engine"].update({
        "device": args.device,
        "num_cpus": args.worker_cpus,
        # --cpu-smoke declares a GPU to Ray too, so the fractional-GPU placement runs (devices stay CPU)
        "num_gpus": 1.0 / workers if workers and (args.device == "cuda" or args.cpu_smoke) else 0.0,
        "compiled_graph": "never",        # actor calls only
        "allreduce_threshold_mb": 0.0,    # no collective allreduce (needs cupy on GPUs)
        "shard_timeout_s": 120.0,
        "placement_timeout_s": 60.0,
        "max_worker_restarts": 0,
    })
    return cfg


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def measure(engine, flat, args) -> Dict[str, Any]:
    """warm-up steps, then timed steps; the first timed step's gradient is kept."""
    walls, transfers, computes, nbytes = [], [], [], []
    first_grad = None
    for s in range(args.warmup + args.steps):
        sync(args.device)
        t0 = time.perf_counter()
        grad, _, count, timing = engine.meta_gradient(flat, s, args.meta_batch)
        sync(args.device)
        wall = time.perf_counter() - t0
        assert count == args.meta_batch, (count, args.meta_batch)
        if s < args.warmup:
            log(f"  warm-up step {s}: {1e3 * wall:.1f} ms")
            continue
        if first_grad is None:
            first_grad = grad.detach().cpu()
        walls.append(wall)
        transfers.append(timing.get("transfer", 0.0))
        computes.append(timing["compute"] + timing.get("wait", 0.0))
        nbytes.append(getattr(engine, "bytes_last_step", 0))
    mean_wall = statistics.fmean(walls)
    return {
        "tasks_per_s": args.meta_batch * len(walls) / sum(walls),
        "step_ms_median": 1e3 * statistics.median(walls),
        "step_ms_mean": 1e3 * mean_wall,
        "slowest_shard_compute_ms_mean": 1e3 * statistics.fmean(computes),
        "overhead_ms_mean": 1e3 * statistics.fmean(transfers),
        "overhead_fraction": statistics.fmean(transfers) / mean_wall,
        "bytes_per_step": int(statistics.fmean(nbytes)),
        "steps": len(walls),
        "_grad": first_grad,
    }


def table(res: Dict[str, Any]) -> str:
    head = (f"{'row':<10}{'GPU/worker':>11}{'tasks/s':>9}{'step ms':>9}{'vs local':>10}{'speed-up':>10}"
            f"{'effic.':>8}{'ovh ms':>8}{'ovh %':>7}{'MB/step':>9}{'grad err':>10}{'start s':>9}")
    lines = [head, "-" * len(head)]
    for key, r in res["rows"].items():
        ray = key.startswith("ray ")

        def col(fmt: str, field: str, scale: float = 1.0, suffix: str = "") -> str:
            return format(scale * r[field], fmt) + suffix if ray and r.get(field) is not None else "-"

        gpu = f"{r['num_gpus']:.2f}" if ray and r.get("num_gpus") else "-"
        lines.append(
            f"{key:<10}{gpu:>11}{r['tasks_per_s']:>9.1f}{r['step_ms_median']:>9.1f}"
            f"{col('.2f', 'vs_local', 1, 'x'):>10}{col('.2f', 'speedup', 1, 'x'):>10}"
            f"{col('.0f', 'efficiency', 100, '%'):>8}{col('.1f', 'overhead_ms_mean'):>8}"
            f"{col('.1f', 'overhead_fraction', 100):>7}{col('.2f', 'bytes_per_step', 1e-6):>9}"
            f"{col('.1e', 'grad_rel_err'):>10}{col('.1f', 'startup_s'):>9}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--queries", type=int, default=1, help="query images per class (Finn et al.: 1 for 1-shot)")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--executor", default="auto", help="algorithm.executor (auto: vmap on CUDA, loop for conv on CPU)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (each row)")
    p.add_argument("--worker-cpus", type=float, default=1.0, help="engine.num_cpus per worker")
    p.add_argument("--object-store-mb", type=int, default=1024)
    p.add_argument("--synthetic", action="store_true", help="synthetic Omniglot-shaped data instead of the zips")
    p.add_argument("--json-out", help="write one JSON object here (rewritten after each row)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="CPU, meta-batch 4, 8 channels, W = 1 2, 1 warm-up + 1 timed step, one GPU declared "
                        "to Ray (num_gpus 1/W per worker, computing on CPU): the code paths only")
    args = p.parse_args(argv)
    # SIGTERM (the check's time limit) unwinds like Ctrl-C: the finally below shuts Ray down
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt("SIGTERM")))
    if args.cpu_smoke:
        args.device, args.meta_batch, args.channels, args.steps, args.warmup = "cpu", 4, 8, 1, 1
        if args.workers == [1, 2, 4]:
            args.workers = [1, 2]
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (use --cpu-smoke for a CPU dry run)")
    if min(args.workers) < 1:
        p.error("--workers: counts must be >= 1")

    torch.set_num_threads(1 if args.device == "cpu" else max(1, min(4, os.cpu_count() or 1)))
    root = None if args.synthetic else _common.find_omniglot(None)
    data_name = f"Omniglot images_background_small1 ({root})" if root else "synthetic Omniglot-shaped data"
    import ray

    machine = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "ray": ray.__version__, "ray_file": ray.__file__, "cpu_cores": os.cpu_count(),
               "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"}
    out: Dict[str, Any] = {"machine": machine, "data": data_name, "meta_batch": args.meta_batch,
                           "channels": args.channels, "queries": args.queries, "workers": args.workers,
                           "warmup": args.warmup, "steps": args.steps, "transport": "actor calls",
                           "cpu_smoke": args.cpu_smoke, "rows": {}, "errors": {}}

    def save() -> None:
        if args.json_out:
            clean = {k: v for k, v in out.items()}
            clean["rows"] = {k: {f: x for f, x in r.items() if not f.startswith("_")} for k, r in out["rows"].items()}
            with open(args.json_out + ".part", "w") as f:
                json.dump(clean, f, indent=1)
            os.replace(args.json_out + ".part", args.json_out)

    log(f"{machine['device']}, torch {torch.__version__}, ray {ray.__version__} ({ray.__file__}); {data_name}")
    cfg0 = config(root, args, 0)
    t0 = time.perf_counter()
    local_core = MetaCore(from_dict(cfg0))
    datasets = local_core.datasets   # decoded once, shared by every row
    flat = local_core.initial_flat_params().cpu()   # the learner's parameters live on the CPU (Learner.flat_params)
    log(f"in-process: executor {local_core.executor} on {local_core.device} "
        f"({flat.numel()} parameters; set up in {time.perf_counter() - t0:.1f}s)")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    local = measure(LocalEngine(local_core), flat, args)
    local.update({"executor": local_core.executor, "device": str(local_core.device)})
    if args.device == "cuda":
        local["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.empty_cache()   # the workers share this GPU
    out["rows"]["local"] = local
    save()
    log(f"in-process: {local['tasks_per_s']:.1f} tasks/s, {local['step_ms_median']:.1f} ms/step")

    init = {"address": "local", "num_cpus": max(1, int(max(args.workers) * args.worker_cpus + 0.999)),
            "include_dashboard": False, "log_to_driver": True, "configure_logging": False,
            "object_store_memory": args.object_store_mb * 2**20}
    if args.device == "cuda" or args.cpu_smoke:
        init["num_gpus"] = 1
    log(f"ray.init({', '.join(f'{k}={v!r}' for k, v in init.items())})")
    ray.init(**init)
    out["ray_cluster_resources"] = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
    from distmeta.engine.ray_engine import RayEngine

    try:
        for w in args.workers:
            key = f"ray {w}"
            cfg = config(root, args, w)
            engine = None
            try:
                t0 = time.perf_counter()
                engine = RayEngine(from_dict(cfg), local_core)
                startup = time.perf_counter() - t0
                devices = sorted({str(i.get("device")) for i in engine.worker_info})
                log(f"{key}: {w} worker(s) at num_gpus={cfg['engine']['num_gpus']:.3g} up in {startup:.1f}s "
                    f"on {devices}; compiled={engine.compiled} allreduce={engine.allreduce}")
                if args.device == "cuda" and not all(d.startswith("cuda") for d in devices):
                    raise RuntimeError(f"workers report devices {devices}, not cuda")
                row = measure(engine, flat, args)
                row.update({"workers": w, "num_gpus": cfg["engine"]["num_gpus"], "startup_s": startup,
                            "worker_devices": devices, "worker_pids": [i.get("pid") for i in engine.worker_info],
                            "compiled": engine.compiled, "allreduce": engine.allreduce,
                            "grad_rel_err": rel_err(row["_grad"], local["_grad"])})
                out["rows"][key] = row
                log(f"{key}: {row['tasks_per_s']:.1f} tasks/s, {row['step_ms_median']:.1f} ms/step, overhead "
                    f"{100 * row['overhead_fraction']:.1f}%, gradient vs in-process {row['grad_rel_err']:.1e}")
            except Exception as exc:  # one failed W is reported; the others still run
                out["errors"][key] = f"{type(exc).__name__}: {exc}"
                log(f"{key}: FAILED: {out['errors'][key]}")
            finally:
                if engine is not None:
                    engine.close()
            save()
    finally:
        ray.shutdown()

    rays = {k: r for k, r in out["rows"].items() if k.startswith("ray ")}
    if rays:
        w0 = min(r["workers"] for r in rays.values())
        base = out["rows"][f"ray {w0}"]["tasks_per_s"] / w0
        for r in rays.values():
            r["vs_local"] = r["tasks_per_s"] / local["tasks_per_s"]
            r["speedup"] = r["tasks_per_s"] / base
            r["efficiency"] = r["speedup"] / r["workers"]
        out["speedup"] = {str(r["workers"]): r["speedup"] for r in rays.values()}
        out["efficiency"] = {str(r["workers"]): r["efficiency"] for r in rays.values()}
        out["overhead_fraction"] = {str(r["workers"]): r["overhead_fraction"] for r in rays.values()}
        out["max_grad_rel_err"] = max(r["grad_rel_err"] for r in rays.values())
    save()
    print(f"Ray engine on {machine['device']} ({args.device}): conv4 MAML, Omniglot 5-way 1-shot "
          f"({args.queries} query/class), {args.channels} channels, meta-batch {args.meta_batch}, 2nd order, "
          f"1 inner step; {data_name}; actor calls; {args.steps} timed steps after {args.warmup} warm-up; "
          f"in-process executor {local['executor']}; torch {torch.__version__}, ray {ray.__version__}")
    print(table(out))
    print("vs local: tasks/s over the in-process row; speed-up: over the fewest Ray workers (per worker); "
          "effic.: speed-up / W; ovh: wall minus the slowest shard's compute; grad err: relative error of "
          "the first timed step's meta-gradient vs in-process")
    for key, err in out["errors"].items():
        print(f"{key}: FAILED: {err}")
    tol = 1e-2 if args.device == "cuda" else 1e-6   # float32 (TF32 convs) on CUDA; a wrong shard is O(1)
    bad_grad = [k for k, r in rays.items() if r["grad_rel_err"] > tol]
    if bad_grad:
        print(f"gradient mismatch (> {tol:g}) in: {', '.join(bad_grad)}")
    return 1 if out["errors"] or bad_grad or not rays else 0


if __name__ == "__main__":
    sys.exit(main())
