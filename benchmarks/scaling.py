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

The train workload times what a user runs, so that the rows above cannot drift from it:
  train     ``distmeta train experiments/sinusoid_maml.yaml --steps N --set
            engine.workers=W --set eval.every=100000`` as a subprocess with the
            environment this script started with, for each W of ``--train-workers``
            (counts or auto), against the in-process meta-gradient of the same config
            (``LocalEngine``, fixed parameters) with 1 thread and with the threads train
            uses. ABA: meta-gradient rows, one train run, the rows again, the next run...;
            each run is compared with the mean of the rows just before and after it.
            Its tasks/s is the loop's own (``metrics.csv``: training time, as the progress
            line); its wall time and end-to-end tasks/s include start-up, Ray, the
            validation at the last step, the final test evaluation and the plots.

    python benchmarks/scaling.py --steps 10           # tables
    python benchmarks/scaling.py --steps 10 --json    # one JSON object on stdout
    python benchmarks/scaling.py --workers 1 2 --only sinusoid
    python benchmarks/scaling.py --only train --train-steps 2000 --train-workers 0 1 2 auto

Not a test: it takes minutes. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import threading
import time
from typing import Any, Dict, List, Optional

USER_ENV = dict(os.environ)  # before _common sets OMP_WAIT_POLICY: what `distmeta train` would see
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


# -- the real training loop, end to end ----------------------------------------------------
SINUSOID_YAML = _common.REPO / "experiments" / "sinusoid_maml.yaml"


def train_threads() -> int:
    """The torch threads `distmeta train` gives an in-process run (``SupervisedMethod.build``:
    ``$OMP_NUM_THREADS``, else every CPU this process may use)."""
    value = USER_ENV.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def meta_gradient_rows(cfg, threads: List[int], seconds: float, first_step: int) -> Dict[str, Dict[str, Any]]:
    """The in-process meta-gradient of ``cfg`` (``LocalEngine``, fixed parameters), one row per
    thread count, interleaved in 0.5 s chunks, about ``seconds`` of timed steps each."""
    from distmeta.engine.supervised import SupervisedMethod  # noqa: F401  (what train imports)

    runners = {}
    for t in threads:
        core = MetaCore(cfg)
        runners[f"meta-gradient {t}t"] = EngineRunner(LocalEngine(core), core.initial_flat_params(),
                                                      cfg.optim.meta_batch, t)
    probe = next(iter(runners.values()))
    walls = [probe.step(first_step + i)[0] for i in range(5)]   # warm-up, and the step's length
    steps = max(20, int(seconds / max(sorted(walls)[2], 1e-6)))
    return interleave(runners, 2, steps)


def run_train(workers, steps: int, out: str, sets: List[str] = ()) -> Dict[str, Any]:
    """``distmeta train experiments/sinusoid_maml.yaml --steps N --set engine.workers=W
    --set eval.every=100000`` in a subprocess with the environment this script was started
    with (before ``_common`` set ``OMP_WAIT_POLICY``): the command a user types. The loop's
    tasks/s comes from its own ``metrics.csv`` (training time only, as the progress line: the
    validation at the last step, the final test evaluation and the plots excluded); ``wall`` is
    the whole command, start-up and final evaluation included."""
    import csv
    import subprocess

    cmd = [sys.executable, "-m", "distmeta.cli", "train", str(SINUSOID_YAML), "--steps", str(steps),
           "--set", f"engine.workers={workers}", "--set", "eval.every=100000", "--out", out, "--no-progress"]
    for item in sets:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(_common.REPO), env=USER_ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    done, train_s, eval_s, windows = 0.0, 0.0, 0.0, []
    for r in rows:   # each row: window means since the previous row; "tasks" is cumulative
        window = float(r["tasks"]) - done
        done = float(r["tasks"])
        train_s += window / float(r["tasks_per_s"])
        eval_s += float(r.get("eval_time_s") or 0.0)
        windows.append(round(float(r["tasks_per_s"]), 1))
    auto = [line for line in proc.stderr.splitlines() if "engine.workers auto" in line]
    return {"command": " ".join(["distmeta"] + cmd[3:]), "workers": workers, "steps": steps,
            "tasks_per_s": done / train_s, "step_ms_mean": 1e3 * train_s / steps,
            "train_s": train_s, "validation_s": eval_s, "wall_s": wall,
            "end_to_end_tasks_per_s": done / wall, "window_tasks_per_s": windows,
            "auto_choice": auto[0] if auto else None}


def run_train_mode(variants: List[str], steps: int, seconds: float, sets: List[str] = ()) -> Dict[str, Any]:
    """ABA: the in-process meta-gradient rows, one ``distmeta train`` run, the rows again, the
    next run, ...: each run is compared with the mean of the rows measured just before and just
    after it (a shared 2-core box drifts within minutes)."""
    import shutil
    import tempfile

    from distmeta.config import load_config

    cfg = load_config(SINUSOID_YAML)
    threads = sorted({1, train_threads()})
    key = f"meta-gradient {train_threads()}t"   # what train's in-process loop runs
    blocks, runs = [], {}
    tmp = tempfile.mkdtemp(prefix="distmeta-scaling-train-")
    try:
        for i, w in enumerate(variants + [None]):
            log(f"train mode: in-process meta-gradient rows ({', '.join(f'{t}t' for t in threads)})")
            blocks.append(meta_gradient_rows(cfg, threads, seconds, first_step=1000 * i))
            blocks[-1]["loadavg"] = list(os.getloadavg())
            if w is None:
                break
            log(f"train mode: distmeta train {SINUSOID_YAML.name} --steps {steps} --set engine.workers={w}")
            r = run_train(w, steps, os.path.join(tmp, f"run-{i}"), sets)
            r["loadavg_after"] = list(os.getloadavg())
            name = f"train workers={w}"
            runs[name if name not in runs else f"{name} ({sum(k.startswith(name) for k in runs) + 1})"] = r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    names = list(runs)
    for i, name in enumerate(names):
        r, a, b = runs[name], blocks[i], blocks[i + 1]
        for row in [k for k in a if k.startswith("meta-gradient")]:
            mean = (a[row]["tasks_per_s"] + b[row]["tasks_per_s"]) / 2
            r[f"vs_{row.replace(' ', '_')}"] = r["tasks_per_s"] / mean
        r["vs_in_process"] = r[f"vs_{key.replace(' ', '_')}"]
    rows = {}
    for row in [k for k in blocks[0] if k.startswith("meta-gradient")]:
        vals = [blk[row] for blk in blocks]
        rows[row] = {"tasks_per_s": statistics.fmean(v["tasks_per_s"] for v in vals),
                     "step_ms_median": statistics.fmean(v["step_ms_median"] for v in vals),
                     "per_block_tasks_per_s": [v["tasks_per_s"] for v in vals]}
    rows.update(runs)
    return {"config": str(SINUSOID_YAML.relative_to(_common.REPO)), "steps": steps, "sets": list(sets),
            "train_threads": train_threads(),
            "in_process_row": key, "rows": rows, "blocks": blocks}


def train_table(res: Dict[str, Any]) -> str:
    head = f"{'row':<22}{'tasks/s':>9}{'ms/step':>9}{'vs in-process':>15}{'vs 1t':>8}{'wall s':>8}{'e2e tasks/s':>13}"
    sets = "".join(f" --set {item}" for item in res.get("sets", []))
    lines = [f"distmeta train {res['config']} --steps {res['steps']} --set eval.every=100000{sets} (validation at the "
             f"last step only), against the in-process meta-gradient ({res['in_process_row']}: the threads "
             f"train uses); train rows are bracketed by meta-gradient blocks (ABA)", head, "-" * len(head)]
    for name, r in res["rows"].items():
        if name.startswith("meta-gradient"):
            blocks = ", ".join(f"{v:.0f}" for v in r["per_block_tasks_per_s"])
            lines.append(f"{name:<22}{r['tasks_per_s']:>9.1f}{r['step_ms_median']:>9.2f}{'-':>15}{'-':>8}{'-':>8}"
                         f"{'-':>13}   blocks: {blocks}")
        else:
            lines.append(f"{name:<22}{r['tasks_per_s']:>9.1f}{r['step_ms_mean']:>9.2f}{r['vs_in_process']:>14.2f}x"
                         f"{r['vs_meta-gradient_1t']:>7.2f}x{r['wall_s']:>8.1f}{r['end_to_end_tasks_per_s']:>13.1f}")
            if r.get("auto_choice"):
                lines.append(f"    {r['auto_choice']}")
    lines.append("train tasks/s: the loop's own (metrics.csv: training time only, as the progress line); wall s and "
                 "e2e tasks/s: the whole command (start-up, Ray, the last-step validation, the final test on "
                 "600 tasks, plots); vs in-process / vs 1t: train tasks/s over the meta-gradient rows measured "
                 "just before and after it (mean)")
    return "\n".join(lines)


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
    p.add_argument("--only", choices=["omniglot", "sinusoid", "train"], nargs="+",
                   default=["omniglot", "sinusoid", "train"],
                   help="workloads; train: `distmeta train experiments/sinusoid_maml.yaml` end to end "
                        "against the in-process meta-gradient")
    p.add_argument("--train-steps", type=int, default=1000, help="meta-steps of each `distmeta train` run")
    p.add_argument("--train-workers", nargs="+", default=["0"],
                   help="engine.workers of the `distmeta train` runs: counts and/or auto (default 0)")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a further --set for the `distmeta train` runs (repeatable)")
    p.add_argument("--train-seconds", type=float, default=2.0,
                   help="timed seconds of each in-process meta-gradient row around the train runs")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--from-json", metavar="FILE", help="print the tables of a saved --json output and exit")
    args = p.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            print_tables(json.load(f))
        return 0
    workers = sorted(set(args.workers or range(1, cores + 1)))
    if workers[0] < 1:
        p.error("--workers: counts must be >= 1")
    sin_steps = args.sinusoid_steps or 40 * args.steps
    for w in args.train_workers:
        if w != "auto" and not (w.isdigit()):
            p.error(f"--train-workers: {w!r} is not a count >= 0 or auto")
    loadavg_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    torch.set_num_threads(1)  # the driver: single-threaded baseline (the 2-thread row sets its own)
    root = None if args.synthetic else _common.find_omniglot(args.data_root)
    if args.data_root and root is None and not args.synthetic:
        p.error(f"--data-root: no images_background_small1.zip in {args.data_root}")
    data_name = f"Omniglot background_small1 ({root})" if root else "synthetic Omniglot-shaped data"

    import ray

    results: Dict[str, Any] = {}
    if "train" in args.only:  # before this script starts its own Ray: the runs start theirs
        results["train"] = run_train_mode(args.train_workers, args.train_steps, args.train_seconds, args.train_set)
    runtime_env = None
    if root is None:  # Ray workers must know the script's dataset name (config validation)
        ray.cloudpickle.register_pickle_by_value(_common)
        runtime_env = {"worker_process_setup_hook": _common.register_synthetic}
    if {"omniglot", "sinusoid"} & set(args.only):
        log(f"ray.init(address='local', num_cpus={max(workers)})")
        ray.init(address="local", num_cpus=max(workers), include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env=runtime_env)
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
               "torch": torch.__version__, "ray": ray.__version__, "loadavg_at_start": loadavg_at_start,
               "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    out = {"machine": machine, "workers": workers, "workloads": results}
    if primary is not None:
        out.update({"primary_workload": "omniglot_maml" if "omniglot_maml" in results else "sinusoid_maml",
                    "speedup": primary["speedup"], "overhead_fraction": primary["overhead_fraction"],
                    "ceiling_fraction": primary["ceiling_fraction"]})
    if "train" in results:  # the loop a user runs over the in-process meta-gradient it is made of
        train_rows = results["train"]["rows"]
        out["train_vs_in_process"] = {k: r["vs_in_process"] for k, r in train_rows.items() if "vs_in_process" in r}
    if "sinusoid_maml" in results and "engine1_vs_local1t" in results["sinusoid_maml"]:
        ratio = results["sinusoid_maml"]["engine1_vs_local1t"]
        out["sinusoid_engine1_vs_local"] = ratio
        out["sinusoid_engine1_vs_local_target_met"] = ratio <= 1.3
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print_tables(out)
    return 0


def print_tables(out: Dict[str, Any]) -> None:
    """The tables of one run, from the JSON object ``--json`` prints (``--from-json`` reprints them)."""
    machine, results, workers = out["machine"], out["workloads"], out["workers"]
    load = lambda key: ", ".join(f"{x:.1f}" for x in machine.get(key) or [])
    print(f"machine: {machine['cpu_cores']} CPU cores, {machine['platform']}, torch {machine['torch']}, "
          f"ray {machine['ray']}, load average at start {load('loadavg_at_start')}, at end {load('loadavg_at_end')}")
    if "omniglot_maml" in results:
        r = results["omniglot_maml"]
        print()
        print(table(f"conv4 MAML, Omniglot 5-way 1-shot ({r['config']['task']['queries']} query/class), meta-batch "
                    f"{r['meta_batch']}, 2nd order, 1 inner step; {r['data']}; {r['steps']} timed steps "
                    f"after {r['warmup']} warm-up", r, workers))
    if "sinusoid_maml" in results:
        r = results["sinusoid_maml"]
        print()
        print(table(f"sinusoid MAML, meta-batch {r['meta_batch']}, 1 inner step; {r['steps']} timed steps "
                    f"after {r['warmup']} warm-up", r, workers))
        if "ray 1" in r["rows"]:
            print(f"target engine <= 1.3x local: {'met' if out['sinusoid_engine1_vs_local_target_met'] else 'NOT met'}")
    if "train" in results:
        print()
        print(train_table(results["train"]))
    if "omniglot_maml" in results or "sinusoid_maml" in results:
        print("\nstep ms: median; tasks/s: meta-batch x timed steps / their wall time; vs local: tasks/s over the "
              "local 1-thread loop interleaved with it; speed-up: over 1 Ray worker ((norm.): of the 'vs local' "
              "ratios, which cancels load drift between blocks); effic.: speed-up / W; overhead: engine wall "
              "minus the slowest shard's compute; of ceiling: tasks/s over the same-W bare processes interleaved "
              "with it")


if __name__ == "__main__":
    sys.exit(main())
