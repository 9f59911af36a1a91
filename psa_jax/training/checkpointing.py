"""Checkpoints with orbax's `CheckpointManager`: async, resumable, best-N by a metric.

Layout of `WORKDIR/checkpoints/<step>/`:

| item | what | written by |
| --- | --- | --- |
| `model` | `nnx.state(model)`: parameters and BatchNorm statistics | train.py, `python -m psa_jax.tools.convert` |
| `opt` | `nnx.state(optimizer)`: step count and moments | train.py |
| `ema` | the exponential moving average of the model state (`config.ema_decay > 0`) | train.py |
| `data` | the grain iterator position of this process | train.py |
| `meta` | JSON: the config, step, metrics, provenance | all |

`eval.py` restores `model` alone, so converted PyTorch checkpoints (which have no `opt`/`data`)
evaluate like trained ones. Restoring takes abstract target arrays carrying the *current* mesh's
shardings, so a checkpoint written on one topology restores onto another. orbax writes each step
into a temporary directory and renames it when complete: a crash mid-save leaves the previous
checkpoints intact and the partial one is ignored.

`restore('latest' | 'best' | None, ...)` falls back to the next newest readable step when the one
asked for cannot be read (damaged or missing files, an item it lacks), with a WARNING naming the
damaged step directory and the step used; an explicit integer step never falls back. A
`Checkpointer(..., read_only=True)` (eval.py) never creates, saves into or deletes anything.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Self

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from psa_jax.runtime.entry_point import register_cleanup

__all__ = ["STEP_FORMS", "CheckpointError", "Checkpointer", "abstract_like", "close_all", "parse_step"]

logger = logging.getLogger("psa_jax.checkpoint")

# What `--step` / `restore(step)` accept.
STEP_FORMS = "'best', 'latest' or a step number (an integer >= 0)"

HOW_TO_GET_A_CHECKPOINT = (
    "train one with `python train.py --config=CONFIG --workdir=WORKDIR`, or convert a PyTorch checkpoint with "
    "`python -m psa_jax.tools.convert SRC.pth WORKDIR --config=CONFIG`")


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message says which and what to do."""


def abstract_like(state: Any, shardings: Any | None = None) -> Any:
    """`jax.ShapeDtypeStruct`s of `state`, with `shardings` (a matching tree) or each array's own."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                            state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def parse_step(step: int | str | None) -> int | str:
    """`None`/'latest' -> 'latest', 'best' -> 'best', an integer or its digits -> that int; anything
    else is a ValueError listing the accepted forms (`STEP_FORMS`)."""
    if step is None:
        return "latest"
    if isinstance(step, int) and not isinstance(step, bool):  # True is not step 1
        if step < 0:
            raise ValueError(f"step={step} is negative; use {STEP_FORMS}")
        return step
    text = str(step).strip().lower()
    if text in ("latest", "best"):
        return text
    if re.fullmatch(r"\+?\d+", text):
        return int(text)
    raise ValueError(f"step={step!r} is not {STEP_FORMS}")


def _short(err: BaseException, limit: int = 300) -> str:
    """`Type: message` of `err` on one line, without tensorstore's spec dumps, at most `limit` characters."""
    text = " ".join(str(err).split())
    text = re.split(r" \[tensorstore_spec", text)[0]
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{type(err).__name__}: {text}"


def _is_closed_loop_callback(exc: BaseException | None, tb: Any) -> bool:
    """Whether `exc` is asyncio's 'Event loop is closed' raised by `_check_closed` (the last frame)."""
    if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed" or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_name == "_check_closed"


def _drop_closed_loop_callbacks() -> None:
    """Installs (once) a `sys.unraisablehook` that drops asyncio's 'Event loop is closed' errors
    and passes everything else to the hook it replaces.

    When one array of a checkpoint cannot be read, orbax's restore ends its event loop with that
    error while tensorstore still completes the other reads; each completion then calls
    `loop.call_soon_threadsafe` on the closed loop from a tensorstore thread, and Python prints
    that RuntimeError as unraisable: one traceback per pending array (hundreds for a W32), often
    after the real error. They carry no information, so they are dropped.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_psa_jax_drops_closed_loop", False):
        return

    def hook(unraisable):
        if not _is_closed_loop_callback(unraisable.exc_value, unraisable.exc_traceback):
            previous(unraisable)

    hook._psa_jax_drops_closed_loop = True
    sys.unraisablehook = hook
    # The same reads, when their futures are garbage-collected (often at exit, after the run's
    # error line), make asyncio log "Future exception was never retrieved" with tensorstore's spec.
    logging.getLogger("asyncio").addFilter(_drop_unretrieved_future_records)


def _drop_unretrieved_future_records(record: logging.LogRecord) -> bool:
    """A logging filter: False (drop) for asyncio's 'Future exception was never retrieved' records."""
    return not str(record.msg).startswith("Future exception was never retrieved")


class Checkpointer:
    """Saves and restores training state under `directory`.

    Args:
      directory: e.g. `WORKDIR/checkpoints` (created if needed unless `read_only`; local or gs://).
      keep_latest: most recent checkpoints kept.
      keep_best: best checkpoints kept by `best_metric` (0: none).
      best_metric: metric name in the dict passed to `save` (e.g. 'AP', 'mIoU').
      best_mode: 'max' or 'min'.
      async_save: write in a background thread (`wait()` before reading or exiting).
      read_only: only read (eval.py): the directory must exist and hold a checkpoint (a
        CheckpointError saying how to make one otherwise), nothing is created, saved or deleted.
    """

    def __init__(self, directory: str | os.PathLike, *, keep_latest: int = 2, keep_best: int = 1,
                 best_metric: str | None = None, best_mode: str = "max", async_save: bool = True,
                 read_only: bool = False):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode={best_mode!r} must be 'max' or 'min'")
        directory = os.fspath(directory)
        if "://" not in directory:  # local: orbax's tensorstore specs need absolute paths
            directory = os.path.abspath(directory)
        self.directory = epath.Path(directory)
        self.best_metric = best_metric
        self.read_only = read_only
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory {self.directory} (nothing was created): "
                                  f"{HOW_TO_GET_A_CHECKPOINT}")
        policies = [ocp.checkpoint_managers.LatestN(max(keep_latest, 1))]
        if best_metric and keep_best > 0:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min", n=keep_best))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=None if read_only else ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=(lambda m: m[best_metric]) if best_metric else None,
            best_mode=best_mode,
            enable_async_checkpointing=async_save and not read_only,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            read_only=read_only,
        )
        _drop_closed_loop_callbacks()
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._unreadable: set[int] = set()  # steps `restore` could not read (replaced when saved again)
        self._closed = False
        _OPEN.add(self)

    # ------------------------------------------------------------------ queries
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def _no_checkpoint(self) -> CheckpointError:
        return CheckpointError(f"no checkpoint in {self.directory}: {HOW_TO_GET_A_CHECKPOINT}")

    def resolve(self, step: int | str | None) -> int:
        """'latest' / None, 'best' or an integer -> an existing step (clear error if none).
        'best' is the latest step when no step has the metric."""
        steps = self.all_steps()
        try:
            step = parse_step(step)
        except ValueError as err:
            raise CheckpointError(f"{err}; available steps in {self.directory}: {steps or 'none'}") from None
        if not steps:
            raise self._no_checkpoint()
        if step == "latest":
            return steps[-1]
        if step == "best":
            best = self.best_step()
            return best if best is not None else steps[-1]
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; available steps: {steps} "
                                  f"(or ask for {STEP_FORMS})")
        return step

    def candidates(self, step: int | str | None) -> list[int]:
        """The steps `restore(step)` tries, in order: the resolved step, then (for 'latest'/'best'
        only) every other step, newest first."""
        first = self.resolve(step)
        if isinstance(parse_step(step), int):
            return [first]
        return [first] + [s for s in reversed(self.all_steps()) if s != first]

    # ------------------------------------------------------------------ save / restore
    def save(self, step: int, *, model: Any, opt: Any | None = None, ema: Any | None = None,
             data_iter: Any | None = None, meta: Mapping[str, Any] | None = None,
             metrics: Mapping[str, float] | None = None) -> None:
        """Starts saving `step` (asynchronously). `metrics` must hold `best_metric` when best-N is on.
        A step that `restore` found unreadable (the run fell back to an earlier one) is replaced."""
        if self.read_only:
            raise CheckpointError(f"this Checkpointer of {self.directory} is read-only; step {step} was not saved")
        if self.best_metric and (metrics is None or self.best_metric not in metrics):
            raise ValueError(f"checkpoint metrics must include {self.best_metric!r} (got {dict(metrics or {})})")
        if int(step) in self._unreadable and int(step) in self.all_steps():
            # a run resumed from an earlier step reached a step whose checkpoint `restore` found damaged
            logger.warning("replacing the unreadable checkpoint %s", self.directory / str(int(step)))
            self.manager.delete(int(step))
            self._unreadable.discard(int(step))
        items = {"model": ocp.args.StandardSave(model),
                 "meta": ocp.args.JsonSave(dict(meta or {}, step=int(step), metrics=dict(metrics or {})))}
        if opt is not None:
            items["opt"] = ocp.args.StandardSave(opt)
        if ema is not None:
            items["ema"] = ocp.args.StandardSave(ema)
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(int(step), args=ocp.args.Composite(**items),
                          metrics={k: float(v) for k, v in (metrics or {}).items()}, force=True)

    def restore(self, step: int | str | None, *, model: Any, opt: Any | None = None, ema: Any | None = None,
                data_iter: Any | None = None) -> dict[str, Any]:
        """Restores the requested items of `step` ('latest', 'best', None (= 'latest') or an int).

        'latest' / 'best' / None: when that step cannot be read (damaged or missing files, a
        missing item, a corrupt `meta`), the next newest step is tried, and so on; each failure is a
        WARNING naming the step directory, and the step finally used is logged. An integer step
        is restored as asked or raises CheckpointError.

        Args:
          model, opt, ema: abstract targets (`abstract_like(state, shardings)`) giving shapes, dtypes
            and the shardings to restore onto (`opt`, `ema`: only if given).
          data_iter: a grain iterator to set to the saved position (in place).
        Returns:
          {'step', 'model', 'opt' and 'ema' (if asked), 'meta'}.
        """
        requested = step
        items = {"model": ocp.args.StandardRestore(model), "meta": ocp.args.JsonRestore()}
        if opt is not None:
            items["opt"] = ocp.args.StandardRestore(opt)
        if ema is not None:
            items["ema"] = ocp.args.StandardRestore(ema)
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        failures: list[tuple[int, str]] = []
        for candidate in self.candidates(requested):
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(**items))
            except Exception as err:  # noqa: BLE001 - orbax/tensorstore raise many types; all mean "unreadable"
                failures.append((candidate, _short(err)))
                self._unreadable.add(candidate)
                logger.warning("checkpoint %s is unreadable (%s)", self.directory / str(candidate), failures[-1][1])
                continue
            if failures:
                logger.warning("restored step %d instead of the %s step %d: %s could not be read",
                               candidate, parse_step(requested), failures[0][0],
                               ", ".join(str(self.directory / str(s)) for s, _ in failures))
            out = {"step": candidate, "model": restored["model"], "meta": restored["meta"]}
            for name in ("opt", "ema"):
                if name in items:
                    out[name] = restored[name]
            return out
        tried = "; ".join(f"step {s}: {e}" for s, e in failures)
        if isinstance(parse_step(requested), int):
            advice = (f"Pass another step ({STEP_FORMS}; available: {self.all_steps()}), or --step=latest to "
                      "fall back to the newest readable one.")
        else:
            advice = ("Every step failed: if they were written for another model configuration (width, "
                      "attention, num_classes), use that configuration; otherwise they are damaged: "
                      f"{HOW_TO_GET_A_CHECKPOINT}.")
        raise CheckpointError(f"could not restore {', '.join(items)} from {self.directory} ({tried}). {advice}")

    def read_meta(self, step: int | str | None = "latest") -> dict[str, Any]:
        """The `meta` item (config, step, metrics, provenance) of `step`, falling back like
        `restore` for 'latest' / 'best' when it cannot be read (without a warning: `restore`
        gives those). Raises CheckpointError when no candidate's meta can be read."""
        failures = []
        for candidate in self.candidates(step):
            try:
                return dict(self.manager.restore(candidate, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
            except Exception as err:  # noqa: BLE001 - as in `restore`
                failures.append(f"step {candidate}: {_short(err)}")
        raise CheckpointError(f"could not read meta from {self.directory} ({'; '.join(failures)})")

    def wait(self) -> None:
        """Blocks until async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for async saves, then stops orbax's background threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        try:
            self.manager.wait_until_finished()
        finally:
            self.manager.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Checkpointers not yet closed, so that an entry point can close them when a run fails
# (`close_all`), before the interpreter tears orbax's threads and event loops down.
_OPEN: weakref.WeakSet[Checkpointer] = weakref.WeakSet()


def close_all(exclude: Sequence[Checkpointer] = ()) -> None:
    """Closes every open Checkpointer (errors while closing are logged, not raised)."""
    for ck in list(_OPEN):
        if ck in exclude:
            continue
        try:
            ck.close()
        except Exception as err:  # noqa: BLE001 - closing after a failure must not hide that failure
            logger.warning("closing checkpoints in %s: %s", ck.directory, _short(err))


register_cleanup(close_all)  # run_main closes what a failed run left open
