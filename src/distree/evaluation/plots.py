"""Figures written by ``distree eval``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_policy_curves(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy vs computation (fraction of full execution) of every policy on one figure."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for policy in dict.fromkeys(r["policy"] for r in rows):
            pts = sorted((1 - r["saving"], r["accuracy"] * 100) for r in rows if r["policy"] == policy)
            xs, ys = zip(*pts)
            style = "o" if len(pts) == 1 else "-"
            ax.plot(xs, ys, style, label=policy, markersize=7 if len(pts) == 1 else 3)
        ax.set_xlabel("mean computation (fraction of full execution MACs)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
