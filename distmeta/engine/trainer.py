"""The one run loop, for every method (supervised, RL^2, MAML-RL) and every executor.

Per iteration: ``method.step()``; every ``eval.every`` iterations (and at the
end) ``method.evaluate("val")`` (best.pt and Tune select on it); every
``log_every`` a metrics row of window means (CSV, TensorBoard, progress line);
every ``checkpoint.every`` a checkpoint. At the end the final parameters are
scored on the test split (``results.json``) and plots are written. Checkpoints
hold ``{"method", "config", "state": method.state(), "loop"}`` in torch tensors
and plain values, so a resumed run ends with the same parameters as an
uninterrupted one. SIGINT and SIGTERM checkpoint at the next iteration boundary;
a non-finite loss or score stops the run, leaving the last good checkpoint.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from distmeta.config import ConfigError, ExperimentConfig, from_dict, load_config, without_removed_fields
from distmeta.engine.run_dir import CheckpointError, MetricsLogger, RunDir, load_checkpoint
from distmeta.engine.tracking import make_tracker
from distmeta.errors import DistmetaError, NonFiniteError
from distmeta.method import method_class, method_key
from distmeta.storage import is_uri

log = logging.getLogger("distmeta")

# Fields that may change between a checkpoint and the run resuming from it.
RESUMABLE_FIELDS = ("name", "budget", "log_every", "tracking", "optim.steps", "engine", "eval", "checkpoint",
                    "data.root", "data.store", "data.download", "data.base_url", "tune", "rl.env_steps",
                    "rl.num_env_runners", "rl.num_learners")


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
        if isinstance(v, dict) and v:
            yield from _flat_items(v, key + ".")
        else:
            yield key, v


def check_compatible(saved: Dict[str, Any], current: Dict[str, Any]) -> None:
    """Raise CheckpointError naming the first field that makes a checkpoint belong to another experiment.
    A field the checkpoint's config lacks (one added to distmeta since it was written) counts as
    having its default, and one this distmeta no longer has is ignored, so an upgrade does not
    orphan older runs."""
    try:
        saved = from_dict(without_removed_fields(saved, "checkpoint", warn=False)).to_dict()
    except ConfigError:
        pass  # compared as written, so the loop below names the field
    a, b = dict(_flat_items(saved)), dict(_flat_items(current))
    for key in sorted(set(a) | set(b)):
        if any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS):
            continue
        if a.get(key) != b.get(key):
            raise CheckpointError(f"checkpoint is from another config: {key} is {a.get(key)!r} there, "
                                  f"{b.get(key)!r} here")


class StopFlag:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop at the next iteration boundary."""

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


def default_run_dir(cfg: ExperimentConfig):
    """``$DISTMETA_RUNS/<name>-<time>`` (a folder or a URI every node reaches, set once per
    cluster), else ``runs/<name>-<time>``."""
    leaf = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    base = os.environ.get("DISTMETA_RUNS")
    if base and is_uri(base):
        return f"{base.rstrip('/')}/{leaf}"
    return Path(base or "runs") / leaf


def _same_place(a, b) -> bool:
    if is_uri(str(a)) or is_uri(str(b)):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def _resolve_resume(resume, out, config) -> tuple:
    """Return (opened run folder or None, config, checkpoint or None)."""
    if resume in (None, False, ""):
        return None, config, None
    if resume == "auto":
        if out is None:
            raise DistmetaError("--resume auto needs --out RUN_DIR (the folder a retried job writes to)")
        if not RunDir.exists(out):
            return None, config, None
        resume = out
    elif out is not None and not _same_place(out, resume):
        raise DistmetaError(f"--resume {resume} continues that run in place; drop --out {out}")
    run = RunDir.open(str(resume) if is_uri(str(resume)) else resume)
    if run.latest_checkpoint() is None:
        if out is not None and resume == out:   # --resume auto on a run that never checkpointed
            return None, config, None
        raise CheckpointError(f"{resume}: no checkpoint to resume from")
    if config is None:
        config = without_removed_fields(run.config_dict(), run.location)
    return run, config, load_checkpoint(run.path)


def train(config=None, out=None, steps: Optional[int] = None, resume=None, progress: Optional[bool] = None,
          engine_factory=None, reporter: Optional[Callable] = None,
          initial_state: Optional[Dict[str, Any]] = None) -> RunResult:
    """Run the loop. ``steps`` sets the number of iterations (``optim.steps`` for the supervised
    methods). ``reporter(iteration, metrics, checkpoint_fn)`` is called after every validation
    (Tune reports and checkpoints there; ``checkpoint_fn()`` returns a whole checkpoint);
    ``initial_state`` starts from such a checkpoint instead of from scratch."""
    run, config, ckpt = _resolve_resume(resume, out, config)
    if config is None:
        raise DistmetaError("train needs a config (or --resume RUN_DIR)")
    cfg = as_config(config)
    if steps is not None and cfg.rl is None:
        cfg.optim.steps = int(steps)
    if ckpt is not None:
        check_compatible(ckpt["config"], cfg.to_dict())
    else:  # a Tune restore: PBT hands a trial another trial's state with mutated fields, by design
        ckpt = initial_state
    if run is None and ckpt is None and RunDir.exists(out):
        if resume != "auto":
            raise DistmetaError(f"--out {out}: a run folder already exists there; continue it with --resume {out} "
                                f"or choose a new --out")
    build = method_class(cfg).build
    method = build(cfg, engine_factory) if engine_factory is not None else build(cfg)
    try:
        if ckpt is not None:
            method.load(ckpt["state"])
        if run is None:
            run = RunDir.open(out) if (initial_state is not None and RunDir.exists(out)) else \
                RunDir.create(out or default_run_dir(cfg), cfg.to_dict())
        run.write_config(cfg.to_dict())
        loop = RunLoop(cfg, method, run, progress, reporter, max_iterations=steps if cfg.rl is not None else None)
        status = loop.run(ckpt.get("loop", {}) if ckpt else {})
        metrics = loop.finish() if status == "finished" else {}
    finally:
        method.close()
    return RunResult(run.path if run.remote is None else run.location, method.iteration, metrics, status)


class RunLoop:
    """Drives one method: iterate, validate, log, checkpoint, report; then the final test."""

    def __init__(self, cfg, method, run: RunDir, progress=None, reporter=None, max_iterations=None):
        self.cfg, self.method, self.run_dir, self.reporter = cfg, method, run, reporter
        self.max_iterations = max_iterations
        self.logger = MetricsLogger(run.path)
        self.logger.truncate_after(method.iteration)
        self.tracker = make_tracker(cfg, run.path)
        self.show = sys.stderr.isatty() if progress is None else progress
        self.window: Dict[str, float] = {}
        self.window_steps, self.work, self.train_time, self.eval_time = 0, 0.0, 0.0, 0.0

    def _finished(self) -> bool:
        m = self.method
        return m.done() or (self.max_iterations is not None and m.iteration >= self.max_iterations)

    def run(self, loop_state: Dict[str, Any]) -> str:
        self.work_total = float(loop_state.get("work_total", 0.0))
        with StopFlag() as stop:
            while not self._finished():
                self._train_step()
                row: Dict[str, Any] = {}
                it = self.method.iteration
                last = self._finished()
                if it % self.cfg.eval.every == 0 or last:
                    row.update(self._validate())
                if it % self.cfg.log_every == 0 or last or "val_ci95" in row:
                    self._log(it, row)
                if it % self.cfg.checkpoint.every == 0 or last or stop.requested:
                    self._checkpoint(row.get("val_score"))
                if stop.requested:
                    print(f"distmeta: stopped at iteration {it} ({stop.requested}); resume with "
                          f"`distmeta train --resume {self.run_dir.location}`", file=sys.stderr)
                    return "interrupted"
        return "finished"

    def _train_step(self) -> None:
        """One iteration; its metrics join the window means of the next metrics row."""
        t0 = time.perf_counter()
        try:
            metrics = self.method.step()
        except NonFiniteError as exc:
            raise NonFiniteError(f"{exc}; last good checkpoint: {self.run_dir.latest_checkpoint() or 'none'}") from None
        self.train_time += time.perf_counter() - t0
        self.work += metrics.get("work", 0.0)
        self.work_total += metrics.get("work", 0.0)
        for key, value in metrics.items():
            if key != "work" and value is not None and math.isfinite(value):
                self.window[key] = self.window.get(key, 0.0) + value
        self.window_steps += 1

    def _validate(self) -> Dict[str, Any]:
        m = self.method
        t0 = time.perf_counter()
        val = m.evaluate("val", self.cfg.eval.episodes)
        self.eval_time += time.perf_counter() - t0
        score = val.get(m.score_key)
        if score is None or not math.isfinite(score):  # finite loss, exploded parameters: stop, keep the state
            path = self._checkpoint(None)
            raise NonFiniteError(f"non-finite validation {m.score_key} at iteration {m.iteration}: the run "
                                 f"diverged (its state is in {path})")
        if self.reporter is not None:
            report = {k: v for k, v in val.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            report.update(m.facts() if hasattr(m, "facts") else {})
            self.reporter(m.iteration, {**report, **self._window_means()}, self.checkpoint_dict)
        out = {f"val_{k}": v for k, v in val.items() if isinstance(v, (int, float)) and k != "episodes"}
        return {**out, "val_score": score if m.higher_is_better else -score}

    def _window_means(self) -> Dict[str, float]:
        return {k: v / max(self.window_steps, 1) for k, v in self.window.items()}

    def _log(self, it: int, row: Dict[str, Any]) -> None:
        m = self.method
        row = {**self._window_means(), **{k: v for k, v in row.items() if k != "val_score"}}
        row[f"{m.work_unit}_per_s"] = self.work / max(self.train_time, 1e-9)  # evaluation excluded
        row[m.work_unit] = self.work_total
        if self.eval_time:
            row["eval_time_s"] = self.eval_time
        self.logger.log(it, row)
        if self.tracker is not None:
            self.tracker.log(it, row)
        line = format_progress(it, m, row)
        if self.show:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            print(line, flush=True)
        self.window, self.window_steps, self.work, self.train_time, self.eval_time = {}, 0, 0.0, 0.0, 0.0

    def checkpoint_dict(self) -> Dict[str, Any]:
        """Everything a checkpoint holds (torch tensors and plain values)."""
        return {"method": method_key(self.cfg), "config": self.cfg.to_dict(), "state": self.method.state(),
                "loop": {"work_total": self.work_total}}

    def _checkpoint(self, score: Optional[float]) -> Path:
        keep = self.cfg.checkpoint
        return self.run_dir.save_checkpoint(self.checkpoint_dict(), self.method.iteration, keep_last=keep.keep_last,
                                            score=score if keep.keep_best else None)

    def finish(self) -> Dict[str, Any]:
        """Score the final parameters on the test split (``results.json``), write the plots."""
        if self.show:
            print(file=sys.stderr)
        m = self.method
        final = m.evaluate("test", self.cfg.eval.final_episodes)
        final = {"checkpoint": "final", "iteration": m.iteration, **final}
        self.run_dir.write_json("results.json", final)
        self.logger.close()
        if self.tracker is not None:
            self.tracker.log(m.iteration, {f"test_{k}": v for k, v in final.items()})
            self.tracker.close()
        try:
            from distmeta.plots import plot_curves

            plot_curves(self.logger, m, self.cfg.name)
            m.artifacts(self.run_dir.path, self.logger.rows)
        except Exception as exc:  # plotting must never lose a finished run
            log.warning("plotting failed: %s", exc)
        self.run_dir.publish()
        print_summary(self.run_dir.location, m, final)
        return final


def format_progress(it: int, method, row: Dict[str, Any]) -> str:
    total = getattr(method, "total", None)
    parts = [f"step {it}/{total}" if total else f"step {it}"]
    keys = list(method.progress_keys) + [f"val_{method.score_key}", f"{method.work_unit}_per_s"]
    for key in keys:
        if isinstance(row.get(key), (int, float)):
            parts.append(f"{key.replace('_per_s', '/s')} {row[key]:.4g}")
    if row.get("time_transfer_s") is not None and row.get("time_step_s"):  # the engine's cost on Ray runs
        parts.append("engine " + " ".join(f"{k} {100 * row[f'time_{k}_s'] / row['time_step_s']:.0f}%"
                                          for k in ("transfer", "wait")))
    return " ".join(parts)


def print_summary(path: Path, method, final: Dict[str, Any]) -> None:
    """The one-screen end of ``train``: the test score with its CI, and what to do next."""
    score = final.get(method.score_key)
    ci = final.get("ci95")
    text = f"{score:.4g}" + (f" ± {ci:.2g}" if isinstance(ci, float) and math.isfinite(ci) else "")
    print(f"final test {method.score_key}: {text} (final checkpoint, iteration {final['iteration']})", flush=True)
    print(f"run folder: {path}\n  evaluate: distmeta eval {path}\n  resume:   distmeta train --resume {path}",
          flush=True)
