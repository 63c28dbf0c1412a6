"""Learning-curve plots of the Meta-RL methods (matplotlib, Agg backend).

:func:`plot_curve` draws the mean evaluation return against env steps with the
same-run baselines as dashed horizontal lines; a baseline far outside the
curve's range (more than 3 spans away) is named in the legend with its value
instead of being drawn, so it does not flatten the curve.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence


def plot_curve(path: Path, xs: Sequence[float], ys: Sequence[float], baselines: Dict[str, float], title: str,
               ylabel: str = "mean validation return", label: str = "agent") -> Optional[Path]:
    """Write the curve to ``path`` (a .png); None (nothing written) without points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not len(xs):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o", label=label)
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
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
