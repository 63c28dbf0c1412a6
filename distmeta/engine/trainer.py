"""The one training loop, for every method and every executor.

Each meta-step t: the engine returns the summed per-task gradients of the tasks
``0..meta_batch-1`` of step t (computed in-process or on Ray workers), the
learner applies their mean once, and the loop logs, validates and checkpoints.
Checkpoints hold (parameters, optimizer state, step, RNG state, config), so a
resumed run ends with the same parameters as an uninterrupted one; SIGINT and
SIGTERM checkpoint at the next step boundary; a non-finite loss stops the run
before the update, leaving the last good checkpoint in place.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from distmeta.config import ExperimentConfig, from_dict, load_config
from distmeta.engine.core import MetaCore, set_threads
from distmeta.engine.learner import Learner
from distmeta.engine.run_dir import CheckpointError, MetricsLogger, RunDir, load_checkpoint
from distmeta.errors import DistmetaError

log = logging.getLogger("distmeta")

# Fields that may change between a checkpoint and the run resuming from it.
RESUMABLE_FIELDS = ("name", "budget", "log_every", "optim.steps", "engine", "eval", "checkpoint",
                    "data.root", "data.store", "data.download", "data.base_url", "tune")


@dataclass
class RunResult:
    path: Path
    step: int
    metrics: Dict[str, Any]
    status: str = "finished"   # finished | interrupted


def as_config(config: Union[ExperimentConfig, Dict[str, Any], str, Path]) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        return config
    if isinstance(config, dict):
        return from_dict(config)
    return load_config(config)


def _flat_items(d: Dict[str, Any], prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flat_items(v, key + ".")
        else:
            yield key, v


def check_compatible(saved: Dict[str, Any], current: Dict[str, Any]) -> None:
    """Raise CheckpointError naming the first field that makes a checkpoint
    belong to another experiment."""
    a, b = dict(_flat_items(saved)), dict(_flat_items(current))
    for key in sorted(set(a) | set(b)):
        if any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS):
            continue
        if a.get(key) != b.get(key):
            raise CheckpointError(f"checkpoint is from another config: {key} is {a.get(key)!r} there, "
                                  f"{b.get(key)!r} here")


class StopFlag:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop at the next step boundary."""

    def __init__(self):
        self.requested: Optional[str] = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\ndistmeta: {self.requested} received; checkpointing at the next step boundary", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def omp_threads() -> Optional[int]:
    """``$OMP_NUM_THREADS`` when the user set it (a shared machine), else None (all CPUs we own)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def default_run_dir(cfg: ExperimentConfig) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _resolve_resume(resume, out, config) -> tuple:
    """Return (run folder, config, checkpoint state or None)."""
    if resume in (None, False, ""):
        return out, config, None
    if resume == "auto":
        if out is None:
            raise DistmetaError("--resume auto needs --out RUN_DIR (the folder a retried job writes to)")
        resume = out if RunDir(out).latest_checkpoint() is not None else None
        if resume is None:
            return out, config, None
    run = RunDir.open(resume)
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise CheckpointError(f"{resume}: no checkpoint to resume from")
    return Path(resume), (config if config is not None else run.config_dict()), load_checkpoint(ckpt)


def make_engine(cfg: ExperimentConfig, core: MetaCore):
    if cfg.engine.workers == 0:
        from distmeta.engine.local import LocalEngine

        return LocalEngine(core)
    from distmeta.engine.ray_engine import RayEngine

    return RayEngine(cfg, core)


def train(config=None, out=None, steps: Optional[int] = None, resume=None, progress: Optional[bool] = None,
          engine_factory=None, reporter=None, initial_state: Optional[Dict[str, Any]] = None) -> RunResult:
    """Run the training loop.

    ``engine_factory(cfg, core)`` may supply the executor (default: in-process for
    ``engine.workers: 0``, else Ray workers). ``reporter(step, metrics, state_fn)``
    is called after every validation (Tune reports and checkpoints there;
    ``state_fn()`` returns the full learner state). ``initial_state`` starts from
    such a state (a Tune checkpoint) instead of from scratch."""
    out, config, state = _resolve_resume(resume, out, config)
    if config is None:
        raise DistmetaError("train needs a config (or --resume RUN_DIR)")
    cfg = as_config(config)
    if steps is not None:
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, steps=int(steps)))
    if cfg.rl:
        from distmeta.rl import train_rl

        run = RunDir.open(out) if state is not None else RunDir.create(out or default_run_dir(cfg), cfg.to_dict())
        return RunResult(run.path, -1, train_rl(cfg, run, steps=steps, resume=state is not None))
    if state is not None:
        check_compatible(state["config"], cfg.to_dict())
    set_threads(cfg.engine.learner_num_cpus if cfg.engine.workers else omp_threads())
    core = MetaCore(cfg)  # data and config problems surface here, before any actor starts
    for split in sorted({cfg.eval.split, held_out_split(cfg, core)}):
        core.task_distribution(split)  # e.g. task.ways beyond a held-out split's classes: fail now
    learner = Learner(core)
    if state is not None or initial_state is not None:
        learner.load_state_dict(state if state is not None else initial_state)
    run = RunDir.open(out) if state is not None else RunDir.create(out or default_run_dir(cfg), cfg.to_dict())
    if state is not None:
        run.write_config(cfg.to_dict())
    logger = MetricsLogger(run.path)
    logger.truncate_after(learner.step)
    engine = (engine_factory or make_engine)(cfg, core)
    try:
        status = _loop(cfg, core, learner, engine, run, logger, progress, reporter)
        metrics = finish(cfg, core, learner, run, logger) if status == "finished" else {}
    finally:
        engine.close()
        logger.close()
    return RunResult(run.path, learner.step, metrics, status)


def checkpoint_state(cfg, learner) -> Dict[str, Any]:
    """Everything a checkpoint holds: learner state, config and the task shape."""
    train = learner.core.task_distribution("train")
    return {**learner.state_dict(), "config": cfg.to_dict(),
            "task_shape": {"input_shape": list(train.input_shape), "output_dim": train.output_dim,
                           "kind": train.kind}}


def _checkpoint(cfg, learner, run, score=None):
    state = checkpoint_state(cfg, learner)
    return run.save_checkpoint(state, learner.step, keep_last=cfg.checkpoint.keep_last,
                               score=score if cfg.checkpoint.keep_best else None)


def _loop(cfg, core, learner, engine, run, logger, progress, reporter=None) -> str:
    from distmeta.evaluation import evaluate
    from tqdm import tqdm

    total = cfg.optim.steps
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=total, initial=learner.step, disable=not show, unit="step", dynamic_ncols=True)
    window_tasks, window_start, score = 0, time.perf_counter(), None
    window_times: Dict[str, float] = {}   # summed time_*_s of the steps since the last log line
    window_steps = 0
    with StopFlag() as stop:
        while learner.step < total:
            t = learner.step
            t0 = time.perf_counter()
            grad_sum, metric_sums, count, timing = engine.meta_gradient(learner.flat_params(), t, cfg.optim.meta_batch)
            metrics = {k: v / count for k, v in metric_sums.items()}
            if not math.isfinite(metrics.get("loss", 0.0)) or not torch.isfinite(grad_sum).all():
                last = run.latest_checkpoint()
                raise DistmetaError(f"non-finite loss at meta-step {t} (loss={metrics.get('loss')}); "
                                    f"stopped before applying it; last good checkpoint: {last or 'none'}")
            learner.apply(grad_sum / count)
            window_tasks += count
            step_time = time.perf_counter() - t0
            times = {"step": step_time, **timing}
            if "transfer" in timing:  # Ray: the learner's own share (check, apply) of the step
                times["learner"] = max(step_time - sum(timing.values()), 0.0)
            for k, v in times.items():
                window_times[k] = window_times.get(k, 0.0) + v
            window_steps += 1
            row = {**metrics, "lr": learner.learning_rate(t)}
            if learner.step % cfg.eval.every == 0 or learner.step == total:
                val = evaluate(core, learner.flat_params(), cfg.eval.split, cfg.eval.episodes)
                row.update({f"val_{k}": v for k, v in val.items() if k != "episodes"})
                score = val.get("accuracy", -val.get("mse", math.inf))
                if reporter is not None:
                    reporter(learner.step, {**val, "loss": metrics.get("loss")},
                             lambda: checkpoint_state(cfg, learner))
            if learner.step % cfg.log_every == 0 or learner.step == total or "val_ci95" in row:
                now = time.perf_counter()
                row["tasks_per_s"] = window_tasks / max(now - window_start, 1e-9)
                row.update({f"time_{k}_s": v / window_steps for k, v in window_times.items()})
                window_tasks, window_start, window_times, window_steps = 0, now, {}, 0
                logger.log(learner.step, row)
                line = format_progress(learner.step, total, row)
                if show:
                    bar.set_postfix_str(line.split(" ", 2)[-1])
                else:
                    print(line, flush=True)
            bar.update(1)
            if learner.step % cfg.checkpoint.every == 0 or learner.step == total or stop.requested:
                _checkpoint(cfg, learner, run, score if "val_ci95" in row else None)
            if stop.requested:
                bar.close()
                print(f"distmeta: stopped at step {learner.step} ({stop.requested}); resume with "
                      f"`distmeta train --resume {run.path}`", file=sys.stderr)
                return "interrupted"
    bar.close()
    return "finished"


def format_progress(step: int, total: int, row: Dict[str, Any]) -> str:
    parts = [f"step {step}/{total}"]
    for key in ("loss", "accuracy", "mse", "pair_accuracy", "val_accuracy", "val_mse", "tasks_per_s"):
        if key in row:
            parts.append(f"{key.replace('_per_s', '/s')} {row[key]:.4g}")
    if "time_transfer_s" in row and row.get("time_step_s"):  # the engine's cost, visible on Ray runs
        parts.append("engine " + " ".join(f"{k} {100 * row[f'time_{k}_s'] / row['time_step_s']:.0f}%"
                                          for k in ("transfer", "wait")))
    return " ".join(parts)


def held_out_split(cfg, core) -> str:
    """The split of the final evaluation: test if the data has one, else ``eval.split``."""
    return "test" if ("test" in core.datasets or not core.datasets) else cfg.eval.split


def finish(cfg, core, learner, run, logger) -> Dict[str, Any]:
    """Final evaluation (mean and 95 % CI over ``eval.final_episodes`` held-out
    tasks of the test split, else val), ``results.json`` and plots."""
    from distmeta.evaluation import evaluate
    from distmeta.plots import plot_run

    split = held_out_split(cfg, core)
    final = evaluate(core, learner.flat_params(), split, cfg.eval.final_episodes)
    final = {"split": split, "step": learner.step, **final}
    run.write_json("results.json", final)
    print("final " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in final.items()),
          flush=True)
    try:
        plot_run(cfg, core, learner, run, logger)
    except Exception as exc:  # plotting must never lose a finished run
        log.warning("plotting failed: %s", exc)
    return final
