"""What the Meta-RL methods share: task splits, checkpoint-safe values, same-run
baselines, paired comparisons with them, success rates and the held-out return
curve (``rl_curve.png``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from distmeta.schema import RLConfig


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


def rl_tasks(rl: RLConfig, n_val: int, n_test: int):
    """``(train, val, test)`` task lists of a Meta-RL experiment (disjoint; see ``task_splits``)."""
    from distmeta.envs import make, task_splits

    return task_splits(make(rl.env, **rl.env_config), rl.train_tasks, n_val, n_test, rl.task_seed)


def run_tasks(cfg):
    """``rl_tasks`` at the run's evaluation sizes (``eval.episodes`` validation, ``eval.final_episodes``
    test tasks). Every split is drawn at once, so a task distribution too small for them fails
    here, before Ray starts."""
    return rl_tasks(cfg.rl, cfg.eval.episodes, cfg.eval.final_episodes)


def plot_curve(run_dir: Path, xs: List[float], ys: List[float], baselines: Dict[str, float], title: str,
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
    out = Path(run_dir) / "rl_curve.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def baseline_returns(rl: RLConfig, tasks, seed: int) -> Dict[str, np.ndarray]:
    """The same-run baselines' returns per (task, episode index) on exactly ``tasks`` ({} when
    ``rl.baselines`` is off or the env has none)."""
    from distmeta.rl.baselines import baselines_for

    if not rl.baselines:
        return {}
    return baselines_for(rl.env, tasks, rl.rl2.episodes_per_trial, rl.env_config, seed)


def baseline_summaries(rl: RLConfig, tasks, seed: int,
                       returns: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, Dict[str, Any]]:
    """Mean total return, its 95 % CI and the per-episode curve of every baseline (``returns``:
    precomputed :func:`baseline_returns` on the same tasks)."""
    from distmeta.rl.baselines import summarize

    if returns is None:
        returns = baseline_returns(rl, tasks, seed)
    out = {}
    for name, r in returns.items():
        s = summarize(r)
        out[name] = {"mean_return": s["mean_return"], "ci95": s["ci95"],
                     "mean_return_by_episode": s["mean_return_by_episode"]}
    return out


def paired_difference(a: np.ndarray, b: np.ndarray) -> Dict[str, Any]:
    """Agent minus a baseline on the same tasks: mean of d_i = a_i - b_i, its standard error
    s_d / sqrt(n), the 95 % CI half-width and the mean in standard errors (d / se)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    mean = float(d.mean())
    return {"mean_difference": mean, "se": se, "ci95": 1.96 * se, "standard_errors": mean / se if se > 0 else
            float("nan"), "tasks": int(len(d))}


def ratio_of_means(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    """``mean(a) / mean(b)`` for paired per-task values, with a 95 % CI half-width by the delta
    method: se = sd(a_i - f b_i) / (sqrt(n) |mean(b)|), f the ratio."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    f = float(a.mean() / b.mean())
    n = len(a)
    se = float((a - f * b).std(ddof=1) / (np.sqrt(n) * abs(b.mean()))) if n > 1 else float("nan")
    return {"fraction": f, "ci95": 1.96 * se, "se": se}


def totals(returns: np.ndarray) -> np.ndarray:
    """Total return per task of per-task (1-D) or per (task, episode) (2-D) returns."""
    r = np.asarray(returns, dtype=np.float64)
    return r.sum(axis=1) if r.ndim == 2 else r


def success_summary(success: np.ndarray) -> Dict[str, Any]:
    """RL^2 trials on an env that reports ``info["success"]`` (Meta-World): ``success [task,
    episode]`` (1: ``success`` true at some step of that episode). ``success_rate``: the fraction of
    all episodes that succeeded (mean over trials of each trial's fraction), with its 95 % CI over
    trials; ``success_rate_last_episode``: the fraction of trials whose last episode succeeded;
    ``success_rate_by_episode``: per episode index within the trial."""
    s = np.asarray(success, dtype=np.float64)
    per_trial = s.mean(axis=1)
    n = len(per_trial)
    se = float(per_trial.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"success_rate": float(per_trial.mean()), "success_rate_ci95": 1.96 * se,
            "success_rate_last_episode": float(s[:, -1].mean()),
            "success_rate_by_episode": [float(x) for x in s.mean(axis=0)]}
