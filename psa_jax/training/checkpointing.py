"""Checkpoints with orbax's `CheckpointManager`: async, resumable, best-N by a metric.

Layout of `WORKDIR/checkpoints/<step>/`:

| item | what | written by |
| --- | --- | --- |
| `model` | `nnx.state(model)`: parameters and BatchNorm statistics | train.py, `python -m psa_jax.tools.convert` |
| `opt` | `nnx.state(optimizer)`: step count and moments | train.py |
| `data` | the grain iterator position of this process | train.py |
| `meta` | JSON: the config, step, metrics, provenance | all |

`eval.py` restores `model` alone, so converted PyTorch checkpoints (which have no `opt`/`data`)
evaluate like trained ones. Restoring takes abstract target arrays carrying the *current* mesh's
shardings, so a checkpoint written on one topology restores onto another. orbax writes each step
into a temporary directory and renames it when complete: a crash mid-save leaves the previous
checkpoints intact and the partial one is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

__all__ = ["Checkpointer", "CheckpointError", "abstract_like"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message says which and what to do."""


def abstract_like(state: Any, shardings: Any | None = None) -> Any:
    """`jax.ShapeDtypeStruct`s of `state`, with `shardings` (a matching tree) or each array's own."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                            state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


class Checkpointer:
    """Saves and restores training state under `directory`.

    Args:
      directory: e.g. `WORKDIR/checkpoints` (created if needed; local or gs://).
      keep_latest: most recent checkpoints kept.
      keep_best: best checkpoints kept by `best_metric` (0: none).
      best_metric: metric name in the dict passed to `save` (e.g. 'AP', 'mIoU').
      best_mode: 'max' or 'min'.
      async_save: write in a background thread (`wait()` before reading or exiting).
    """

    def __init__(self, directory: str | os.PathLike, *, keep_latest: int = 2, keep_best: int = 1,
                 best_metric: str | None = None, best_mode: str = "max", async_save: bool = True):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode={best_mode!r} must be 'max' or 'min'")
        directory = os.fspath(directory)
        if "://" not in directory:  # local: orbax's tensorstore specs need absolute paths
            directory = os.path.abspath(directory)
        self.directory = epath.Path(directory)
        self.best_metric = best_metric
        policies = [ocp.checkpoint_managers.LatestN(max(keep_latest, 1))]
        if best_metric and keep_best > 0:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min", n=keep_best))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=(lambda m: m[best_metric]) if best_metric else None,
            best_mode=best_mode,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    # ------------------------------------------------------------------ queries
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def resolve(self, step: int | str | None) -> int:
        """'latest' / None, 'best' or an integer -> an existing step (clear error if none)."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}: train first, or convert a PyTorch "
                                  "checkpoint with `python -m psa_jax.tools.convert SRC.pth WORKDIR --config CONFIG`")
        if step in (None, "latest"):
            return self.latest_step()
        if step == "best":
            best = self.best_step()
            return best if best is not None else self.latest_step()
        step = int(step)
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; available: {sorted(steps)}")
        return step

    # ------------------------------------------------------------------ save / restore
    def save(self, step: int, *, model: Any, opt: Any | None = None, data_iter: Any | None = None,
             meta: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None) -> None:
        """Starts saving `step` (asynchronously). `metrics` must hold `best_metric` when best-N is on."""
        if self.best_metric and (metrics is None or self.best_metric not in metrics):
            raise ValueError(f"checkpoint metrics must include {self.best_metric!r} (got {dict(metrics or {})})")
        items = {"model": ocp.args.StandardSave(model),
                 "meta": ocp.args.JsonSave(dict(meta or {}, step=int(step), metrics=dict(metrics or {})))}
        if opt is not None:
            items["opt"] = ocp.args.StandardSave(opt)
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(int(step), args=ocp.args.Composite(**items),
                          metrics={k: float(v) for k, v in (metrics or {}).items()}, force=True)

    def restore(self, step: int | str | None, *, model: Any, opt: Any | None = None,
                data_iter: Any | None = None) -> dict[str, Any]:
        """Restores the requested items of `step` ('latest', 'best' or an int).

        Args:
          model, opt: abstract targets (`abstract_like(state, shardings)`) giving shapes, dtypes and
            the shardings to restore onto.
          data_iter: a grain iterator to set to the saved position (in place).
        Returns:
          {'step', 'model', 'opt' (if asked), 'meta'}.
        """
        step = self.resolve(step)
        items = {"model": ocp.args.StandardRestore(model), "meta": ocp.args.JsonRestore()}
        if opt is not None:
            items["opt"] = ocp.args.StandardRestore(opt)
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # orbax raises many types; name the checkpoint and the way out
            raise CheckpointError(
                f"could not restore {', '.join(items)} from {self.directory / str(step)}: "
                f"{type(err).__name__}: {err}\nThe checkpoint may be damaged or written for another model "
                "configuration (width, attention, num_classes). Delete that step directory to fall back to "
                "an earlier one, or pass another step.") from err
        out = {"step": step, "model": restored["model"], "meta": restored["meta"]}
        if opt is not None:
            out["opt"] = restored["opt"]
        return out

    def wait(self) -> None:
        """Blocks until async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
