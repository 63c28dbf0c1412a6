"""Scaling of the Ray engine: tasks/s for the in-process loop and for 1..W Ray
task workers, against the ceiling of W bare single-threaded processes.

Workloads (one meta-gradient per step, fixed parameters, so every row computes
exactly the same tasks: steps ``warmup .. warmup+steps-1`` of seed 0):
  omniglot  conv4 MAML, Omniglot 5-way 1-shot, meta-batch 32, second order,
            1 inner step (real Omniglot ``images_background_small1`` from
            ``--data-root``, default: the sets shipped with distmeta; else synthetic
            images of the same shape, registered as dataset ``synthetic_omniglot``)
  sinusoid  MAML on sinusoid regression, meta-batch 25 (experiments/sinusoid_maml.yaml)

Rows per workload:
  local 1t / local 2t   LocalEngine in this process with 1 / 2 torch threads
  ceiling W             W bare ``multiprocessing`` processes (spawn, 1 thread each,
                        no Ray) computing their shard with ``MetaCore.shard_gradient``,
                        started and finished together by barriers every step: the best
                        W workers could do (a benchmark baseline only, not an engine)
  ray W                 RayEngine with W task-worker actors (1 CPU each)

The rows are measured in one block per W: the local loop, the W-process ceiling and
the W-worker engine all live at once and compute step s in turn before step s+1, so
ratios inside a block (of ceiling, vs local) see the same machine load, which on a
shared 2-core box drifts by 2x within minutes. Columns: tasks/s (meta-batch x timed
steps / their wall time), median step time, tasks/s over the interleaved local
1-thread loop, speed-up over 1 Ray worker (raw, and of the "vs local" ratios),
parallel efficiency (speed-up / W), the engine's overhead outside compute (its own
``transfer``: wall minus the slowest shard's compute, see ``step_timing``; ms and % of
the step), bytes moved per step (``engine.bytes_last_step``) and the fraction of the
ceiling. ``ray.init(address="local", num_cpus=max W)`` once for the whole run.

    python benchmarks/scaling.py --steps 10           # table
    python benchmarks/scaling.py --steps 10 --json    # one JSON object on stdout
    python benchmarks/scaling.py --workers 1 2 --only sinusoid

Not a test: it takes minutes. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import threading
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (also puts the repo on sys.path, registers synthetic_omniglot)

_common.quiet_threads()

import torch  # noqa: E402

from distmeta.config import from_dict  # noqa: E402
from distmeta.engine.core import MetaCore  # noqa: E402
from distmeta.engine.local import LocalEngine  # noqa: E402
from distmeta.engine.ray_engine import shard_sizes  # noqa: E402


def log(msg: str) -> None:
    print(f"[scaling {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- runners: each computes the meta-gradient of one step; rounds interleave them ----------------
class Recorder:
    """Per-step wall time, the engine's compute/overhead split and bytes moved."""

    def __init__(self, meta_batch: int):
        self.meta_batch = meta_batch
        self.walls: List[float] = []
        self.computes: List[float] = []
        self.overheads: List[float] = []
        self.nbytes: List[int] = []

    def add(self, wall: float, compute: float, overhead: float, nbytes: int) -> None:
        self.walls.append(wall)
        self.computes.append(compute)
        self.overheads.append(overhead)
        self.nbytes.append(nbytes)

    def stats(self) -> Dict[str, Any]:
        n, total = len(self.walls), sum(self.walls)
        mean_wall, mean_over = total / n, sum(self.overheads) / n
        return {
            "tasks_per_s": self.meta_batch * n / total,
            "step_ms_mean": 1e3 * mean_wall,
            "step_ms_median": 1e3 * sorted(self.walls)[n // 2],
            "compute_ms_mean": 1e3 * sum(self.computes) / n,
            "overhead_ms_mean": 1e3 * mean_over,
            "overhead_fraction": mean_over / mean_wall if mean_wall > 0 else 0.0,
            "bytes_per_step": int(sum(self.nbytes) / n),
            "steps": n,
        }


class EngineRunner:
    """LocalEngine (with ``threads`` torch threads while it runs) or RayEngine."""

    def __init__(self, engine, flat: torch.Tensor, meta_batch: int, threads: Optional[int] = None):
        self.engine, self.flat, self.meta_batch, self.threads = engine, flat, meta_batch, threads

    def step(self, s: int):
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            t0 = time.perf_counter()
            _, _, count, timing = self.engine.meta_gradient(self.flat, s, self.meta_batch)
            wall = time.perf_counter() - t0
        finally:
            torch.set_num_threads(1)
        assert count == self.meta_batch, (count, self.meta_batch)
        slowest = timing["compute"] + timing.get("wait", 0.0)  # the slowest shard's compute
        return wall, slowest, timing.get("transfer", 0.0), getattr(self.engine, "bytes_last_step", 0)

    def close(self) -> None:
        self.engine.close()


def _ceiling_child(cfg_dict, datasets, start, stop, steps_range, barrier, queue):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        core = MetaCore(from_dict(cfg_dict), datasets=datasets)
        flat = core.initial_flat_params()
        queue.put(("ready", os.getpid()))
        for s in steps_range:
            barrier.wait()
            core.shard_gradient(flat, s, range(start, stop))
            barrier.wait()
        barrier.wait()  # exit only when the parent closes the row: a process's teardown costs
        #                 ~0.5 s of CPU, which would land in another row's timed steps
    except threading.BrokenBarrierError:
        pass  # the parent gave up; it reports why
    except BaseException as exc:  # noqa: BLE001 - tell the parent, which would otherwise wait
        queue.put(("error", repr(exc)))
        barrier.abort()
        raise


class CeilingRunner:
    """W bare spawned processes (1 thread each, no Ray), one contiguous shard each, started
    and finished together by two barriers per step: what W workers could do at best. They
    exit only at ``close()``, so their teardown never lands in another row's timed steps."""

    def __init__(self, cfg_dict, datasets, workers: int, steps_range: List[int]):
        ctx = mp.get_context("spawn")
        self.meta_batch = cfg_dict["optim"]["meta_batch"]
        shards = shard_sizes(self.meta_batch, workers)
        self.barrier, self.queue = ctx.Barrier(len(shards) + 1), ctx.Queue()
        self.steps = list(steps_range)
        self.procs = [ctx.Process(target=_ceiling_child, daemon=True,
                                  args=(cfg_dict, datasets, a, b, self.steps, self.barrier, self.queue))
                      for a, b in shards]
        for p in self.procs:
            p.start()
        for _ in self.procs:
            kind, info = self.queue.get(timeout=600)
            if kind == "error":
                self.close()
                raise RuntimeError(f"ceiling process failed: {info}")

    def step(self, s: int):
        assert s == self.steps.pop(0), "ceiling steps run in the order given"
        t0 = time.perf_counter()
        self.barrier.wait(timeout=600)
        self.barrier.wait(timeout=600)
        wall = time.perf_counter() - t0
        return wall, wall, 0.0, 0

    def close(self) -> None:
        try:
            if self.steps:
                self.barrier.abort()
            else:
                self.barrier.wait(timeout=60)  # let the children exit, now that no row is timed
        except threading.BrokenBarrierError:
            pass
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def local_runner(cfg_dict, datasets, threads: int) -> EngineRunner:
    core = MetaCore(from_dict(cfg_dict), datasets=datasets)
    return EngineRunner(LocalEngine(core), core.initial_flat_params(), cfg_dict["optim"]["meta_batch"], threads)


def ray_runner(cfg_dict, datasets, workers: int) -> EngineRunner:
    from distmeta.engine.ray_engine import RayEngine

    d = json.loads(json.dumps(cfg_dict))
    d["engine"]["workers"] = workers
    cfg = from_dict(d)
    core = MetaCore(cfg, datasets=datasets)
    return EngineRunner(RayEngine(cfg, core), core.initial_flat_params(), d["optim"]["meta_batch"])


def interleave(runners: Dict[str, Any], warmup: int, steps: int, chunk_s: float = 0.5) -> Dict[str, Dict[str, Any]]:
    """Round-robin in chunks: every runner computes steps [s, s+k) before any computes
    step s+k, so the rows compared with each other see the same machine load (a shared
    2-core box drifts within minutes). k = 1 for slow steps; for fast ones (sinusoid)
    k steps last about ``chunk_s`` so that each runner runs back to back, as in training
    (a Ray worker idle for a few ms answers ~2 ms slower; benchmarks/README.md)."""
    rec = {name: Recorder(r.meta_batch) for name, r in runners.items()}
    first = next(iter(runners.values()))
    k = 1
    s = 0
    while s < warmup + steps:
        stop = min(s + k, warmup + steps)
        for name, runner in runners.items():
            for t in range(s, stop):
                wall, compute, overhead, nbytes = runner.step(t)
                if t >= warmup:
                    rec[name].add(wall, compute, overhead, nbytes)
                elif runner is first and t == warmup - 1:  # the chunk length, from the last warm-up step
                    k = max(1, int(chunk_s / max(wall, 1e-6)))
        s = stop
    return {name: r.stats() for name, r in rec.items()}


# -- one workload ----------------------------------------------------------------------------
def run_workload(name, cfg_dict, datasets, workers: List[int], warmup: int, steps: int) -> Dict[str, Any]:
    """One block per W, each interleaving local 1 thread, the W-process ceiling and the
    W-worker engine (the first block also the local 2-thread loop). Ratios inside a block
    (engine / ceiling, engine / local) compare like with like; the speed-up over 1 worker
    compares blocks, and is also given normalised by each block's own local row."""
    meta_batch = cfg_dict["optim"]["meta_batch"]
    rows: Dict[str, Dict[str, Any]] = {}
    blocks: Dict[str, Dict[str, Any]] = {}
    for i, w in enumerate(workers):
        log(f"{name}: block W={w}: starting the local loop, {w} bare process(es) and {w} Ray worker(s)")
        runners: Dict[str, Any] = {"local 1t": local_runner(cfg_dict, datasets, 1)}
        if i == 0:
            runners["local 2t"] = local_runner(cfg_dict, datasets, 2)
        try:
            runners[f"ceiling {w}"] = CeilingRunner(cfg_dict, datasets, w, list(range(warmup + steps)))
            t0 = time.perf_counter()
            runners[f"ray {w}"] = ray_runner(cfg_dict, datasets, w)
            startup = time.perf_counter() - t0
            log(f"{name}: block W={w}: {warmup} warm-up + {steps} timed steps per row, interleaved")
            block = interleave(runners, warmup, steps)
        finally:
            for r in runners.values():
                r.close()
        block[f"ray {w}"]["startup_s"] = startup
        blocks[str(w)] = block
        for key, stats in block.items():
            if key not in rows:  # local rows: from the first block
                rows[key] = stats
    ordered = {k: rows[k] for k in ["local 1t", "local 2t"] if k in rows}
    ordered.update({f"ceiling {w}": rows[f"ceiling {w}"] for w in workers})
    ordered.update({f"ray {w}": rows[f"ray {w}"] for w in workers})
    w0 = workers[0]
    base = rows[f"ray {w0}"]["tasks_per_s"] / w0  # 1 worker (or the smallest W, per worker)
    base_norm = rows[f"ray {w0}"]["tasks_per_s"] / blocks[str(w0)]["local 1t"]["tasks_per_s"] / w0
    speedup, speedup_norm, efficiency, overhead, ceiling_fraction = {}, {}, {}, {}, {}
    for w in workers:
        r, b = rows[f"ray {w}"], blocks[str(w)]
        r["vs_local_1t"] = r["tasks_per_s"] / b["local 1t"]["tasks_per_s"]   # same block
        r["speedup"] = r["tasks_per_s"] / base
        r["speedup_normalised"] = r["vs_local_1t"] / base_norm
        r["efficiency"] = r["speedup"] / w
        r["ceiling_fraction"] = r["tasks_per_s"] / b[f"ceiling {w}"]["tasks_per_s"]  # same block
        speedup[str(w)], speedup_norm[str(w)], efficiency[str(w)] = r["speedup"], r["speedup_normalised"], r["efficiency"]
        overhead[str(w)], ceiling_fraction[str(w)] = r["overhead_fraction"], r["ceiling_fraction"]
    out = {"config": cfg_dict, "meta_batch": meta_batch, "warmup": warmup, "steps": steps, "rows": ordered,
           "blocks": blocks, "speedup": speedup, "speedup_normalised": speedup_norm, "efficiency": efficiency,
           "overhead_fraction": overhead, "ceiling_fraction": ceiling_fraction}
    if "1" in blocks:  # step time of the 1-worker engine over the local loop it was interleaved with
        out["engine1_vs_local1t"] = blocks["1"]["ray 1"]["step_ms_mean"] / blocks["1"]["local 1t"]["step_ms_mean"]
    return out


# -- output --------------------------------------------------------------------------------
def fmt_bytes(n: int) -> str:
    return "-" if not n else (f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB")


def table(title: str, res: Dict[str, Any], workers: List[int]) -> str:
    head = (f"{'row':<11}{'tasks/s':>9}{'step ms':>9}{'vs local':>10}{'speed-up':>10}{'(norm.)':>9}"
            f"{'effic.':>8}{'overhead ms':>13}{'ovh %':>7}{'bytes/step':>12}{'of ceiling':>12}")
    lines = [title, head, "-" * len(head)]
    for key, r in res["rows"].items():
        ray = key.startswith("ray ")

        def col(fmt_: str, field: str, scale: float = 1.0, suffix: str = "") -> str:
            return format(scale * r[field], fmt_) + suffix if ray else "-"

        lines.append(
            f"{key:<11}{r['tasks_per_s']:>9.1f}{r['step_ms_median']:>9.1f}{col('.2f', 'vs_local_1t', 1, 'x'):>10}"
            f"{col('.2f', 'speedup', 1, 'x'):>10}{col('.2f', 'speedup_normalised', 1, 'x'):>9}"
            f"{col('.0f', 'efficiency', 100, '%'):>8}{col('.1f', 'overhead_ms_mean'):>13}"
            f"{col('.1f', 'overhead_fraction', 100):>7}{fmt_bytes(r['bytes_per_step']) if ray else '-':>12}"
            f"{col('.0f', 'ceiling_fraction', 100, '%'):>12}")
    if "engine1_vs_local1t" in res:
        lines.append(f"1-worker engine / local 1 thread (mean step time, interleaved): {res['engine1_vs_local1t']:.2f}x")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help=f"Ray worker counts (default 1..{cores}, the CPU cores present)")
    p.add_argument("--steps", type=int, default=5, help="timed conv4 Omniglot steps per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (each row)")
    p.add_argument("--sinusoid-steps", type=int, default=None,
                   help="timed sinusoid steps per row (default 40 x --steps)")
    p.add_argument("--meta-batch", type=int, default=32, help="Omniglot meta-batch")
    p.add_argument("--sinusoid-meta-batch", type=int, default=25)
    p.add_argument("--queries", type=int, default=1,
                   help="Omniglot query images per class (Finn et al.: K, i.e. 1 for 1-shot)")
    p.add_argument("--data-root", default=None,
                   help="folder with images_background_small1.zip (default: the sets shipped with distmeta "
                        "if present, else synthetic data)")
    p.add_argument("--synthetic", action="store_true", help="use synthetic Omniglot-shaped data")
    p.add_argument("--only", choices=["omniglot", "sinusoid"], nargs="+", default=["omniglot", "sinusoid"])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = p.parse_args(argv)
    workers = sorted(set(args.workers or range(1, cores + 1)))
    if workers[0] < 1:
        p.error("--workers: counts must be >= 1")
    sin_steps = args.sinusoid_steps or 40 * args.steps

    torch.set_num_threads(1)  # the driver: single-threaded baseline (the 2-thread row sets its own)
    root = None if args.synthetic else _common.find_omniglot(args.data_root)
    if args.data_root and root is None and not args.synthetic:
        p.error(f"--data-root: no images_background_small1.zip in {args.data_root}")
    data_name = f"Omniglot background_small1 ({root})" if root else "synthetic Omniglot-shaped data"

    import ray

    runtime_env = None
    if root is None:  # Ray workers must know the script's dataset name (config validation)
        ray.cloudpickle.register_pickle_by_value(_common)
        runtime_env = {"worker_process_setup_hook": _common.register_synthetic}
    log(f"ray.init(address='local', num_cpus={max(workers)})")
    ray.init(address="local", num_cpus=max(workers), include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env=runtime_env)
    results: Dict[str, Any] = {}
    try:
        if "omniglot" in args.only:
            cfg = _common.omniglot_maml_config(root, meta_batch=args.meta_batch, queries=args.queries)
            datasets = MetaCore(from_dict(cfg)).datasets  # decoded once, shared by every row
            results["omniglot_maml"] = run_workload("omniglot", cfg, datasets, workers, args.warmup, args.steps)
            results["omniglot_maml"]["data"] = data_name
        if "sinusoid" in args.only:
            cfg = _common.sinusoid_maml_config(meta_batch=args.sinusoid_meta_batch)
            results["sinusoid_maml"] = run_workload("sinusoid", cfg, {}, workers, args.warmup * 5, sin_steps)
    finally:
        ray.shutdown()

    primary = results.get("omniglot_maml") or results.get("sinusoid_maml")
    machine = {"cpu_cores": cores, "platform": platform.platform(), "python": platform.python_version(),
               "torch": torch.__version__, "ray": ray.__version__,
               "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    out = {"machine": machine, "workers": workers,
           "primary_workload": "omniglot_maml" if "omniglot_maml" in results else "sinusoid_maml",
           "speedup": primary["speedup"], "overhead_fraction": primary["overhead_fraction"],
           "ceiling_fraction": primary["ceiling_fraction"], "workloads": results}
    if "sinusoid_maml" in results and "engine1_vs_local1t" in results["sinusoid_maml"]:
        ratio = results["sinusoid_maml"]["engine1_vs_local1t"]
        out["sinusoid_engine1_vs_local"] = ratio
        out["sinusoid_engine1_vs_local_target_met"] = ratio <= 1.3
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"machine: {cores} CPU cores, {machine['platform']}, torch {machine['torch']}, ray {machine['ray']}, "
          f"load average at end {', '.join(f'{x:.1f}' for x in machine['loadavg_at_end'] or [])}")
    if "omniglot_maml" in results:
        r = results["omniglot_maml"]
        print()
        print(table(f"conv4 MAML, Omniglot 5-way 1-shot ({args.queries} query/class), meta-batch "
                    f"{r['meta_batch']}, 2nd order, 1 inner step; {data_name}; {r['steps']} timed steps "
                    f"after {r['warmup']} warm-up", r, workers))
    if "sinusoid_maml" in results:
        r = results["sinusoid_maml"]
        print()
        print(table(f"sinusoid MAML, meta-batch {r['meta_batch']}, 1 inner step; {r['steps']} timed steps "
                    f"after {r['warmup']} warm-up", r, workers))
        if "ray 1" in r["rows"]:
            print(f"target engine <= 1.3x local: {'met' if out['sinusoid_engine1_vs_local_target_met'] else 'NOT met'}")
    print("\nstep ms: median; tasks/s: meta-batch x timed steps / their wall time; vs local: tasks/s over the "
          "local 1-thread loop interleaved with it; speed-up: over 1 Ray worker ((norm.): of the 'vs local' "
          "ratios, which cancels load drift between blocks); effic.: speed-up / W; overhead: engine wall "
          "minus the slowest shard's compute; of ceiling: tasks/s over the same-W bare processes interleaved with it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
