"""A run folder: resolved config, provenance, metrics (CSV + TensorBoard), plots
and checkpoints.

Contract:
- ``RunDir.create(path, config_dict)`` writes ``config.yaml`` and
  ``provenance.json``; ``RunDir.open(path)`` reopens an existing one.
- ``MetricsLogger.log(step, metrics)`` appends a row to ``metrics.csv`` and
  scalars to TensorBoard (plots: :mod:`distmeta.plots`).
- ``save_checkpoint(state, step, score)`` writes ``checkpoints/step_NNNNNNN.pt``
  atomically (temporary file, fsync, rename), keeps the last ``keep_last`` and,
  when ``score`` is given, the best (highest) as ``best.pt``.
  ``load_checkpoint(path)`` uses ``torch.load(weights_only=True)``: a checkpoint
  holds tensors and plain Python values only and never executes code.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
import yaml

CHECKPOINT_FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or belongs to another config."""


def provenance() -> Dict[str, Any]:
    import distmeta

    info: Dict[str, Any] = {
        "distmeta": distmeta.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "checkpoint_format": CHECKPOINT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import ray

        info["ray"] = ray.__version__
    except Exception:  # pragma: no cover - Ray absent (GPU check machines)
        info["ray"] = None
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        info["git_commit"] = commit.stdout.strip() if commit.returncode == 0 else None
    except Exception:
        info["git_commit"] = None
    return info


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary sibling, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def finite_or_none(tree: Any) -> Any:
    """``tree`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(tree, dict):
        return {k: finite_or_none(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [finite_or_none(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


class MetricsLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.csv"
        self.rows: List[Dict[str, Any]] = []
        self.columns: List[str] = []
        if self.path.exists():
            with open(self.path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = list(reader.fieldnames or [])
                self.rows = [dict(r) for r in reader]
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:  # pragma: no cover - tensorboard missing
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """Drop rows past ``step`` (used on resume, so a replayed step is not logged twice)."""
        self.rows = [r for r in self.rows if int(float(r["step"])) <= step]
        self._rewrite()

    def log(self, step: int, metrics: Dict[str, Any]) -> None:
        row = {"step": step, **{k: v for k, v in metrics.items() if v is not None}}
        new = [k for k in row if k not in self.columns]
        self.rows.append(row)
        if new:
            self.columns += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as fh:
                csv.DictWriter(fh, self.columns).writerow(row)
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def _rewrite(self) -> None:
        def write(fh):
            import io

            text = io.StringIO()
            writer = csv.DictWriter(text, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
            fh.write(text.getvalue().encode())

        atomic_write_bytes(self.path, write)

    def series(self, key: str):
        xs, ys = [], []
        for r in self.rows:
            v = r.get(key)
            if v not in (None, ""):
                xs.append(int(float(r["step"])))
                ys.append(float(v))
        return xs, ys

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


class RunDir:
    """A run folder. ``location`` is where it lives (a path or a URI); ``path`` is the local
    folder written to (the location itself, or a staging folder published to a URI at every
    checkpoint: :mod:`distmeta.storage`)."""

    def __init__(self, path: Union[str, Path], remote=None):
        from distmeta.storage import staging_dir

        self.remote = remote
        self.location = remote.uri if remote is not None else str(path)
        self.path = staging_dir(remote.uri) if remote is not None else Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @classmethod
    def create(cls, path: Union[str, Path], config: Dict[str, Any]) -> "RunDir":
        from distmeta.storage import Remote, is_uri

        run = cls(path, Remote(path) if is_uri(path) else None)
        if run.remote is not None:
            shutil.rmtree(run.path, ignore_errors=True)   # a new run: nothing stale from an old staging folder
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(config)
        (run.path / "provenance.json").write_text(json.dumps(provenance(), indent=2))
        run.publish()
        return run

    def publish(self, checkpoint: Optional[Path] = None, extra=None, removed=None) -> None:
        """Bring a URI run's location up to date (commit order: files, checkpoint, marker)."""
        if self.remote is not None:
            from distmeta.storage import publish

            publish(self.remote, self.path, checkpoint, extra, removed)

    def write_config(self, config: Dict[str, Any]) -> None:
        """Record the resolved config (also on resume, where resumable fields may change)."""
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    @classmethod
    def exists(cls, path: Optional[Union[str, Path]]) -> bool:
        """Whether ``path`` (a folder or a URI) already holds a run folder."""
        from distmeta.storage import Remote, is_uri

        if path is None:
            return False
        return Remote(path).exists("config.yaml") if is_uri(path) else (Path(path) / "config.yaml").is_file()

    @classmethod
    def open(cls, path: Union[str, Path]) -> "RunDir":
        """An existing run; a URI run is fetched (files and committed checkpoints) into staging."""
        from distmeta.storage import Remote, fetch, is_uri

        if is_uri(path):
            fetch(path)
            return cls(path, Remote(path))
        run = cls(path)
        if not (run.path / "config.yaml").is_file():
            raise CheckpointError(f"{path}: not a distmeta run folder (no config.yaml)")
        run.remove_temporary_files()
        return run

    def config_dict(self) -> Dict[str, Any]:
        return self._parse_config((self.path / "config.yaml").read_text(), self.location)

    @classmethod
    def read_config(cls, path: Union[str, Path]) -> Dict[str, Any]:
        """The config of the run at ``path`` (a folder or URI), reading only its config.yaml:
        nothing is fetched, so ``train --resume URI`` downloads the run once, in :meth:`open`."""
        from distmeta.storage import Remote, is_uri

        if is_uri(path):
            if not Remote(str(path)).exists("config.yaml"):
                raise CheckpointError(f"{path}: not a distmeta run folder (no config.yaml)")
            return cls._parse_config(Remote(str(path)).read_bytes("config.yaml").decode(), str(path))
        file = Path(path) / "config.yaml"
        if not file.is_file():
            raise CheckpointError(f"{path}: not a distmeta run folder (no config.yaml)")
        return cls._parse_config(file.read_text(), str(path))

    @staticmethod
    def _parse_config(text: str, location: str) -> Dict[str, Any]:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CheckpointError(f"{location}/config.yaml: not valid YAML "
                                  f"({' '.join(str(exc).split())[:160]}); restore it or start a new run") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{location}/config.yaml: not a distmeta config")
        return data

    def remove_temporary_files(self) -> List[Path]:
        """Delete what interrupted atomic writes left (``.<name>.tmp<pid>``); return them."""
        leftovers = [p for p in self.path.rglob(".*.tmp*") if p.is_file()]
        for p in leftovers:
            p.unlink()
        return leftovers

    def write_json(self, name: str, data: Dict[str, Any]) -> Path:
        """Write ``data`` as strict JSON: a non-finite number becomes null, never NaN."""
        out = self.path / name
        text = json.dumps(finite_or_none(data), indent=2, allow_nan=False)
        atomic_write_bytes(out, lambda fh: fh.write(text.encode()))
        self.publish()
        return out

    # -- checkpoints -------------------------------------------------------
    def checkpoint_paths(self) -> List[Path]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(self.checkpoints.glob("step_*.pt"))

    def latest_checkpoint(self) -> Optional[Path]:
        paths = self.checkpoint_paths()
        return paths[-1] if paths else None

    def save_checkpoint(self, state: Dict[str, Any], step: int, keep_last: int = 3,
                        score: Optional[float] = None) -> Path:
        state = {**state, "step": step, "format": CHECKPOINT_FORMAT}
        path = self.checkpoints / f"step_{step:07d}.pt"
        atomic_write_bytes(path, lambda fh: torch.save(state, fh))
        removed = [old.name for old in self.checkpoint_paths()[:-keep_last]]
        for name in removed:
            (self.checkpoints / name).unlink()
        extra = []
        if score is not None and math.isfinite(score):
            best_meta = self.checkpoints / "best.json"
            best = json.loads(best_meta.read_text())["score"] if best_meta.exists() else -math.inf
            if score >= best:
                atomic_write_bytes(self.checkpoints / "best.pt", lambda fh: torch.save(state, fh))
                atomic_write_bytes(best_meta, lambda fh: fh.write(json.dumps({"score": score, "step": step}).encode()))
                extra = ["best.pt", "best.json"]
        self.publish(path, extra, removed)
        return path


def _load_file(path: Path) -> Dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable distmeta checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path}: not a distmeta checkpoint")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state['format']} is from an older distmeta; this "
                              f"version reads format {CHECKPOINT_FORMAT} (train the run again)")
    return state


def load_run_checkpoint(path: Union[str, Path], which: str = "final") -> tuple:
    """``(checkpoint, name)`` of a run folder's ``final`` (newest loadable) or ``best``
    (selected on validation) checkpoint, or of a checkpoint file. A corrupt newest
    checkpoint is skipped with a warning for the next older one that loads."""
    import warnings

    from distmeta.storage import is_uri

    if is_uri(path):
        path = RunDir.open(path).path
    path = Path(path)
    if path.is_file():
        return _load_file(path), path.name
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    run = RunDir(path)
    if which == "best":
        best = run.checkpoints / "best.pt"
        if not best.is_file():
            raise CheckpointError(f"{path}: no best.pt (the run kept no validation-selected checkpoint)")
        return _load_file(best), "best"
    paths = run.checkpoint_paths()
    if not paths:
        raise CheckpointError(f"{path}: no checkpoint found in {run.checkpoints}")
    for candidate in reversed(paths):
        try:
            state = _load_file(candidate)
        except CheckpointError as exc:
            if candidate == paths[0]:
                raise
            warnings.warn(f"skipping an unreadable checkpoint: {exc}")
            continue
        return state, "final" if candidate == paths[-1] else candidate.name


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Load a checkpoint file, or a run folder's newest loadable one, safely
    (``weights_only=True``: it never executes code) or raise CheckpointError."""
    from distmeta.storage import is_uri

    if not is_uri(path) and not Path(path).exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return load_run_checkpoint(path)[0]
