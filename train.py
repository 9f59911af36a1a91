r"""Trains a pose or segmentation network from an ml-collections config.

    python train.py --workdir=workdirs/demo                      # embedded default: synthetic pose demo
    python train.py --config=configs/coco_w32_256x192.py --workdir=/ckpt/w32 \
        --config.data.manual_dir=/data/coco --config.batch_size=64
    python train.py --config=configs/cityscapes_mscale_ocr_psa_p.py --workdir=... --config.distributed=True

The run is resumable: started again with the same --workdir it continues from the latest
checkpoint (model, optimizer and the data iterator's position). Outputs in WORKDIR:
checkpoints/ (orbax; latest and best-by-metric kept), metrics.jsonl, curves.png, results/,
config.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

from absl import app, flags
from ml_collections import config_flags

import jax
from flax import nnx
from tqdm.auto import tqdm

from psa_jax.data.pipeline import global_batch
from psa_jax.training.checkpointing import Checkpointer, abstract_like
from psa_jax.training.host_memory import trim_host_memory
from psa_jax.training.init_weights import initialise_weights
from psa_jax.training.metrics_log import MetricsLog
from psa_jax.training.optimizers import make_optimizer, make_schedule
from psa_jax.training.entry_point import start_process
from psa_jax.training.task import get_task
from psa_jax.training.train_step import (data_sharding, host_predict_fn, make_forward, make_mesh,
                                         make_train_step, state_shardings)
from psa_jax.training.xla_flags import cpu_compiler_options

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "pose_synthetic_demo.py")

logger = logging.getLogger("psa_jax.train")

# Batch fields the train step needs (everything else stays on the host).
_TRAIN_FIELDS = ("image", "target", "target_weight", "label")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; no checkpoint is written after it."""


def compile_step(step_fn, model_leaves, opt_leaves, batch, *, clear_caches: bool = True):
    """Compiles the jitted train step ahead of time for these (fixed) shapes and frees what JAX
    kept from tracing and lowering it.

    With `clear_caches`, `jax.clear_caches()` drops the jaxprs and lowered modules of every traced
    function (240 MB for HRNet-W32 on CPU; `benchmarks/NOTES.md`); the compiled step is held
    here, so it is not compiled twice, but other jitted functions trace again on their next call
    (evaluation's forward pass compiles on its first use either way). Then the compiler's freed
    heap goes back to the OS (`trim_host_memory`). Every batch has the same shapes (the
    pipelines drop the last partial batch), which an AOT-compiled step requires.
    """
    t = time.perf_counter()
    compiled = step_fn.lower(model_leaves, opt_leaves, batch).compile()
    if clear_caches:
        jax.clear_caches()
    trim_host_memory()
    logger.info("train step compiled in %.1f s", time.perf_counter() - t)
    return compiled


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
    model = task.build_model(nnx.Rngs(config.seed))
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
                                                                    platform=jax.default_backend()))
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
        batch = global_batch({k: v for k, v in local.items() if k in _TRAIN_FIELDS}, batch_sh)
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


def main(argv):
    del argv
    start_process()  # XLA flags + compilation cache before the backend starts; logging
    results = train(flags.FLAGS.config, flags.FLAGS.workdir)
    metric = "AP" if flags.FLAGS.config.task == "pose" else "mIoU"
    if results:
        print(f"final {metric}={results.get(metric, float('nan')):.4f} "
              f"(metrics in {os.path.join(flags.FLAGS.workdir, 'metrics.jsonl')}, "
              f"curves in {os.path.join(flags.FLAGS.workdir, 'curves.png')})")


def define_flags() -> None:
    """Command-line flags (defined on demand, so that train.py and eval.py can be imported together)."""
    config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Training configuration file.", lock_config=True)
    flags.DEFINE_string("workdir", "workdirs/demo", "Where checkpoints, metrics and plots are written.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
