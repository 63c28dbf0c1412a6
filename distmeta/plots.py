"""Plots a person would rather look at than read: learning curves for every run
and, for sinusoid regression, adapted curves against the true function."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def plot_run(cfg, core, learner, run, logger) -> None:
    # for regression the training "mse" is the loss itself: plot it once
    train_keys = ["loss", "accuracy", "pair_accuracy"]
    logger.plot(train_keys + ["val_accuracy", "val_mse", "tasks_per_s"], title=cfg.name)
    if cfg.task.kind == "sinusoid":
        plot_sinusoid_fits(core, learner.flat_params(), run.path / "sinusoid_fits.png")


def plot_sinusoid_fits(core, flat_params, out: Path, n_tasks: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = {k: v.detach() for k, v in core.params_from_flat(flat_params).items()}
    algo, model, buffers = core.algorithm, core.model, core.buffers
    fig, axes = plt.subplots(1, n_tasks, figsize=(4 * n_tasks, 3.2), squeeze=False)
    for ax, task in zip(axes[0], core.make_tasks("test", 0, range(n_tasks))):
        steps = algo.cfg.eval_inner_steps or algo.cfg.inner_steps
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
