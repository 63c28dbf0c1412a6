"""Plots a person would rather look at than read: learning curves for every run,
where a Ray meta-step's time goes and, for sinusoid regression, adapted curves
against the true function."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch


def plot_curves(logger, method, title: str = "") -> Optional[Path]:
    """``learning_curves.png``: one panel per training metric the method reports, its
    validation score and its throughput, against the iteration. Validation points are
    marked; a curve with few points is drawn with markers so that no panel is a lone dot."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    keys = list(method.progress_keys) + [f"val_{method.score_key}", f"{method.work_unit}_per_s"]
    keys = [k for k in dict.fromkeys(keys) if logger.series(k)[0]]
    if not keys:
        return None
    cols = min(3, len(keys))
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(4.5 * cols, 3.2 * math.ceil(len(keys) / cols)),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys):
        xs, ys = logger.series(key)
        is_val = key.startswith("val_")
        ax.plot(xs, ys, marker="o" if is_val or len(xs) < 30 else None, ms=4, color="C1" if is_val else "C0",
                label="validation" if is_val else "training (window mean)")
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5, integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = logger.path.parent / "learning_curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


STEP_PARTS = [("compute", "compute (mean worker)"), ("wait", "wait (slowest worker, re-runs)"),
              ("transfer", "transfer (parameters, calls, gradients)"), ("learner", "learner (apply)")]


def plot_step_time(rows, out: Path, title: str = "") -> Optional[Path]:
    """Where a meta-step's time went on a Ray run: stacked ms per step of compute, wait,
    transfer and the learner's own work (``time_*_s`` in metrics.csv, each the mean over
    the steps since the previous log line). None for in-process runs, which log no transfer."""
    rows = [r for r in rows if r.get("time_transfer_s") not in (None, "")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [int(float(r["step"])) for r in rows]
    ms = [[1e3 * float(r.get(f"time_{key}_s") or 0.0) for r in rows] for key, _ in STEP_PARTS]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if len(xs) > 1:
        ax.stackplot(xs, *ms, labels=[label for _, label in STEP_PARTS], alpha=0.85)
    else:  # one log line: a stacked bar
        bottom = 0.0
        for (_, label), part in zip(STEP_PARTS, ms):
            ax.bar(xs, part, bottom=bottom, label=label, alpha=0.85)
            bottom += part[0]
    ax.set_xlabel("meta-step")
    ax.set_ylabel("ms per meta-step (mean)")
    ax.set_title(f"{title}: where a meta-step's time goes" if title else "where a meta-step's time goes")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_sinusoid_fits(core, flat_params, out: Path, n_tasks: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = {k: v.detach() for k, v in core.params_from_flat(flat_params).items()}
    algo, model, buffers = core.algorithm, core.model, core.buffers
    fig, axes = plt.subplots(1, n_tasks, figsize=(4 * n_tasks, 3.2), squeeze=False)
    for ax, task in zip(axes[0], core.make_tasks("test", 0, range(n_tasks))):
        steps = algo.eval_inner_steps()
        state = algo.adapt(model, params, buffers, task["support_x"], task["support_y"], steps)
        with torch.no_grad():
            x = task["query_x"]
            before = algo.predict(model, params, buffers, params, x)
            after = algo.predict(model, params, buffers, state, x)
        xs = x.squeeze(-1).cpu().numpy()
        ax.plot(xs, task["query_y"].squeeze(-1).cpu().numpy(), "k-", label="true")
        ax.plot(xs, before.squeeze(-1).cpu().numpy(), "--", color="tab:gray", label="before adaptation")
        ax.plot(xs, after.squeeze(-1).cpu().numpy(), "-", color="tab:red", label=f"after {steps} step(s)")
        ax.scatter(task["support_x"].squeeze(-1).cpu().numpy(), task["support_y"].squeeze(-1).cpu().numpy(),
                   marker="^", color="tab:blue", zorder=3, label="support")
        ax.set_xlabel("x")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
