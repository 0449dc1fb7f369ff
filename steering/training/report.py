"""The training report: one JSON file and one PNG of the training curves.

`write_report` gathers the training config, the harvest metadata (tokens/s),
the training log (one row per `log_every` steps: loss, L0, variance explained
on the batch, dead fraction, lr, tokens/s) and any evaluation results into
report.json, and plots loss, L0, variance explained and dead fraction against
training tokens into training_curves.png (matplotlib, Agg backend).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def plot_curves(log: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "loss (MSE / d + aux)", "log"), ("l0", "L0 (batch)", "linear"),
              ("variance_explained", "variance explained (batch)", "linear"), ("dead_fraction", "dead fraction", "linear")]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    tokens = [row["tokens"] / 1e6 for row in log]
    for ax, (key, name, scale) in zip(axes.flat, panels):
        ax.plot(tokens, [row[key] for row in log], lw=1)
        ax.set_title(name)
        ax.set_xlabel("training tokens (M)")
        ax.set_yscale(scale)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(run_dir: str | Path, *, config: dict[str, Any], log: list[dict[str, Any]],
                 harvest: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, title: str = "") -> dict[str, Any]:
    """Write run_dir/report.json and run_dir/training_curves.png; returns the report."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    last = log[-1] if log else {}
    report = {
        "config": config,
        "final_batch_metrics": last,
        "training_tokens_per_s": last.get("tokens_per_s"),
        "harvest": harvest or {},
        "harvest_tokens_per_s": (harvest or {}).get("harvest_tokens_per_s"),
        "evaluation": evaluation or {},
        **(extra or {}),
        "log": log,
    }
    (run / "report.json").write_text(json.dumps(report, indent=2))
    if log:
        plot_curves(log, run / "training_curves.png", title)
    return report
