"""Chaos soak: a distmeta run that survives faults on a cluster with shared storage.

Not a test and not part of CI: it takes minutes. It starts, all on this machine,

  * a local S3 server (moto's ``ThreadedMotoServer`` on 127.0.0.1) with one bucket,
    the run's shared storage (``AWS_ENDPOINT_URL`` and dummy keys are exported before
    anything else starts, so the driver and every Ray process see them);
  * a multi-node Ray cluster (``ray.cluster_utils.Cluster``): a head with 0 CPUs and
    ``--worker-nodes`` worker nodes of 1 CPU, with short health checks so that a
    removed node is noticed within seconds;

then trains conv4 MAML on Omniglot (minimal preset, 5-way 1-shot, float64) with 2 task
workers of 0.5 CPU through the command line, as a user would::

    python -m distmeta.cli train CONFIG --out s3://chaos/chaos --address HOST:PORT --no-progress

and, while it runs, injects a seeded (``--seed``) schedule of faults. Progress is read
from the bucket (the committed checkpoints, ``distmeta.storage.committed``): each fault
fires once the run has committed the checkpoint of its trigger step, after a random
delay of up to ``--max-delay`` seconds, so it lands between two checkpoints:

  worker-kill   SIGKILL one random live task worker (its pid from Ray's state API,
                ``ray.util.state.list_actors``; this process joins the cluster as a driver)
  node-remove   remove the worker node holding most of the run's task workers
                (``cluster.remove_node``) ...
  node-add      ... and, at a later trigger, add a fresh 1-CPU node (``cluster.add_node``)
  driver-kill   SIGKILL the driver, then resume it at once with
                ``distmeta train --resume s3://chaos/chaos --address ...`` (the bucket is the truth)

Then it trains the same config without faults to a second URI (the clean run) on the same
cluster and prints one table: faults injected by kind, work redone (steps repeated after
each driver kill: the last step the killed driver reached minus the step its successor
resumed from; shards re-run after worker failures, counted from the driver's log, because
``metrics.csv`` has no worker-restart column), wall time against the clean run, and the
largest absolute difference between the two runs' final parameters (float64: 0 up to
float summation order; a worker lost mid-step changes how the meta-batch is split over the
live workers, hence the order in which shard gradients are summed).

    python benchmarks/chaos.py --data-root /path/to/omniglot             # table
    python benchmarks/chaos.py --seed 3 --json                           # one JSON object on stdout

Progress goes to stderr. Everything it starts (drivers, cluster, S3 server, its temp
folder) is stopped or removed on the way out, also on errors and SIGTERM. The exit status
is 0 when every fault fired, the chaos run finished every step and the parameters agree to
``--tolerance``; 1 otherwise; 2 on a setup error. A driver that exits on its own with an
error is not resumed: that is a finding, and its log tail is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (puts the repo on sys.path; passive OpenMP waits)

REPO = _common.REPO
BUCKET = "chaos"
PROGRESS = re.compile(r"^step (\d+)/")
WORKER_FAILURE = re.compile(r"worker (\d+) (died during|did not return) shard \((\d+), (\d+)\) of step (\d+)")


def say(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the workload
def run_config(args, data_root: Path) -> Dict[str, Any]:
    """conv4 MAML, Omniglot minimal 5-way 1-shot, sized for a shared 2-core machine."""
    return {
        "name": "chaos", "seed": 0,
        "data": {"dataset": "omniglot", "preset": "minimal", "root": str(data_root), "image_size": 28,
                 "download": False},
        "task": {"kind": "classification", "ways": 5, "shots": 1, "queries": args.queries, "rotations": True},
        "model": {"name": "conv4", "channels": args.channels},
        "algorithm": {"name": "maml", "inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 3,
                      "first_order": False, "executor": "loop"},
        "optim": {"optimizer": "adam", "lr": 0.003, "meta_batch": args.meta_batch, "steps": args.steps},
        # dtype comes from --set engine.dtype=float64 on the command line (both runs)
        "engine": {"workers": 2, "num_cpus": 0.5, "device": "cpu", "shard_timeout_s": 60,
                   "placement_timeout_s": 180, "max_worker_restarts": 16},
        "eval": {"every": 100000, "episodes": 10, "final_episodes": 20},
        "checkpoint": {"every": args.checkpoint_every, "keep_last": 3},
        "log_every": 1,
    }


# --------------------------------------------------------------------------- the schedule
@dataclass
class Fault:
    kind: str            # worker-kill | node-remove | node-add | driver-kill
    trigger: int         # fires once the checkpoint of this step is committed ...
    delay: float         # ... and this many seconds have passed since it was seen
    fired_at: Optional[float] = None   # seconds since the chaos run started
    step_seen: Optional[int] = None    # the newest committed step when it fired
    detail: str = ""
    hit: bool = False    # it took effect (a live worker was killed, a node removed, ...)


def schedule(seed: int, steps: int, every: int, worker_kills: int, max_delay: float) -> List[Fault]:
    """Distinct checkpoint steps, in order, for the faults; the node comes back after it went.
    The last two checkpoints are left free, so every fault lands before the run ends."""
    rng = random.Random(seed)
    slots = [s for s in range(every, steps - 2 * every + 1, every)]
    kinds = ["worker-kill"] * worker_kills + ["node-remove", "node-add", "driver-kill", "driver-kill"]
    if len(slots) < len(kinds):
        raise SystemExit(f"chaos: {len(kinds)} faults need {len(kinds)} checkpoints before the last two; "
                         f"{steps} steps with a checkpoint every {every} give {len(slots)} "
                         f"(raise --steps or lower --worker-kills)")
    chosen = sorted(rng.sample(slots, len(kinds)))
    rng.shuffle(kinds)
    if kinds.index("node-add") < kinds.index("node-remove"):
        a, r = kinds.index("node-add"), kinds.index("node-remove")
        kinds[a], kinds[r] = kinds[r], kinds[a]
    return [Fault(k, s, round(rng.uniform(0.0, max_delay), 2)) for k, s in zip(kinds, chosen)]


# --------------------------------------------------------------------------- a driver
@dataclass
class DriverLife:
    argv: List[str]
    log: str
    started: float
    ended: Optional[float] = None
    rc: Optional[int] = None
    killed: bool = False
    first_step: Optional[int] = None   # first progress line (resumed from first_step - 1)
    first_step_at: Optional[float] = None   # when it was printed (s since the run began)
    last_step: Optional[int] = None    # last progress line: the last step it reached
    failures: List[Dict[str, int]] = field(default_factory=list)   # worker failures it logged
    ray_tracebacks: int = 0            # Ray's own logged tracebacks (e.g. compiled-graph teardown)


class Driver:
    """One ``distmeta train`` process; a thread reads its merged stdout/stderr."""

    def __init__(self, argv: List[str], env: Dict[str, str], log: Path, t0: float):
        self.life = DriverLife(argv, str(log), time.monotonic() - t0)
        self._t0 = t0
        self._fh = open(log, "w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, cwd=REPO, start_new_session=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        life = self.life
        for line in self.proc.stdout:
            self._fh.write(line)
            self._fh.flush()
            m = PROGRESS.match(line)
            if m:
                step = int(m.group(1))
                if life.first_step is None:
                    life.first_step, life.first_step_at = step, time.monotonic() - self._t0
                life.last_step = step
            if line.startswith("Traceback (most recent call last)"):
                life.ray_tracebacks += 1
            m = WORKER_FAILURE.search(line)
            if m:
                life.failures.append({"slot": int(m.group(1)), "start": int(m.group(3)), "stop": int(m.group(4)),
                                      "step": int(m.group(5))})

    def poll(self) -> Optional[int]:
        rc = self.proc.poll()
        if rc is not None:
            self._finish(rc)
        return rc

    def _finish(self, rc: int) -> None:
        if self.life.rc is None:
            self._reader.join(timeout=10)
            self.life.rc, self.life.ended = rc, time.monotonic() - self._t0
            self._fh.close()

    def kill(self) -> None:
        """SIGKILL the driver's session (the driver; it starts no Ray processes of its own)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._finish(self.proc.wait())

    def tail(self, chars: int = 4000) -> str:
        try:
            return Path(self.life.log).read_text()[-chars:]
        except OSError:
            return ""


# --------------------------------------------------------------------------- the soak
class Soak:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="dm_chaos_", dir="/tmp"))   # short: Ray's socket paths
        self.server = None
        self.cluster = None
        self.drivers: List[Driver] = []
        self.env: Dict[str, str] = {}
        self.load: Dict[str, List[float]] = {}

    # -- setup -------------------------------------------------------------------
    def start_s3(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)   # no line per request
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true", "DISTMETA_STAGING": str(self.tmp / "staging"),
               "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        os.environ.update(env)   # before the cluster starts: every Ray process inherits it
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http",
                          allow_bucket_creation=True).create_dir(BUCKET)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env.pop("RAY_ADDRESS", None)
        say(f"S3 server at {env['AWS_ENDPOINT_URL']}, bucket s3://{BUCKET}")

    def start_cluster(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        a = self.args
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "temp_dir": str(self.tmp / "ray"),
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4,
                               "health_check_timeout_ms": 1000}})
        for _ in range(a.worker_nodes):
            self.cluster.add_node(num_cpus=1)
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, log_to_driver=False, logging_level="ERROR")
        say(f"Ray cluster at {self.cluster.address}: head (0 CPUs) + {a.worker_nodes} nodes x 1 CPU")

    def stop(self) -> None:
        for d in self.drivers:
            try:
                d.kill()
            except Exception as exc:
                say(f"cleanup: driver {d.proc.pid}: {exc}")
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception as exc:
            say(f"cleanup: ray.shutdown: {exc}")
        if self.cluster is not None:
            try:
                self.cluster.shutdown()
            except Exception as exc:
                say(f"cleanup: cluster.shutdown: {exc}")
        if self.server is not None:
            try:
                self.server.stop()
            except Exception as exc:
                say(f"cleanup: S3 server: {exc}")
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            say(f"kept {self.tmp}")

    # -- helpers -----------------------------------------------------------------
    def train_argv(self, uri: str, resume: bool) -> List[str]:
        head = [sys.executable, "-m", "distmeta.cli", "train"]
        where = ["--address", self.cluster.address, "--no-progress"]
        if resume:
            return head + ["--resume", uri] + where
        return head + [str(self.tmp / "config.yaml"), "--out", uri, "--set", "engine.dtype=float64"] + where

    def start_driver(self, uri: str, resume: bool, t0: float, tag: str) -> Driver:
        argv = self.train_argv(uri, resume)
        d = Driver(argv, self.env, self.tmp / f"driver-{tag}-{len(self.drivers)}.log", t0)
        self.drivers.append(d)
        say(f"driver {d.proc.pid} started: {' '.join(argv[1:])}")
        return d

    def task_workers(self) -> list:
        """The live TaskWorker actors (pid, node_id), from Ray's state API; [] while it does not answer.
        The cluster is named explicitly: without an address the state API finds "the current
        cluster" through /tmp/ray, which another Ray started on a shared machine may have taken."""
        from ray.util.state import list_actors

        try:
            return list_actors(address=self.cluster.address, limit=1000, raise_on_missing_output=False,
                               filters=[("class_name", "=", "TaskWorker"), ("state", "=", "ALIVE")])
        except Exception as exc:   # retried at the next poll; a fault that never fires is reported
            say(f"state API: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            time.sleep(1.0)
            return []

    @staticmethod
    def newest(remote) -> int:
        from distmeta.storage import committed

        names = committed(remote)
        return int(names[-1][len("step_"):-len(".pt")]) if names else 0

    # -- the chaos run -----------------------------------------------------------
    def chaos_run(self, uri: str, faults: List[Fault]) -> Dict[str, Any]:
        from distmeta.storage import Remote

        a, remote = self.args, Remote(uri)
        rng = random.Random(a.seed + 1)   # victims
        t0 = time.monotonic()
        driver = self.start_driver(uri, resume=False, t0=t0, tag="chaos")
        pending = list(faults)
        seen_at: Optional[float] = None     # when the newest pending fault's trigger was seen
        kills: List[Dict[str, Any]] = []    # driver kills: last step reached, step resumed from
        error = None
        while True:
            if time.monotonic() - t0 > a.timeout:
                error = f"the chaos run did not finish within --timeout {a.timeout:g}s"
                break
            rc = driver.poll()
            if rc is not None:
                if rc != 0:
                    error = (f"driver {driver.proc.pid} exited with status {rc} on its own (not a fault "
                             f"of this script); its log ends:\n{driver.tail()}")
                break
            newest = self.newest(remote)
            if pending and newest >= pending[0].trigger:
                fault = pending[0]
                seen_at = seen_at or time.monotonic()
                if time.monotonic() - seen_at >= fault.delay and self.fire(fault, driver, newest, rng, t0):
                    pending.pop(0)
                    seen_at = None
                    if fault.kind == "driver-kill":
                        resumed_from = self.newest(remote)   # the bucket is the truth
                        kills.append({"last_step": driver.life.last_step, "resumed_from": resumed_from,
                                      "redone": (driver.life.last_step or 0) - resumed_from})
                        fault.detail += f"; last step reached {driver.life.last_step}, resume from {resumed_from}"
                        driver = self.start_driver(uri, resume=True, t0=t0, tag="chaos")
            time.sleep(0.2)
        wall = time.monotonic() - t0
        return {"wall_s": wall, "driver_kills": kills, "unfired": [f.kind for f in pending], "error": error,
                "final_step": self.newest(remote)}

    def fire(self, fault: Fault, driver: Driver, newest: int, rng: random.Random, t0: float) -> bool:
        """Inject one fault; False when it cannot take effect yet (try again shortly)."""
        now = time.monotonic() - t0
        if fault.kind == "worker-kill":
            mine = [w for w in self.task_workers() if w.pid]
            if not mine:
                return False   # replacements still being placed: retry until one is up
            victim = rng.choice(mine)
            try:
                os.kill(victim.pid, signal.SIGKILL)
                fault.hit = True
            except ProcessLookupError:
                pass
            fault.detail = f"TaskWorker pid {victim.pid} on node {victim.node_id[:8]} (1 of {len(mine)} alive)"
        elif fault.kind == "node-remove":
            by_node: Dict[str, int] = {}
            for w in self.task_workers():
                by_node[w.node_id] = by_node.get(w.node_id, 0) + 1
            nodes = [n for n in self.cluster.worker_nodes if n.node_id in by_node]
            if not nodes:
                return False
            victim = max(nodes, key=lambda n: by_node[n.node_id])
            self.cluster.remove_node(victim, allow_graceful=False)
            fault.hit = True
            fault.detail = f"node {victim.node_id[:8]} with {by_node[victim.node_id]} task worker(s)"
        elif fault.kind == "node-add":
            node = self.cluster.add_node(num_cpus=1)
            fault.hit = True
            fault.detail = f"node {node.node_id[:8]} (1 CPU)"
        elif fault.kind == "driver-kill":
            if driver.life.last_step is None:
                return False   # still starting: kill it once it trains
            pid = driver.proc.pid
            driver.kill()
            fault.hit = True
            fault.detail = f"driver pid {pid}"
        fault.fired_at, fault.step_seen = round(now, 2), newest
        say(f"{fault.kind} at committed step {newest} (+{fault.delay:g}s): {fault.detail}")
        return True

    # -- the clean run -------------------------------------------------------------
    def clean_run(self, uri: str) -> Dict[str, Any]:
        t0 = time.monotonic()
        driver = self.start_driver(uri, resume=False, t0=t0, tag="clean")
        while driver.poll() is None:
            if time.monotonic() - t0 > self.args.timeout:
                return {"wall_s": time.monotonic() - t0, "error": "the clean run did not finish in --timeout"}
            time.sleep(0.2)
        error = None if driver.life.rc == 0 else f"clean driver exited with {driver.life.rc}:\n{driver.tail()}"
        return {"wall_s": time.monotonic() - t0, "error": error}


def restart_column(uri: str) -> Dict[str, Any]:
    """The run's metrics.csv columns naming worker restarts, with their last values (none today)."""
    import csv
    import io

    from distmeta.storage import Remote

    rows = list(csv.DictReader(io.StringIO(Remote(uri).read_bytes("metrics.csv").decode())))
    columns = list(rows[0].keys()) if rows else []
    found = {c: rows[-1][c] for c in columns if "restart" in c.lower()}
    return {"columns": columns, "restart_columns": found}


def max_param_diff(uri_a: str, uri_b: str) -> Dict[str, Any]:
    from distmeta.engine.run_dir import load_checkpoint

    a, b = load_checkpoint(uri_a), load_checkpoint(uri_b)
    pa, pb = a["state"]["model"], b["state"]["model"]
    if pa.keys() != pb.keys():
        return {"max_abs_diff": float("inf"), "note": "different parameter names"}
    diff = max(float((pa[k].double() - pb[k].double()).abs().max()) for k in pa)
    scale = max(float(pb[k].double().abs().max()) for k in pb)
    return {"max_abs_diff": diff, "max_abs_param": scale, "dtype": str(next(iter(pa.values())).dtype),
            "steps": [a.get("step"), b.get("step")]}


# --------------------------------------------------------------------------- report
def table(report: Dict[str, Any]) -> str:
    c, f = report["config"], report["faults"]
    rows = [
        ("worker SIGKILLs", f"{f['worker-kill']['hit']} of {f['worker-kill']['scheduled']}"),
        ("node removals / additions", f"{f['node-remove']['hit']} / {f['node-add']['hit']}"),
        ("driver SIGKILLs (each resumed from the bucket)", f"{f['driver-kill']['hit']} of "
                                                            f"{f['driver-kill']['scheduled']}"),
    ]
    redone = report["redone"]
    per = ", ".join(f"{k['last_step']}->{k['resumed_from']}" for k in redone["driver_kills"]) or "-"
    rows += [
        ("steps redone after driver kills (last reached->resumed from)",
         f"{redone['steps_after_driver_kills']} ({per})"),
        ("shards re-run after worker failures (from driver logs)",
         f"{redone['shards_rerun']} shards, {redone['tasks_rerun']} tasks "
         f"({redone['tasks_rerun'] / c['meta_batch']:.2f} steps' worth)"),
        ("worker restarts in metrics.csv",
         ", ".join(f"{k} {v}" for k, v in redone["metrics_csv_restarts"].items()) if redone["metrics_csv_restarts"]
         else "not recorded (no such column; the count above is from the log warnings)"),
        ("Ray tracebacks in the chaos drivers' logs (logged, not raised)",
         f"{report['ray_tracebacks_in_driver_logs']}"),
        (f"chaos run wall time ({report['driver_starts']} driver starts)", f"{report['chaos']['wall_s']:.1f} s"),
        ("clean run wall time", f"{report['clean']['wall_s']:.1f} s"),
        ("driver start-up to first step, chaos (all starts) / clean",
         f"{report['startup_s']['chaos']:.1f} s / {report['startup_s']['clean']:.1f} s"),
        ("wall-time overhead (chaos / clean)", f"{report['overhead_ratio']:.2f}x"),
        ("final step chaos / clean", f"{report['params'].get('steps')}"),
        ("max |param chaos - param clean| (float64)",
         f"{report['params']['max_abs_diff']:.3g} (largest |param| {report['params'].get('max_abs_param', 0):.3g})"),
        ("load average at start / end", " / ".join(", ".join(f"{x:.2f}" for x in report["loadavg"][k])
                                                     for k in ("start", "end"))),
    ]
    width = max(len(r[0]) for r in rows)
    head = (f"distmeta chaos soak, seed {report['seed']}: conv4 (channels {c['channels']}) MAML, Omniglot minimal "
            f"5-way 1-shot, meta-batch {c['meta_batch']}, {c['steps']} steps, checkpoint every "
            f"{c['checkpoint_every']}, float64; 2 task workers x 0.5 CPU on {c['worker_nodes']} worker nodes; "
            f"run folders on S3 (moto)")
    lines = [head, "", f"| {'quantity'.ljust(width)} | value |", f"| {'-' * width} | --- |"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    lines += ["", "faults (trigger = committed step that armed it, +delay s; fired at s since the chaos run began):"]
    lines += [f"  {x['kind']:<11} trigger {x['trigger']:>3} +{x['delay']:<4g} fired at {x['fired_at']}s "
              f"(newest committed {x['step_seen']}): {x['detail']}" for x in report["schedule"]]
    if report.get("errors"):
        lines += ["", "ERRORS:"] + [f"  {e}" for e in report["errors"]]
    lines += ["", f"verdict: {report['verdict']}"]
    return "\n".join(lines)


def startup(life: Dict[str, Any]) -> float:
    """Seconds from a driver's start to its first progress line (0 when it printed none)."""
    return life["first_step_at"] - life["started"] if life["first_step_at"] is not None else 0.0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    p.add_argument("--data-root", default=os.environ.get("DISTMETA_DATA_DIR"),
                   help="folder with images_background_small{1,2}.zip (default $DISTMETA_DATA_DIR, "
                        "else the sets shipped with distmeta)")
    p.add_argument("--steps", type=int, default=60, help="meta-steps of each run")
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--channels", type=int, default=16, help="conv4 channels")
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--queries", type=int, default=2, help="query images per class")
    p.add_argument("--worker-nodes", type=int, default=3, help="1-CPU worker nodes (2 or 3)")
    p.add_argument("--worker-kills", type=int, default=4, help="task-worker SIGKILLs")
    p.add_argument("--max-delay", type=float, default=1.5, help="largest delay after a trigger (s)")
    p.add_argument("--timeout", type=float, default=900, help="limit of each run (s)")
    p.add_argument("--tolerance", type=float, default=1e-9, help="largest acceptable parameter difference")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (driver logs, Ray logs)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    # stdout carries the report alone: Ray (its messages about dead nodes, its node processes) writes
    # to fd 1 too, so fd 1 points to stderr until the end
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    root = _common.find_omniglot(args.data_root)
    if root is None or not (root / "images_background_small2.zip").is_file():
        print(f"chaos: no Omniglot zips (images_background_small1/2.zip) in {args.data_root or 'the default'}; "
              f"give --data-root or set DISTMETA_DATA_DIR", file=sys.stderr)
        return 2
    faults = schedule(args.seed, args.steps, args.checkpoint_every, args.worker_kills, args.max_delay)
    soak = Soak(args)

    def on_term(signum, frame):
        raise SystemExit(f"chaos: {signal.Signals(signum).name}")
    signal.signal(signal.SIGTERM, on_term)

    report: Dict[str, Any] = {"seed": args.seed, "loadavg": {"start": list(os.getloadavg())}}
    errors: List[str] = []
    try:
        import yaml

        cfg = run_config(args, root)
        (soak.tmp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        soak.start_s3()
        soak.start_cluster()
        say("schedule: " + ", ".join(f"{f.kind}@{f.trigger}+{f.delay:g}s" for f in faults))
        chaos_uri, clean_uri = f"s3://{BUCKET}/chaos", f"s3://{BUCKET}/clean"
        chaos = soak.chaos_run(chaos_uri, faults)
        say(f"chaos run: {chaos['wall_s']:.1f}s, final committed step {chaos['final_step']}")
        if chaos["error"]:
            errors.append(chaos["error"])
        if chaos["unfired"]:
            errors.append(f"faults that never fired: {chaos['unfired']}")
        clean: Dict[str, Any] = {"wall_s": float("nan"), "error": None}
        params: Dict[str, Any] = {"max_abs_diff": float("nan")}
        metrics_csv: Dict[str, Any] = {"columns": [], "restart_columns": {}}
        if not chaos["error"]:   # a broken chaos run is the finding; no clean run to compare with
            report["loadavg"]["before_clean"] = list(os.getloadavg())
            clean = soak.clean_run(clean_uri)
            say(f"clean run: {clean['wall_s']:.1f}s")
            if clean["error"]:
                errors.append(clean["error"])
            else:
                params = max_param_diff(chaos_uri, clean_uri)
        try:
            metrics_csv = restart_column(chaos_uri)
        except Exception as exc:
            errors.append(f"cannot read the chaos run's metrics.csv: {exc}")
    finally:
        report["loadavg"]["end"] = list(os.getloadavg())
        lives = [asdict(d.life) for d in soak.drivers]
        soak.stop()

    chaos_lives = [life for life in lives if "chaos" in Path(life["log"]).name]
    failures = [x for life in chaos_lives for x in life["failures"]]
    kinds = ("worker-kill", "node-remove", "node-add", "driver-kill")
    report.update({
        "config": {"steps": args.steps, "checkpoint_every": args.checkpoint_every, "channels": args.channels,
                   "meta_batch": args.meta_batch, "queries": args.queries, "worker_nodes": args.worker_nodes,
                   "workers": 2, "worker_num_cpus": 0.5, "dtype": "float64"},
        "command": " ".join(["python", "benchmarks/chaos.py"] + (argv if argv is not None else sys.argv[1:])),
        "schedule": [asdict(f) for f in faults],
        "faults": {k: {"scheduled": sum(f.kind == k for f in faults), "hit": sum(f.kind == k and f.hit for f in faults)}
                   for k in kinds},
        "redone": {"driver_kills": chaos["driver_kills"],
                   "steps_after_driver_kills": sum(k["redone"] for k in chaos["driver_kills"]),
                   "shards_rerun": len(failures), "tasks_rerun": sum(x["stop"] - x["start"] for x in failures),
                   "worker_failures": failures, "metrics_csv_restarts": metrics_csv["restart_columns"] or None,
                   "metrics_csv_columns": metrics_csv["columns"]},
        "driver_starts": len(chaos_lives),
        "startup_s": {"chaos": sum(startup(life) for life in chaos_lives),
                      "clean": sum(startup(life) for life in lives if life not in chaos_lives)},
        "ray_tracebacks_in_driver_logs": sum(life["ray_tracebacks"] for life in chaos_lives),
        "chaos": {k: chaos[k] for k in ("wall_s", "final_step")},
        "clean": {"wall_s": clean["wall_s"]},
        "overhead_ratio": chaos["wall_s"] / clean["wall_s"],
        "params": params,
        "drivers": lives,
        "errors": errors,
    })
    ok = not errors and chaos["final_step"] == args.steps and params["max_abs_diff"] <= args.tolerance
    report["verdict"] = ("PASS: every fault fired, the run finished, parameters agree within "
                         f"{args.tolerance:g}") if ok else "FAIL (see errors / numbers above)"
    print(json.dumps(report, indent=1, default=str) if args.json else table(report), file=out, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
