"""Evaluating a checkpoint with its config's task (behind eval.py)."""

from __future__ import annotations

import json
import logging
import os

import jax
from flax import nnx

from psa_jax.tasks.registry import get_task
from psa_jax.training.checkpointing import Checkpointer, abstract_like
from psa_jax.training.train_step import host_predict_fn, make_forward, make_mesh, mesh_platform, state_shardings

__all__ = ["evaluate"]

logger = logging.getLogger("psa_jax.eval")


def evaluate(config, workdir: str, step: str | int = "best") -> dict:
    """Restores `step` ('best', 'latest' or a number) from WORKDIR/checkpoints, evaluates it with
    the task's evaluator, writes WORKDIR/eval_<step>.json and returns the metrics. Only the model
    weights are restored, onto this machine's devices, whatever mesh wrote them."""
    if config.distributed:
        jax.distributed.initialize()
    mesh = make_mesh(config.mesh.data, config.mesh.model)
    task = get_task(config, workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), best_metric=task.metric, best_mode=task.metric_mode)
    model_gd, model_state = nnx.split(task.build_model(nnx.Rngs(config.seed), platform=mesh_platform(mesh)))
    model_sh = state_shardings(model_state, mesh, shard_params=config.mesh.shard_params)
    restored = ckpt.restore(step, model=abstract_like(model_state, model_sh))
    logger.info("restored step %d from %s (%s)", restored["step"], ckpt.directory,
                restored["meta"].get("source", "unknown source"))
    task.prepare_data()
    forward = make_forward(model_gd, task.forward, model_sharding=model_sh, mesh=mesh)
    results = task.evaluate(host_predict_fn(forward, restored["model"], mesh), step=restored["step"], final=True)
    ckpt.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_{restored['step']}.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results
