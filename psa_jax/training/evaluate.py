"""Evaluating a checkpoint with its config's task (behind eval.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import nnx

from psa_jax.runtime.distributed import initialize as initialize_distributed
from psa_jax.tasks.registry import get_task
from psa_jax.training.checkpointing import Checkpointer, abstract_like
from psa_jax.training.preflight import check_layout
from psa_jax.training.sharding import make_mesh, mesh_platform, state_shardings
from psa_jax.training.train_step import host_predict_fn, make_forward

__all__ = ["evaluate", "restore_predictor"]

logger = logging.getLogger("psa_jax.eval")


def evaluate(config, workdir: str, step: str | int = "best") -> dict:
    """Restores `step` ('best', 'latest' or a number) from the checkpoint directory
    (`config.checkpoint.directory`, default WORKDIR/checkpoints), evaluates it with the task's
    evaluator, writes WORKDIR/eval_<step>.json and returns the metrics. Only the model weights are
    restored, onto this machine's devices, whatever mesh wrote them; with `config.ema_decay > 0`
    the checkpoint's moving average (`ema`) is evaluated, as training did.

    Nothing is created before a checkpoint is found: a missing directory, no checkpoint in it or a
    `step` that is not 'best', 'latest' or an existing step number is a CheckpointError saying
    what exists and how to make one. With 'best' / 'latest', an unreadable step falls back to the
    newest readable one (with a warning); an explicit step number does not.
    """
    initialize_distributed(config.distributed)
    task = get_task(config, workdir)  # reads nothing, writes nothing
    directory = config.checkpoint.directory or epath.Path(workdir) / "checkpoints"
    predict, restored = restore_predictor(config, task, directory, step)
    task.prepare_data()
    results = task.evaluate(predict, step=restored["step"], final=True)
    if jax.process_index() == 0:
        (epath.Path(workdir) / f"eval_{restored['step']}.json").write_text(json.dumps(results, indent=2))
    return results


def restore_predictor(config, task, directory, step: str | int = "best") -> tuple[Callable[[np.ndarray], Any], dict]:
    """The config's network with the weights of checkpoint `step` in `directory`, as a host function
    `images (this process's batch, NumPy) -> task.forward outputs (NumPy)`.

    A read-only `Checkpointer` finds `step` ('best', 'latest' or a number) before anything is built
    (nothing is created); the network is built for this machine's mesh (`config.mesh`, checked by
    `preflight.check_layout`) and restored onto its shardings, whatever mesh wrote it. With
    `config.ema_decay > 0` and an `ema` item in the checkpoint, its moving average is used, as
    training evaluated it. Returns (predict, the restored `{'step', 'meta', ...}` with `'ema'`
    telling whether the average was used).
    """
    ckpt = Checkpointer(directory, read_only=True, best_metric=task.metric, best_mode=task.metric_mode)
    try:
        ckpt.resolve(step)  # validates `step` and finds a checkpoint before anything is built
        layout = check_layout(config, batch=False)
        mesh = make_mesh(layout["data"], layout["fsdp"], layout["model"])
        model_gd, model_state = nnx.split(task.build_model(nnx.Rngs(config.seed), platform=mesh_platform(mesh)))
        model_sh = state_shardings(model_state, mesh, shard_params=config.mesh.shard_params)
        target = abstract_like(model_state, model_sh)
        with_ema = config.ema_decay > 0 and (ckpt.directory / str(ckpt.resolve(step)) / "ema").exists()
        restored = ckpt.restore(step, model=target, ema=target if with_ema else None)
    finally:
        ckpt.close()
    logger.info("restored step %d from %s (%s)%s", restored["step"], ckpt.directory,
                restored["meta"].get("source", "unknown source"), ": the EMA weights" if with_ema else "")
    forward = make_forward(model_gd, task.forward, model_sharding=model_sh, mesh=mesh)
    weights = restored["ema"] if with_ema else restored["model"]
    return host_predict_fn(forward, weights, mesh), dict(restored, ema=with_ema)
