"""What the Meta-RL methods share: task splits, checkpoint-safe values, same-run
baselines and the held-out return curve (``rl_curve.png``)."""
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


def baseline_summaries(rl: RLConfig, tasks, seed: int) -> Dict[str, Dict[str, Any]]:
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
