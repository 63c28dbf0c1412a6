"""The main job's workload, in-process against 2 Ray task workers, in one run.

``python benchmarks/main_job.py [--steps 60] [--json]`` trains
``experiments/quickstart_omniglot.yaml`` for ``--steps`` meta-steps twice, each in a fresh
process: in-process (``engine.workers: 0``) with all the machine's threads
(``OMP_NUM_THREADS`` = CPUs), and with 2 task workers of one thread each (the
config as shipped). Throughput is the run loop's own ``tasks_per_s`` (training
only: evaluation is excluded), averaged over the logged windows after the first
(warm-up). Prints the load average before and after, a table, and the ratio
workers / in-process (target on 2 cores: at least 0.9).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "quickstart_omniglot.yaml"


def run(variant: str, steps: int, out: Path) -> dict:
    cpus = len(os.sched_getaffinity(0))
    threads = cpus if variant == "in-process" else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE", "RAY_ADDRESS": ""}
    cmd = [sys.executable, "-m", "distmeta.cli", "train", str(CONFIG), "--steps", str(steps), "--out", str(out),
           "--no-progress", "--set", "eval.every=100000", "--set", "eval.final_episodes=20",
           "--set", "log_every=10", "--set", f"checkpoint.every={steps}"]
    if variant == "in-process":
        cmd += ["--workers", "0", "--set", f"engine.learner_num_cpus={cpus}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    rates = [float(r["tasks_per_s"]) for r in rows if r.get("tasks_per_s")][1:]
    return {"variant": variant, "threads_per_process": threads, "tasks_per_s": sum(rates) / len(rates),
            "step_ms": 1e3 * 2 / (sum(rates) / len(rates)), "wall_s": wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(v, args.steps, Path(tmp) / v) for v in ("in-process", "2 workers")]
    load_after = os.getloadavg()
    ratio = rows[1]["tasks_per_s"] / rows[0]["tasks_per_s"]
    if args.json:
        print(json.dumps({"rows": rows, "ratio_workers_vs_inprocess": ratio, "loadavg_before": load_before,
                          "loadavg_after": load_after, "cpus": len(os.sched_getaffinity(0)), "steps": args.steps}))
        return 0
    print(f"load average before {load_before[0]:.2f} after {load_after[0]:.2f}; "
          f"{len(os.sched_getaffinity(0))} CPUs; {args.steps} meta-steps of {CONFIG.name}")
    print(f"{'variant':<12} {'threads':>7} {'tasks/s':>8} {'step ms':>8} {'wall s':>7}")
    for r in rows:
        print(f"{r['variant']:<12} {r['threads_per_process']:>7} {r['tasks_per_s']:>8.2f} {r['step_ms']:>8.1f} "
              f"{r['wall_s']:>7.1f}")
    print(f"2 workers / in-process: {ratio:.2f}x (target >= 0.9x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
