"""Training curves: JSON lines in WORKDIR/metrics.jsonl, TensorBoard event files and a PNG a person can look at.

Each line of `WORKDIR/metrics.jsonl` is `{"kind": "train"|"eval", "step": int, "time": float, <metric>: value,
...}`; the same numbers go to TensorBoard event files under `WORKDIR/tensorboard/` as scalars tagged
`"<kind>/<metric>"` (`psa_jax.training.tensorboard`, no TensorFlow needed). The plot
(`WORKDIR/curves.png`) shows the loss (log scale), the learning rate and every evaluation metric against
the step. Only process 0 writes. All file access goes through `etils.epath`, so WORKDIR may be a
`gs://bucket/run` path (each record is appended with mode 'a', which epath's TensorFlow gfile backend,
its choice for `gs://` when TensorFlow is installed, supports).

A resumed run (`MetricsLog(workdir, resume_step=s)`, s = the restored checkpoint's step) first drops the
records with step > s that the interrupted run had logged after its last checkpoint, so no step is
logged twice across the interruption; its new event file starts with a `SessionLog START` at step s + 1, on which
TensorBoard discards the older files' events with step >= s + 1 (`tensorboard.SummaryWriter`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

import jax
from etils import epath

from psa_jax.training.tensorboard import SummaryWriter

__all__ = ["MetricsLog", "drop_records_after", "plot_curves", "read_metrics"]

logger = logging.getLogger(__name__)


def _parse_lines(text: str, path: epath.Path) -> list[tuple[str, dict[str, Any] | None]]:
    """(line, record or None when the line is not a JSON object, e.g. cut short by a crash)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "step" not in record or "kind" not in record:
            logger.warning("%s: skipping a line that is not a metrics record: %.80r", path, line)
            record = None
        out.append((line, record))
    return out


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl, local or `gs://` (missing file: empty list).

    Lines that are not complete records (e.g. the last line of a run killed while writing it) are
    skipped with a warning.
    """
    path = epath.Path(path)
    if not path.exists():
        return []
    return [r for _, r in _parse_lines(path.read_text(), path) if r is not None]


def drop_records_after(path: str | os.PathLike, step: int, *, redo_kinds: Sequence[str] = ()) -> int:
    """Removes the records with `"step" > step`, those at `step` whose kind is in `redo_kinds`, and
    unreadable lines from a metrics.jsonl.

    The kept lines are written unchanged to `<path>.tmp`, which then replaces `path`: a crash leaves
    either the old or the new file, never a partial one. Nothing is written when nothing is dropped.

    Returns:
      the number of lines dropped (0 for a missing file).
    """
    path = epath.Path(path)
    if not path.exists():
        return 0
    redo = set(redo_kinds)
    lines = _parse_lines(path.read_text(), path)
    kept = [line for line, r in lines
            if r is not None and (int(r["step"]) < step or (int(r["step"]) == step and r["kind"] not in redo))]
    dropped = len(lines) - len(kept)
    if dropped:
        tmp = path.parent / (path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
        logger.info("%s: dropped %d record(s) after step %d (logged after the last checkpoint)", path, dropped,
                    step)
    return dropped


class MetricsLog:
    """Appends metric records to WORKDIR/metrics.jsonl and WORKDIR/tensorboard/ event files (process 0).

    Args:
      workdir: the run's folder, local or `gs://...`; created if missing.
      resume_step: the step training restarts after (the restored checkpoint's step; 0 for a run
        that starts from scratch in a folder that may hold an older attempt's records). Records with
        a larger step are dropped once, here, and TensorBoard is told to forget them (see module
        docstring). None: keep everything (no resume bookkeeping).
      redo_kinds: kinds that this run writes again at `resume_step` itself (e.g. `("eval",)` when a
        run that stopped between its last checkpoint and its final evaluation redoes that evaluation):
        their records at `resume_step` are dropped too, and the TensorBoard purge starts at
        `resume_step` (TensorBoard purges by step, so it also hides the other tags' points at that step).
      tensorboard: also write TensorBoard event files.

    Call `close()` (or use `with`) at the end so the last TensorBoard records reach the file.
    """

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None,
                 redo_kinds: Sequence[str] = (), tensorboard: bool = True):
        self.workdir = epath.Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self.tensorboard_dir = self.workdir / "tensorboard"
        self.enabled = jax.process_index() == 0
        self.dropped = 0
        self._tb: SummaryWriter | None = None
        if not self.enabled:
            return
        if resume_step is not None and int(resume_step) < 0:
            raise ValueError(f"resume_step must be >= 0 (the restored checkpoint's step), got {resume_step}")
        if isinstance(redo_kinds, str):
            raise TypeError(f"redo_kinds is a sequence of kinds, e.g. ('eval',), got the string {redo_kinds!r}")
        if redo_kinds and resume_step is None:
            raise ValueError(f"redo_kinds={tuple(redo_kinds)} needs resume_step (the step they are redone at)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        start_step = None
        if resume_step is not None:
            self.dropped = drop_records_after(self.path, int(resume_step), redo_kinds=redo_kinds)
            start_step = int(resume_step) + (0 if redo_kinds else 1)
        if tensorboard:
            self._tb = SummaryWriter(self.tensorboard_dir, start_step=start_step)

    def write(self, kind: str, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends `{"kind", "step", "time", **numbers}`; values that are not numbers are left out."""
        if not self.enabled:
            return
        record: dict[str, Any] = {"kind": kind, "step": int(step), "time": time.time()}
        numbers = {}
        for k, v in metrics.items():
            try:
                numbers[k] = float(v)
            except (TypeError, ValueError):
                continue
        record.update(numbers)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            self._tb.scalars(int(step), {f"{kind}/{k}": v for k, v in numbers.items()}, wall_time=record["time"])

    def flush(self) -> None:
        """Pushes buffered TensorBoard records to their file (metrics.jsonl is written at each `write`)."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the TensorBoard file (idempotent)."""
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def plot(self, out_path: str | os.PathLike | None = None, title: str = "") -> str | None:
        """`plot_curves` of this log to `out_path` (default WORKDIR/curves.png); also flushes TensorBoard."""
        if not self.enabled:
            return None
        self.flush()
        return plot_curves(self.path, out_path or self.workdir / "curves.png", title)


def plot_curves(metrics_path: str | os.PathLike, out_path: str | os.PathLike, title: str = "") -> str | None:
    """Writes loss / learning-rate / evaluation curves as a PNG (local or `gs://`); returns its path (None: no data)."""
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
    out_path = epath.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
    return os.fspath(out_path)
