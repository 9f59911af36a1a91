"""The training loop behind train.py: data, model and optimizer from a config, resumable steps,
periodic evaluation and checkpoints.

    from psa_jax.training.loop import train
    results = train(config, workdir)   # the last evaluation's metrics

Everything task-specific (data, network, loss, evaluation, which batch fields the step needs, the
model-selection metric) comes from the task named by `config.task` (`psa_jax.tasks.registry`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
from flax import nnx
from tqdm.auto import tqdm

from psa_jax.data.pipeline import global_batch
from psa_jax.runtime.aot import compile_step
from psa_jax.runtime.xla_flags import cpu_compiler_options
from psa_jax.tasks.registry import get_task
from psa_jax.training.checkpointing import Checkpointer, abstract_like
from psa_jax.training.init_weights import initialise_weights
from psa_jax.training.metrics_log import MetricsLog
from psa_jax.training.optimizers import make_optimizer, make_schedule
from psa_jax.training.train_step import (data_sharding, host_predict_fn, make_forward, make_mesh,
                                         make_train_step, mesh_platform, state_shardings)

__all__ = ["train", "NonFiniteLossError"]

logger = logging.getLogger("psa_jax.train")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; no checkpoint is written after it."""


def train(config, workdir: str) -> dict:
    """Runs training + evaluation; returns the last evaluation's metrics."""
    if config.distributed:
        jax.distributed.initialize()
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    # ---------------------------------------------------------------- mesh and data
    mesh = make_mesh(config.mesh.data, config.mesh.model)
    task = get_task(config, workdir)
    task.prepare_data()
    train_ds, num_examples = task.train_dataset()
    steps_per_epoch = max(num_examples // config.batch_size, 1)
    total_steps = config.num_steps or config.num_epochs * steps_per_epoch
    eval_every = config.eval.every_steps or max(config.eval.every_epochs * steps_per_epoch, 1)
    logger.info("%d training examples, batch %d: %d steps per epoch, %d steps, evaluation every %d steps, "
                "%d devices (mesh %s)", num_examples, config.batch_size, steps_per_epoch, total_steps, eval_every,
                jax.device_count(), dict(mesh.shape))

    # ---------------------------------------------------------------- model and optimizer
    schedule = make_schedule(config.schedule, base_lr=config.optimizer.lr, steps_per_epoch=steps_per_epoch,
                             total_steps=total_steps)
    model = task.build_model(nnx.Rngs(config.seed), platform=mesh_platform(mesh))
    initialise_weights(model, config.init)
    optimizer = nnx.Optimizer(model, make_optimizer(config.optimizer, schedule), wrt=nnx.Param)
    model_gd, model_state = nnx.split(model)
    opt_gd, opt_state = nnx.split(optimizer)
    del model, optimizer
    model_sh = state_shardings(model_state, mesh, shard_params=config.mesh.shard_params)
    opt_sh = state_shardings(opt_state, mesh, shard_params=config.mesh.shard_params)
    model_state = jax.device_put(model_state, model_sh)
    opt_state = jax.device_put(opt_state, opt_sh)

    # ---------------------------------------------------------------- checkpoints (resume)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep_latest=config.checkpoint.keep_latest,
                        keep_best=config.checkpoint.keep_best, best_metric=task.metric, best_mode=task.metric_mode,
                        async_save=config.checkpoint.async_save)
    train_iter = iter(train_ds)
    start = 0
    if ckpt.latest_step() is not None:
        restored = ckpt.restore("latest", model=abstract_like(model_state, model_sh),
                                opt=abstract_like(opt_state, opt_sh), data_iter=train_iter)
        model_state, opt_state, start = restored["model"], restored["opt"], restored["step"]
        logger.info("resumed from step %d", start)

    # ---------------------------------------------------------------- steps
    # The step takes and returns flat lists of arrays (see psa_jax.training.train_step); the
    # nnx.State trees are rebuilt only for evaluation and checkpoints.
    step_fn = make_train_step(model_gd, opt_gd, task.loss_fn, schedule=schedule, model_sharding=model_sh,
                              opt_sharding=opt_sh, mesh=mesh, flat_state=True,
                              preprocess=task.preprocess, grad_norm=config.log_grad_norm,
                              compiler_options=cpu_compiler_options(config.cpu_scheduler,
                                                                    platform=mesh_platform(mesh)))
    model_def, opt_def = jax.tree.structure(model_sh), jax.tree.structure(opt_sh)
    model_leaves, opt_leaves = jax.tree.leaves(model_state), jax.tree.leaves(opt_state)
    del model_state, opt_state  # donated to the first step
    forward = make_forward(model_gd, task.forward, model_sharding=model_sh, mesh=mesh)
    batch_sh = data_sharding(mesh)
    log = MetricsLog(workdir)
    results: dict = {}
    t0 = time.time()
    pbar = tqdm(range(start + 1, total_steps + 1), initial=start, total=total_steps, desc="train",
                disable=jax.process_index() != 0, dynamic_ncols=True)
    for step in pbar:
        local = next(train_iter)
        batch = global_batch({k: local[k] for k in task.train_fields}, batch_sh)
        if step == start + 1:
            step_fn = compile_step(step_fn, model_leaves, opt_leaves, batch,
                                   clear_caches=config.clear_caches_after_compile)
        model_leaves, opt_leaves, metrics = step_fn(model_leaves, opt_leaves, batch)

        is_eval = step % eval_every == 0 or step == total_steps
        if step % config.log_every_steps == 0 or is_eval or step == start + 1:
            m = jax.device_get(metrics)
            if not all(math.isfinite(float(v)) for v in m.values()):
                raise NonFiniteLossError(
                    f"non-finite training metrics at step {step}: {m}. No checkpoint was written for this step; "
                    f"the last good one is step {ckpt.latest_step()}. Lower config.optimizer.lr, enable "
                    "config.optimizer.grad_clip_norm, or check the data.")
            m["img_per_s"] = (step - start) * config.batch_size / max(time.time() - t0, 1e-9)
            log.write("train", step, m)
            pbar.set_postfix(loss=f"{float(m['loss']):.4g}", lr=f"{float(m['lr']):.3g}")

        if is_eval:
            final = step == total_steps
            model_state = jax.tree.unflatten(model_def, model_leaves)
            opt_state = jax.tree.unflatten(opt_def, opt_leaves)
            results = task.evaluate(host_predict_fn(forward, model_state, mesh), step=step, final=final)
            log.write("eval", step, results)
            logger.info("step %d: %s", step, {k: round(v, 4) for k, v in results.items() if isinstance(v, float)})
            ckpt.save(step, model=model_state, opt=opt_state, data_iter=train_iter,
                      meta={"config": json.loads(config.to_json_best_effort()), "source": "train.py"},
                      metrics={task.metric: results[task.metric]})
            log.plot(title=f"{config.task}: {config.model.name} {config.model.get('width', '')} "
                           f"{config.model.attention}")
    ckpt.close()
    if jax.process_index() == 0 and results:
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results
