"""Training curves: JSON lines in WORKDIR/metrics.jsonl and a PNG a person can look at.

Each line is `{"kind": "train"|"eval", "step": int, "time": float, <metric>: value, ...}`. The
plot (`WORKDIR/curves.png`) shows the loss (log scale), the learning rate and every evaluation
metric against the step. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax

__all__ = ["MetricsLog", "read_metrics", "plot_curves"]


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (missing file: empty list)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
    """Appends metric records to WORKDIR/metrics.jsonl (resumed runs keep appending)."""

    def __init__(self, workdir: str | os.PathLike):
        self.path = os.path.join(os.fspath(workdir), "metrics.jsonl")
        self.enabled = jax.process_index() == 0
        if self.enabled:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def write(self, kind: str, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), "time": time.time()}
        for k, v in metrics.items():
            try:
                record[k] = float(v)
            except (TypeError, ValueError):
                continue
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self, out_path: str | os.PathLike | None = None, title: str = "") -> str | None:
        if not self.enabled:
            return None
        return plot_curves(self.path, out_path or os.path.join(os.path.dirname(self.path), "curves.png"), title)


def plot_curves(metrics_path: str | os.PathLike, out_path: str | os.PathLike, title: str = "") -> str | None:
    """Writes loss / learning-rate / evaluation curves as a PNG; returns its path (None: no data)."""
    records = read_metrics(metrics_path)
    train = [r for r in records if r["kind"] == "train" and math.isfinite(r.get("loss", float("nan")))]
    evals = [r for r in records if r["kind"] == "eval"]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eval_keys = sorted({k for r in evals for k in r if k not in ("kind", "step", "time")
                        and "/" not in k and not k.startswith("num_")})[:4]
    panels = 2 + len(eval_keys)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], lw=1.2)
    axes[0].set_yscale("log")
    axes[0].set_title("training loss")
    axes[1].plot(steps, [r.get("lr", float("nan")) for r in train], lw=1.2, color="tab:orange")
    axes[1].set_title("learning rate")
    for ax, key in zip(axes[2:], eval_keys):
        pts = [(r["step"], r[key]) for r in evals if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="tab:green")
        ax.set_title(f"eval {key}")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    # Fixed margins (in inches) instead of tight_layout, which measures every tick label and is
    # slow on a busy host.
    width = 4.2 * panels
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.16, top=0.8 if title else 0.88,
                        wspace=0.3)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return os.fspath(out_path)
