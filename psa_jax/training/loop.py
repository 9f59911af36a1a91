"""The training loop behind train.py: data, model and optimizer from a config, resumable steps,
checkpoints on a cadence and on signals, periodic evaluation.

    from psa_jax.training.loop import train
    results = train(config, workdir)   # the final evaluation's metrics

Everything task-specific (data, network, loss, evaluation, which batch fields the step needs, the
model-selection metric) comes from the task named by `config.task` (`psa_jax.tasks.registry`).

What a run survives (docs/training.md):
- Preemption: checkpoints every `config.checkpoint.every_steps` steps and/or `every_minutes`
  minutes besides the evaluation steps; SIGTERM/SIGINT finish the dispatched steps, write a
  checkpoint and raise `Preempted` (train.py exits with status 75); kill -9 loses only the steps
  since the last checkpoint. The same command resumes.
- A new layout: the checkpoint restores onto any mesh; when the number of processes changed, the
  data position is re-derived from the step (global batches do not depend on the layout).
- Its own end: the last checkpoint is written before the final-only evaluation (detector boxes),
  whose inputs are checked before the first step; a finished run started again returns (and
  train.py prints) its final metrics without training.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import time

import jax
import numpy as np
from etils import epath
from flax import nnx
from tqdm.auto import tqdm

from psa_jax.data.pipeline import global_batch
from psa_jax.runtime import distributed
from psa_jax.runtime.aot import compile_step
from psa_jax.runtime.xla_flags import cpu_compiler_options
from psa_jax.tasks.registry import get_task
from psa_jax.training.checkpointing import Checkpointer, abstract_like
from psa_jax.training.init_weights import initialise_weights
from psa_jax.training.metrics_log import MetricsLog
from psa_jax.training.optimizers import make_optimizer, make_schedule
from psa_jax.training.preflight import check_layout
from psa_jax.training.preemption import HostFlags, Preempted, StopSignals
from psa_jax.training.sharding import batch_sharding, make_mesh, mesh_platform, state_shardings
from psa_jax.training.train_step import host_predict_fn, make_forward, make_train_step

__all__ = ["train", "NonFiniteLossError", "Preempted", "FINAL_METRICS"]

logger = logging.getLogger("psa_jax.train")

FINAL_METRICS = "final_metrics.json"  # in WORKDIR: {"step": last step, <metric>: value, ...}
_IN_FLIGHT = 2  # steps dispatched ahead of the last completed one


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf (or exceeded `config.loss_ceiling`); no checkpoint is
    written after it."""


def checkpoint_directory(config, workdir: str | epath.Path) -> epath.Path:
    """`config.checkpoint.directory`, or WORKDIR/checkpoints."""
    return epath.Path(config.checkpoint.directory or epath.Path(workdir) / "checkpoints")


def read_final_metrics(workdir: str | epath.Path) -> dict | None:
    """WORKDIR/final_metrics.json of a finished run, or None."""
    path = epath.Path(workdir) / FINAL_METRICS
    return json.loads(path.read_text()) if path.exists() else None


def _sentinel(mode: str) -> float:
    """The metric recorded with checkpoints written between evaluations: never the best."""
    return -math.inf if mode == "max" else math.inf


def train(config, workdir: str) -> dict:
    """Runs (or resumes) training with periodic evaluation; returns the final evaluation's metrics.

    Raises `Preempted` after a graceful stop on SIGTERM/SIGINT (a checkpoint was written) and
    `NonFiniteLossError` at the first step whose loss is not finite (or above `loss_ceiling`).
    """
    distributed.initialize(config.distributed)
    workdir_path = epath.Path(workdir)
    if jax.process_index() == 0:
        workdir_path.mkdir(parents=True, exist_ok=True)
        (workdir_path / "config.json").write_text(config.to_json_best_effort(indent=2))

    # ---------------------------------------------------------------- mesh, data, and what the end needs
    check_layout(config)  # batch and mesh against the devices, explained before anything compiles
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.model)
    task = get_task(config, workdir)
    ck = config.checkpoint
    ckpt = Checkpointer(checkpoint_directory(config, workdir), keep_latest=ck.keep_latest,
                        keep_best=ck.keep_best, best_metric=task.metric, best_mode=task.metric_mode,
                        async_save=ck.async_save)
    try:
        return _prepare_and_run(config, workdir_path, mesh, task, ckpt)
    finally:
        ckpt.close()  # waits for a save in flight: a failure never leaves a half-written newest step


def _prepare_and_run(config, workdir_path, mesh, task, ckpt) -> dict:
    """Data, model, optimizer and shardings; resume; then `_run` (or the end of a finished run)."""
    ck = config.checkpoint
    fresh = ckpt.latest_step() is None
    model = task.build_model(nnx.Rngs(config.seed), platform=mesh_platform(mesh))
    if fresh:  # before the data: a missing pretrained file stops the run now; a resumed run has its checkpoint
        initialise_weights(model, config.init)
    task.prepare_data()
    task.check_evaluation_inputs()  # e.g. detector boxes for the final evaluation: fail now, not in days
    train_ds, num_examples = task.train_dataset()
    steps_per_epoch = max(num_examples // config.batch_size, 1)
    total_steps = config.num_steps or config.num_epochs * steps_per_epoch
    eval_every = config.eval.every_steps or max(config.eval.every_epochs * steps_per_epoch, 1)
    logger.info("%d training examples, batch %d: %d steps per epoch, %d steps, evaluation every %d steps, "
                "checkpoints every %s steps / %s minutes, %d processes, %d devices (mesh %s)", num_examples,
                config.batch_size, steps_per_epoch, total_steps, eval_every, ck.every_steps or "-",
                ck.every_minutes or "-", jax.process_count(), jax.device_count(), dict(mesh.shape))

    # ---------------------------------------------------------------- model and optimizer
    schedule = make_schedule(config.schedule, base_lr=config.optimizer.lr, steps_per_epoch=steps_per_epoch,
                             total_steps=total_steps)
    optimizer = nnx.Optimizer(model, make_optimizer(config.optimizer, schedule), wrt=nnx.Param)
    model_gd, model_state = nnx.split(model)
    opt_gd, opt_state = nnx.split(optimizer)
    del model, optimizer
    model_sh = state_shardings(model_state, mesh, shard_params=config.mesh.shard_params)
    opt_sh = state_shardings(opt_state, mesh, shard_params=config.mesh.shard_params)
    model_state = jax.device_put(model_state, model_sh)
    opt_state = jax.device_put(opt_state, opt_sh)
    use_ema = config.ema_decay > 0
    ema_state = jax.tree.map(lambda x: x.copy(), model_state) if use_ema else None

    # ---------------------------------------------------------------- resume
    train_iter = iter(train_ds)
    start = 0
    if not fresh:
        start, model_state, opt_state, ema_state, train_iter = _resume(
            ckpt, task, model_state, model_sh, opt_state, opt_sh, ema_state, train_iter)
    if start >= total_steps:
        return _finish_finished_run(config, workdir_path, task, ckpt, mesh, model_gd, model_sh, model_state,
                                    ema_state, start)
    return _run(config, workdir_path, task, ckpt, mesh, schedule, model_gd, opt_gd, model_sh, opt_sh,
                model_state, opt_state, ema_state, train_iter, start, total_steps, eval_every)


def _run(config, workdir_path, task, ckpt, mesh, schedule, model_gd, opt_gd, model_sh, opt_sh, model_state,
         opt_state, ema_state, train_iter, start, total_steps, eval_every) -> dict:
    """The steps from `start + 1` to `total_steps`, evaluations, checkpoints, the final evaluation."""
    ck, use_ema = config.checkpoint, config.ema_decay > 0

    # ---------------------------------------------------------------- steps
    # The step takes and returns flat lists of arrays (see psa_jax.training.train_step); the
    # nnx.State trees are rebuilt only for evaluation and checkpoints.
    step_fn = make_train_step(model_gd, opt_gd, task.loss_fn, schedule=schedule, model_sharding=model_sh,
                              opt_sharding=opt_sh, mesh=mesh, flat_state=True,
                              preprocess=task.preprocess, grad_norm=config.log_grad_norm,
                              grad_accum_steps=config.grad_accum_steps, ema_decay=config.ema_decay,
                              compiler_options=cpu_compiler_options(config.cpu_scheduler,
                                                                    platform=mesh_platform(mesh)))
    model_def, opt_def = jax.tree.structure(model_sh), jax.tree.structure(opt_sh)
    state = [jax.tree.leaves(model_state), jax.tree.leaves(opt_state)] + ([jax.tree.leaves(ema_state)] if use_ema
                                                                          else [])
    del model_state, opt_state, ema_state  # donated to the first step
    forward = make_forward(model_gd, task.forward, model_sharding=model_sh, mesh=mesh)
    batch_sh = batch_sharding(mesh)
    log = MetricsLog(workdir_path, resume_step=start, tensorboard=config.tensorboard)
    flags = HostFlags(mesh, 2)  # (stop requested, checkpoint time reached), agreed by every process
    meta = {"config": json.loads(config.to_json_best_effort()), "source": "train.py",
            "process_count": jax.process_count(), "device_count": jax.device_count()}

    def states(leaves):
        """(model, opt, ema or None) nnx.States from the step's flat leaves."""
        model_s, opt_s = jax.tree.unflatten(model_def, leaves[0]), jax.tree.unflatten(opt_def, leaves[1])
        return model_s, opt_s, (jax.tree.unflatten(model_def, leaves[2]) if use_ema else None)

    def save(step: int, kind: str, metrics: dict | None = None) -> None:
        model_s, opt_s, ema_s = states(state)
        ckpt.save(step, model=model_s, opt=opt_s, ema=ema_s, data_iter=train_iter,
                  meta=dict(meta, kind=kind),
                  metrics=metrics or {task.metric: _sentinel(task.metric_mode)})

    def evaluate(step: int, *, final: bool, periodic: bool) -> dict:
        model_s, _, ema_s = states(state)
        predict = host_predict_fn(forward, ema_s if use_ema else model_s, mesh)
        return task.evaluate(predict, step=step, final=final, periodic=periodic)

    results: dict = {}
    pending: collections.deque = collections.deque()  # (step, metrics, flags) dispatched, not yet read
    last_save = time.time()
    rate_from = [start, last_save]  # (step, time) of the previous training record
    save_at = stop_at = None
    last_saved = start
    pbar = tqdm(total=total_steps, initial=start, desc="train", disable=jax.process_index() != 0,
                dynamic_ncols=True, unit="step")

    def complete(entry) -> None:
        """Reads a dispatched step's results once it has run: non-finite check, logging, agreed flags."""
        nonlocal save_at, stop_at
        step, metrics, step_flags = entry
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = not all(math.isfinite(v) for v in m.values())
        if bad or (config.loss_ceiling > 0 and m["loss"] > config.loss_ceiling):
            reason = ("non-finite training metrics" if bad else
                      f"training loss above config.loss_ceiling={config.loss_ceiling}")
            raise NonFiniteLossError(
                f"{reason} at step {step}: {m}. No checkpoint was written after it; the last good one is step "
                f"{ckpt.latest_step()}. Lower config.optimizer.lr, enable config.optimizer.grad_clip_norm, or "
                "check the data.")
        pbar.update(1)
        if step % config.log_every_steps == 0 or step == start + 1 or step == total_steps:
            now = time.time()
            if step > start + 1:  # the rate since the previous record (the first step includes compiling)
                m["img_per_s"] = (step - rate_from[0]) * config.batch_size / max(now - rate_from[1], 1e-9)
            rate_from[:] = [step, now]
            log.write("train", step, m)
            pbar.set_postfix(loss=f"{m['loss']:.4g}", lr=f"{m['lr']:.3g}")
        stop_flag, time_flag = (int(v) for v in np.asarray(step_flags))
        if flags.multi:  # decisions every process takes at the same step
            if stop_flag and stop_at is None:
                stop_at = min(step + _IN_FLIGHT, total_steps)
            if time_flag and step > last_saved and (save_at is None or save_at <= step):
                save_at = step + _IN_FLIGHT

    with StopSignals() as signals, contextlib.closing(log):
        for step in range(start + 1, total_steps + 1):
            local = next(train_iter)
            batch = global_batch({k: local[k] for k in task.train_fields}, batch_sh)
            if step == start + 1:
                step_fn = compile_step(step_fn, *state, batch, clear_caches=config.clear_caches_after_compile)
            *state, metrics = step_fn(*state, batch)
            due = bool(ck.every_minutes) and time.time() - last_save >= 60 * ck.every_minutes
            pending.append((step, metrics, flags.combine([signals.requested, due])))
            while len(pending) > _IN_FLIGHT or (pending and pending[0][1]["loss"].is_ready()):
                complete(pending.popleft())
            if not flags.multi:
                stop_at = step if signals.requested else None
                save_at = step if due else None

            is_eval = step % eval_every == 0 or step == total_steps
            is_stop = stop_at is not None and step >= stop_at
            is_save = is_stop or step == save_at or bool(ck.every_steps and step % ck.every_steps == 0)
            if is_eval or is_save:
                while pending:  # every step up to this one has run and is checked
                    complete(pending.popleft())
            if is_eval:
                final = step == total_steps
                results = evaluate(step, final=final, periodic=True)
                if not final:  # the last step's record is written once, with the final-only metrics
                    log.write("eval", step, results)
                logger.info("step %d: %s", step, {k: round(v, 4) for k, v in results.items()
                                                  if isinstance(v, float)})
                save(step, "final" if final else "eval", {task.metric: results[task.metric]})
                log.plot(title=f"{config.task}: {config.model.name} {config.model.get('width', '')} "
                               f"{config.model.attention}")
            elif is_save:
                save(step, "preempted" if is_stop else "cadence")
            if is_eval or is_save:
                last_save, save_at, last_saved = time.time(), None, step
            if is_stop and step < total_steps:
                ckpt.wait()
                pbar.close()
                where = ckpt.directory / str(step)
                who = signals.signal_name or "another process's signal"
                logger.warning("stopped by %s after step %d; checkpoint %s. Run the same command to resume.",
                               who, step, where)
                raise Preempted(step, who, str(where))
        pbar.close()
        ckpt.wait()  # the last checkpoint is on disk before the final-only evaluation starts
        results = dict(results, **evaluate(total_steps, final=True, periodic=False))
        log.write("eval", total_steps, results)
    _write_final_metrics(workdir_path, total_steps, results)
    return results


def _resume(ckpt, task, model_state, model_sh, opt_state, opt_sh, ema_state, train_iter):
    """Restores the latest readable checkpoint onto this mesh; the data position from the saved
    iterator state when the process layout is unchanged, else from the step."""
    meta = ckpt.read_meta("latest")
    same_layout = meta.get("process_count", 1) == jax.process_count()
    restored = ckpt.restore("latest", model=abstract_like(model_state, model_sh), opt=abstract_like(opt_state, opt_sh),
                            ema=abstract_like(ema_state, model_sh) if ema_state is not None else None,
                            data_iter=train_iter if same_layout else None)
    start = restored["step"]
    if not same_layout:
        logger.warning("the checkpoint of step %d was written by %d processes, this run has %d: the data position is "
                       "taken from the step (global batch %d onwards of the same seed's stream)", start,
                       meta.get("process_count", 1), jax.process_count(), start)
        train_iter = iter(task.train_dataset(start_step=start)[0])
    logger.info("resumed from step %d (%s)", start, ckpt.directory / str(start))
    return start, restored["model"], restored["opt"], restored.get("ema", ema_state), train_iter


def _finish_finished_run(config, workdir_path, task, ckpt, mesh, model_gd, model_sh, model_state, ema_state,
                         step) -> dict:
    """A run whose last checkpoint is its last step: its final metrics, computing the final-only
    evaluation first if the earlier run stopped before writing them."""
    final = read_final_metrics(workdir_path)
    if final is not None and final.get("step") == step:
        logger.info("this run finished at step %d; its final metrics are in %s", step, workdir_path / FINAL_METRICS)
        return {k: v for k, v in final.items() if k != "step"}
    logger.info("step %d is the last one but the final evaluation is missing: running it", step)
    forward = make_forward(model_gd, task.forward, model_sharding=model_sh, mesh=mesh)
    predict = host_predict_fn(forward, ema_state if ema_state is not None else model_state, mesh)
    results = task.evaluate(predict, step=step, final=True, periodic=True)
    # The interrupted run may have logged the periodic evaluation of this step already: redo it.
    with MetricsLog(workdir_path, resume_step=step, redo_kinds=("eval",), tensorboard=config.tensorboard) as log:
        log.write("eval", step, results)
    _write_final_metrics(workdir_path, step, results)
    return results


def _write_final_metrics(workdir_path: epath.Path, step: int, results: dict) -> None:
    if jax.process_index() == 0 and results:
        scalars = {k: v for k, v in results.items() if isinstance(v, (int, float, str))}
        (workdir_path / FINAL_METRICS).write_text(json.dumps(dict(scalars, step=step), indent=2))
