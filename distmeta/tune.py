"""``distmeta tune CONFIG``: Ray Tune searches over an experiment's fields.

The ``tune:`` section of an experiment YAML::

    tune:
      space:                      # dotted config field -> one distribution
        optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
        algorithm.inner_steps: {choice: [1, 3, 5]}
        optim.meta_batch: {grid: [4, 8]}
      num_samples: 4              # repeats of the grid (or samples of the space)
      metric: accuracy            # accuracy | mse | mean_return | loss (default by task)
      mode: max                   # max | min (default by metric)
      scheduler: asha             # asha | pbt | median | fifo
      scheduler_options: {}       # passed to the scheduler (e.g. perturbation_interval)
      search: random              # random | grid | optuna | hyperopt
      max_concurrent: 2
      stop: {training_iteration: 20}

Each trial runs the one training loop (``distmeta.engine.trainer.train``) with its
own task workers placed in the trial's placement group (one bundle for the
learner plus one per worker), reports the validation metric under the name
``distmeta eval --json`` uses, and checkpoints the complete learner state
(parameters, optimizer, step, RNG) through Tune, so PBT's exploit restores a
whole learner and ``distmeta tune --resume DIR`` continues an interrupted search.
Every method (supervised, RL^2, MAML-RL) runs through the same trainable; its
trial resources are the method's own request (``Method.resources``).
"""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml

from distmeta.config import ConfigError, apply_overrides, from_dict, load_config_dict, reported_metrics
from distmeta.engine.run_dir import CHECKPOINT_FORMAT
from distmeta.schema import TuneConfig
from distmeta.storage import is_uri
from distmeta.errors import DistmetaError

CHECKPOINT_FILE = "checkpoint.pt"


def parse_tune_section(data: Dict[str, Any]) -> TuneConfig:
    """The validated ``tune`` section of an experiment (every searched field checked)."""
    if not data.get("tune"):
        raise ConfigError("tune: the config has no tune section (tune.space lists the fields to search)")
    return from_dict(data).tune


def param_space(tc: TuneConfig) -> Dict[str, Any]:
    from ray import tune

    out = {}
    for key, spec in tc.space.items():
        kind, args = next(iter(spec.items()))
        if kind == "grid" or (kind == "choice" and tc.search == "grid"):
            out[key] = tune.grid_search(list(args))
        elif kind == "choice":
            out[key] = tune.choice(list(args))
        else:
            out[key] = getattr(tune, kind)(*args)
    return out


def trial_config(base: Dict[str, Any], params: Dict[str, Any]) -> Dict[str, Any]:
    data = copy.deepcopy(base)
    data.pop("tune", None)
    return apply_overrides(data, [f"{k}={json.dumps(_plain(v))}" for k, v in params.items()])


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    return v


def trainable(params: Dict[str, Any], base: Dict[str, Any]) -> None:
    """One Tune trial of any distmeta experiment: the run loop, reporting after every validation
    and checkpointing the whole run state through Tune (PBT restores it; so does --resume)."""
    from ray import tune

    from distmeta.engine.trainer import train

    cfg = from_dict(trial_config(base, params))
    checkpoint = tune.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    restored = int(state["step"]) if state is not None else 0

    def reporter(iteration, metrics, checkpoint_fn):
        full = {**checkpoint_fn(), "step": iteration, "format": CHECKPOINT_FORMAT}
        report = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        report.update(step=iteration, restored_step=restored, **facts(full))
        with tempfile.TemporaryDirectory() as d:
            torch.save(full, Path(d) / CHECKPOINT_FILE)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(d))

    train(cfg, out=Path(tune.get_context().get_trial_dir()) / "run", progress=False, reporter=reporter,
          initial_state=state)


def facts(checkpoint: Dict[str, Any]) -> Dict[str, float]:
    """A check a search can assert on: the outer optimizer's own step count (a PBT restore
    must bring it back together with the parameters)."""
    optimizer = checkpoint["state"].get("optimizer")
    for s in (optimizer.get("state", {}).values() if isinstance(optimizer, dict) else []):
        if "step" in s:
            return {"optimizer_steps": float(s["step"])}
    return {}


def make_trainable(data: Dict[str, Any]):
    """The Tune trainable of an experiment, sized by its method's resource request."""
    from ray import tune

    from distmeta.method import method_class

    base = {k: v for k, v in data.items() if k != "tune"}
    cfg = from_dict(base)
    resources = method_class(cfg).resources(cfg)
    wrapped = tune.with_parameters(trainable, base=base)
    return tune.with_resources(wrapped, resources) if resources is not None else wrapped


def build_tuner(data: Dict[str, Any], out: Optional[str] = None):
    from ray import tune
    from ray.tune import RunConfig, TuneConfig as RayTuneConfig

    cfg = from_dict(data)
    tc = cfg.tune
    if tc is None:
        raise ConfigError("tune: the config has no tune section (tune.space lists the fields to search)")
    metric = tc.metric or reported_metrics(cfg)[0]
    mode = tc.mode or ("min" if metric in ("mse", "loss") else "max")
    trainable = make_trainable(data)
    tune_cfg = RayTuneConfig(metric=metric, mode=mode, num_samples=tc.num_samples,
                             scheduler=make_scheduler(tc, metric, mode, param_space(tc)),
                             search_alg=make_searcher(tc, metric, mode),
                             max_concurrent_trials=tc.max_concurrent or None)
    storage, name = storage_and_name(out, cfg.name)
    from distmeta.engine.tracking import tune_callbacks

    run_cfg = RunConfig(name=name, storage_path=storage, stop=tc.stop or None, verbose=1,
                        callbacks=tune_callbacks(cfg) or None,
                        # Every trial checkpoint is kept (a learner state: small). Tune writes its experiment
                        # snapshot at most every ~10 s, so with rotation (num_to_keep) a kill between a
                        # rotation and the next snapshot leaves a snapshot naming a deleted checkpoint and
                        # --resume fails; PBT also clones other trials' checkpoints.
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=None))
    return tune.Tuner(trainable, param_space=param_space(tc), tune_config=tune_cfg, run_config=run_cfg), metric, mode


def storage_and_name(out: Optional[str], name: str):
    """Tune's storage path (a folder or a URI such as s3://bucket/path) and experiment name."""
    if not out:
        return str(Path("runs").resolve()), f"tune-{name}"
    if is_uri(out):
        parent, _, leaf = out.rstrip("/").rpartition("/")
        return parent, leaf
    p = Path(out).resolve()
    return str(p.parent), p.name


def make_scheduler(tc: TuneConfig, metric: str, mode: str, space: Dict[str, Any]):
    from ray.tune import schedulers

    opts = dict(tc.scheduler_options)
    if tc.scheduler == "asha":
        return schedulers.ASHAScheduler(**{"grace_period": 1, **opts})
    if tc.scheduler == "median":
        return schedulers.MedianStoppingRule(**opts)
    if tc.scheduler == "pbt":
        mutations = {k: v for k, v in space.items() if not isinstance(v, dict)}
        return schedulers.PopulationBasedTraining(
            **{"time_attr": "training_iteration", "perturbation_interval": 2,
               "hyperparam_mutations": mutations, **opts})
    return schedulers.FIFOScheduler()


def make_searcher(tc: TuneConfig, metric: str, mode: str):
    if tc.search in ("random", "grid"):
        return None  # Tune's built-in variant generation
    try:
        if tc.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch()
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch()
    except (ImportError, AssertionError) as exc:
        raise DistmetaError(f"tune.search: {tc.search} needs the optional extra: "
                            f"pip install 'distmeta[tune-search]' ({exc})") from None


def export_best(checkpoint_dir: Path, out: str) -> str:
    """Write a trial checkpoint as a distmeta run folder (readable by ``distmeta.load``/``eval``)."""
    from distmeta.engine.run_dir import RunDir

    state = torch.load(checkpoint_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    export = RunDir.create(out, state["config"])
    export.save_checkpoint({k: v for k, v in state.items() if k not in ("step", "format")}, int(state["step"]),
                           keep_last=1)
    return export.location


def summarize(results, metric: str, mode: str, out_dir: Path, location: str,
              base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Table of trials, best checkpoint exported as a distmeta run folder, curves plot."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        values = [] if df is None or metric not in df else [v for v in df[metric].tolist() if v == v]
        best = (max(values) if mode == "max" else min(values)) if values else float("nan")
        rows.append({"trial": Path(r.path).name if r.path else "?", "config": r.config, "best": best,
                     "status": "ERROR" if r.error else "TERMINATED", "df": df})
    print(f"{'trial':<44} {'best ' + metric:>14}  status      config")
    for row in rows:
        print(f"{row['trial'][:44]:<44} {row['best']:>14.4f}  {row['status']:<10}  {json.dumps(row['config'])}")
    summary: Dict[str, Any] = {"metric": metric, "mode": mode,
                               "trials": [{k: v for k, v in r.items() if k != "df"} for r in rows]}
    try:
        best = results.get_best_result(metric=metric, mode=mode, scope="all")
    except Exception:
        best = None
    if best is not None and best.checkpoint is not None:
        with best.checkpoint.as_directory() as d:
            path = export_best(Path(d), f"{location}/best")
        summary["best"] = {"config": best.config, metric: best.metrics.get(metric), "path": str(path)}
        print(f"best trial exported to {path} (distmeta eval {path})")
    plot_trials(rows, metric, out_dir / "trials.png")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    from distmeta.storage import Remote, is_uri

    if is_uri(location):
        for name in ("trials.png", "summary.json"):
            Remote(location).upload(out_dir / name, name)
    return summary


def plot_trials(rows, metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        df = row["df"]
        if df is not None and metric in df and "step" in df:
            label = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                              for k, v in row["config"].items())
            ax.plot(df["step"], df[metric], marker=".", label=label[:60])
    ax.set_xlabel("meta-step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _read_search(location: str) -> Dict[str, Any]:
    """The experiment a search folder (path or URI) was started with (``distmeta_tune.yaml``)."""
    from distmeta.storage import Remote, is_uri

    name = "distmeta_tune.yaml"
    if is_uri(location):
        remote = Remote(location)
        text = remote.read_bytes(name).decode() if remote.exists(name) else None
    else:
        text = (Path(location) / name).read_text() if (Path(location) / name).is_file() else None
    if text is None:
        raise DistmetaError(f"--resume {location}: not a distmeta tune folder (no {name})")
    return yaml.safe_load(text)


def _write_search(location: str, data: Dict[str, Any]) -> Path:
    """Record the experiment in the search folder; return the local folder for the summary."""
    from distmeta.storage import Remote, is_uri, staging_dir

    text = yaml.safe_dump(data, sort_keys=False)
    if is_uri(location):
        Remote(location).write_bytes("distmeta_tune.yaml", text.encode())
        local = staging_dir(location)
    else:
        local = Path(location)
        (local / "distmeta_tune.yaml").parent.mkdir(parents=True, exist_ok=True)
        (local / "distmeta_tune.yaml").write_text(text)
    local.mkdir(parents=True, exist_ok=True)
    return local


def run_tune(config_path: Optional[str], overrides: List[str], out: Optional[str] = None,
             resume: Optional[str] = None, address: Optional[str] = None) -> Dict[str, Any]:
    """Run (or with ``resume``, continue) a search whose folder is a path or a storage URI:
    Tune's ``storage_path`` follows it, so trials on several nodes checkpoint to the same place
    and ``--resume URI`` continues from another machine."""
    from ray import tune

    from distmeta.address import connect_ray

    if resume:
        data, out = _read_search(resume), resume
    elif not config_path:
        raise DistmetaError("tune: give a CONFIG (or --resume DIR)")
    else:
        data = load_config_dict(config_path, overrides)
    tuner, metric, mode = build_tuner(data, out)   # validates before Ray starts
    started = connect_ray(address or data.get("engine", {}).get("address"))
    storage, name = storage_and_name(out, data.get("name", "experiment"))
    location = f"{storage.rstrip('/')}/{name}"
    local = _write_search(location, data)
    try:
        if resume:
            tuner = tune.Tuner.restore(location, trainable=make_trainable(data), resume_unfinished=True,
                                       resume_errored=True)
        results = tuner.fit()
        return summarize(results, metric, mode, local, location, {k: v for k, v in data.items() if k != "tune"})
    finally:
        if started:
            import ray

            ray.shutdown()


def register(sub) -> None:
    p = sub.add_parser("tune", help="run a Ray Tune search over an experiment's fields",
                       description="Search the fields listed in the config's tune: section. Each trial runs "
                                   "the training loop with its workers in the trial's placement group.")
    p.add_argument("config", nargs="?", help="experiment YAML with a tune: section")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="search folder or storage URI (default runs/tune-<name>)")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted search in DIR")
    p.add_argument("--address", help="Ray cluster: 'auto', HOST:PORT, or empty for an embedded local Ray")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    """Exit status 1 when any trial ended in an error (the table says which)."""
    summary = run_tune(args.config, args.overrides, args.out, args.resume, args.address)
    return 1 if any(t["status"] == "ERROR" for t in summary["trials"]) else 0
