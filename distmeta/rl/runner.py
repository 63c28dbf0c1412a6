"""Run-folder drivers for the Meta-RL methods: ``train_rl`` and ``evaluate_rl``.

Run folder layout (shared with the supervised methods): ``config.yaml``,
``provenance.json``, ``metrics.csv`` + ``tensorboard/`` + ``learning_curves.png``,
``checkpoints/step_NNNNNNN.pt`` (torch state dicts and plain values only, loaded
with ``weights_only=True``), ``eval.json`` and ``rl_curve.png`` (mean held-out
return against env steps, baselines as horizontal lines).
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from distmeta.engine.run_dir import MetricsLogger, RunDir, load_checkpoint
from distmeta.rl.config import RLConfig, parse_rl

log = logging.getLogger("distmeta.rl")


# -- helpers ------------------------------------------------------------------
def _limit_threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    # progress lines: make sure they reach stderr when nobody configured logging
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s distmeta.rl %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def _open_run(run_dir: Any, cfg) -> RunDir:
    if isinstance(run_dir, RunDir):
        return run_dir
    path = Path(run_dir)
    if (path / "config.yaml").is_file():
        return RunDir.open(path)
    return RunDir.create(path, cfg.to_dict())


def ensure_ray(cfg) -> None:
    """Reuse an initialised Ray; else start an embedded one (or connect to ``engine.address``)."""
    import ray

    if ray.is_initialized():
        return
    address = getattr(cfg.engine, "address", None) or None
    env = {"env_vars": {"OMP_NUM_THREADS": "1"}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=max(2, int(cfg.rl.get("num_env_runners", 0)) + 1),
                 include_dashboard=False, runtime_env=env, log_to_driver=False,
                 logging_level=logging.ERROR)


def to_plain(tree: Any) -> Any:
    """numpy arrays -> torch tensors, recursively (checkpoint-safe for weights_only loads)."""
    if isinstance(tree, dict):
        return {k: to_plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [to_plain(v) for v in tree]
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(np.array(tree))
    if isinstance(tree, np.generic):
        return tree.item()
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    return tree


def held_out_tasks(rl: RLConfig, n: Optional[int] = None):
    from distmeta.envs import make, task_splits

    return task_splits(make(rl.env, **rl.env_config), rl.train_tasks, n or rl.eval_tasks, rl.task_seed)


def plot_curve(run: RunDir, xs: List[float], ys: List[float], baselines: Dict[str, float], title: str,
               ylabel: str = "mean held-out return") -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not xs:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o", label="agent")
    # a baseline far outside the agent's range (more than 3 spans away) would flatten the
    # curve: it is named in the legend with its value instead of drawn
    span = max(max(ys) - min(ys), 1e-9)
    shown = [v for v in baselines.values() if min(ys) - 3 * span <= v <= max(ys) + 3 * span]
    lo, hi = min(list(ys) + shown), max(list(ys) + shown)
    for i, (name, value) in enumerate(sorted(baselines.items(), key=lambda kv: -kv[1])):
        if lo <= value <= hi:
            ax.axhline(value, ls="--", color=f"C{i + 1}", label=name)
        else:
            ax.plot([], [], ls="--", color=f"C{i + 1}", label=f"{name} = {value:.4g} (off the chart)")
    pad = 0.05 * max(hi - lo, 1e-9)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("env steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = run.path / "rl_curve.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _baseline_summaries(rl: RLConfig, tasks, seed: int) -> Dict[str, Dict[str, Any]]:
    from distmeta.rl.baselines import baselines_for, summarize

    if not rl.baselines:
        return {}
    episodes = rl.rl2.episodes_per_trial
    out = {}
    for name, returns in baselines_for(rl.env, tasks, episodes, rl.env_config, seed).items():
        s = summarize(returns)
        out[name] = {"mean_return": s["mean_return"], "ci95": s["ci95"],
                     "mean_return_by_episode": s["mean_return_by_episode"]}
    return out


# -- RL^2 ----------------------------------------------------------------------
def _rl2_state(algo) -> Dict[str, Any]:
    from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_OPTIMIZER, COMPONENT_RL_MODULE

    state = algo.learner_group.get_state()[COMPONENT_LEARNER]
    return to_plain({COMPONENT_RL_MODULE: state[COMPONENT_RL_MODULE], COMPONENT_OPTIMIZER: state[COMPONENT_OPTIMIZER]})


def _train_rl2(cfg, rl: RLConfig, run: RunDir, steps: Optional[int], resume: bool) -> Dict[str, Any]:
    from ray.rllib.core import COMPONENT_LEARNER

    from distmeta.rl import rl2
    from distmeta.rl.baselines import summarize

    ensure_ray(cfg)
    train_tasks, test_tasks = held_out_tasks(rl)
    eval_tasks = test_tasks
    algo = rl2.build_ppo_config(rl, cfg.seed, train_tasks or None).build_algo()
    metrics = MetricsLogger(run.path)
    iteration, env_steps_offset = 0, 0
    curve_x: List[float] = []
    curve_y: List[float] = []
    if resume and run.latest_checkpoint() is not None:
        ckpt = load_checkpoint(run.latest_checkpoint())
        algo.learner_group.set_state({COMPONENT_LEARNER: ckpt["learner"]})
        algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)
        iteration, env_steps_offset = int(ckpt["step"]), int(ckpt["env_steps"])
        curve_x, curve_y = list(ckpt.get("curve_x", [])), list(ckpt.get("curve_y", []))
        metrics.truncate_after(iteration)
        log.info("resumed from %s at iteration %d (%d env steps)", run.latest_checkpoint(), iteration,
                 env_steps_offset)
    max_iters = steps if steps is not None else math.inf
    env_steps = env_steps_offset
    t0, steps0 = time.time(), env_steps
    done_iters = 0
    result: Dict[str, Any] = {}
    while env_steps < rl.env_steps and done_iters < max_iters:
        result = algo.train()
        iteration += 1
        done_iters += 1
        env_steps = env_steps_offset + int(result.get("num_env_steps_sampled_lifetime", 0))
        ret = result.get("env_runners", {}).get("episode_return_mean")
        sps = (env_steps - steps0) / max(time.time() - t0, 1e-9)
        row = {"env_steps": env_steps, "train_trial_return": ret, "env_steps_per_s": sps}
        learner = result.get("learners", {}).get("default_policy", {})
        for key in ("policy_loss", "vf_loss", "entropy"):
            if key in learner:
                row[key] = float(learner[key])
        last = env_steps >= rl.env_steps or done_iters >= max_iters
        if (rl.eval_every and iteration % rl.eval_every == 0) or last:
            returns = rl2.evaluate_module(algo.get_module(), rl, eval_tasks, seed=cfg.seed + 1)
            row["eval_mean_return"] = summarize(returns)["mean_return"]
            curve_x.append(env_steps)
            curve_y.append(row["eval_mean_return"])
        metrics.log(iteration, row)
        if iteration % cfg.log_every == 0 or last:
            log.info("iter %d  env steps %d  trial return %s  eval %s  %.0f steps/s", iteration, env_steps,
                     f"{ret:.3f}" if ret is not None else "-", f"{row.get('eval_mean_return', float('nan')):.3f}",
                     sps)
        if iteration % cfg.checkpoint.every == 0 or last:
            run.save_checkpoint({"learner": _rl2_state(algo), "env_steps": env_steps, "algorithm": "rl2", "config": cfg.to_dict(),
                                 "curve_x": curve_x, "curve_y": curve_y},
                                iteration, keep_last=cfg.checkpoint.keep_last, score=row.get("eval_mean_return"))
    algo.stop()
    metrics.plot()
    metrics.close()
    final = evaluate_rl(run.path)
    plot_curve(run, curve_x, curve_y, {k: v["mean_return"] for k, v in final.get("baselines", {}).items()},
               f"RL^2 on {rl.env} ({rl.rl2.episodes_per_trial} episodes/trial)")
    return {**final, "iterations": iteration, "env_steps": env_steps}


def _load_rl2_module(rl: RLConfig, ckpt: Dict[str, Any]):
    from ray.rllib.core import COMPONENT_RL_MODULE, DEFAULT_MODULE_ID

    from distmeta.rl import rl2

    weights = ckpt["learner"][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID]
    return rl2.module_from_state(rl, {k: torch.as_tensor(v) for k, v in weights.items()})


def _evaluate_rl2(rl: RLConfig, ckpt: Dict[str, Any], tasks, seed: int) -> Dict[str, Any]:
    from distmeta.rl import rl2
    from distmeta.rl.baselines import summarize

    module = _load_rl2_module(rl, ckpt)
    returns = rl2.evaluate_module(module, rl, tasks, seed=seed)
    out = summarize(returns)
    out["baselines"] = _baseline_summaries(rl, tasks, seed)
    for name in ("thompson", "gittins"):
        if name in out["baselines"]:
            out[f"fraction_of_{name}"] = out["mean_return"] / out["baselines"][name]["mean_return"]
    return out


# -- public entry points ---------------------------------------------------------
def train_rl(cfg, run_dir: Union[str, Path, RunDir], steps: Optional[int] = None,
             resume: bool = False) -> Dict[str, Any]:
    """Train the Meta-RL method of ``cfg.rl`` into ``run_dir``; return the final metrics
    (the same object ``evaluate_rl`` returns, plus ``iterations`` and ``env_steps``).
    ``steps`` caps the number of training iterations of this call."""
    _limit_threads()
    rl = parse_rl(cfg.rl)
    run = _open_run(run_dir, cfg)
    if rl.algorithm == "rl2":
        return _train_rl2(cfg, rl, run, steps, resume)
    from distmeta.rl.maml_rl import train_maml

    return train_maml(cfg, rl, run, steps, resume)


def evaluate_rl(run_dir: Union[str, Path, RunDir], episodes: Optional[int] = None) -> Dict[str, Any]:
    """Evaluate a Meta-RL run folder's best (else latest) checkpoint on held-out tasks.

    Returns (and writes to ``eval.json``) one JSON object: ``mean_return`` (mean total return
    per held-out task: a whole trial for RL^2, post-adaptation for MAML-RL), ``ci95``, ``tasks``,
    ``baselines`` (name -> {mean_return, ci95}) and, for RL^2, ``mean_return_by_episode`` (the
    adaptation curve over episode index in a trial); for MAML-RL ``mean_return_by_inner_steps``.
    ``episodes`` overrides the number of held-out tasks.
    """
    from distmeta.config import _build, ExperimentConfig

    _limit_threads()
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    cfg = _build(ExperimentConfig, run.config_dict(), "")
    rl = parse_rl(cfg.rl)
    best = run.checkpoints / "best.pt"
    ckpt = load_checkpoint(best if best.exists() else run.path)
    _, tasks = held_out_tasks(rl, episodes)
    seed = cfg.seed + 1
    if rl.algorithm == "rl2":
        out = _evaluate_rl2(rl, ckpt, tasks, seed)
    else:
        from distmeta.rl.maml_rl import evaluate_maml_checkpoint

        ckpt["_run_path"] = str(run.path)
        out = evaluate_maml_checkpoint(rl, ckpt, tasks, seed)
    out = {"algorithm": rl.algorithm, "env": rl.env, "checkpoint_step": int(ckpt["step"]), **out}
    run.write_json("eval.json", out)
    return out
