r"""Evaluates a checkpoint (trained here, or converted from PyTorch) with the config's evaluator.

    python eval.py --workdir=workdirs/demo                         # latest checkpoint, demo config
    python eval.py --config=configs/coco_w48_384x288_udp_psa_p.py --workdir=/ckpt/w48 --step=best \
        --config.data.manual_dir=/data/coco --config.eval.boxes=det
    python -m psa_jax.convert psa_p.pth /ckpt/psa_p --config=configs/cityscapes_mscale_ocr_psa_p.py
    python eval.py --config=configs/cityscapes_mscale_ocr_psa_p.py --workdir=/ckpt/psa_p \
        --config.data.manual_dir=/data/cityscapes

Only the model weights are restored (onto this machine's devices, whatever mesh wrote them).
Prints the metrics and writes WORKDIR/eval_<step>.json.
"""

from __future__ import annotations

import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags

import jax
from flax import nnx

from psa_jax.training.checkpointing import Checkpointer, abstract_like
from psa_jax.training.entry_point import start_process
from psa_jax.training.task import get_task
from psa_jax.training.train_step import host_predict_fn, make_forward, make_mesh, state_shardings

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "pose_synthetic_demo.py")

logger = logging.getLogger("psa_jax.eval")


def evaluate(config, workdir: str, step: str | int = "best") -> dict:
    """Restores `step` from WORKDIR/checkpoints and evaluates it; returns the metrics."""
    if config.distributed:
        jax.distributed.initialize()
    mesh = make_mesh(config.mesh.data, config.mesh.model)
    task = get_task(config, workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), best_metric=task.metric, best_mode=task.metric_mode)
    model_gd, model_state = nnx.split(task.build_model(nnx.Rngs(config.seed)))
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


def main(argv):
    del argv
    start_process()  # XLA flags + compilation cache before the backend starts; logging
    config = flags.FLAGS.config
    results = evaluate(config, flags.FLAGS.workdir, flags.FLAGS.step)
    for k, v in results.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


def define_flags() -> None:
    """Command-line flags (defined on demand, so that train.py and eval.py can be imported together)."""
    config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Configuration the checkpoint was trained with.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", "workdirs/demo", "Directory holding checkpoints/ (train.py or psa_jax.convert).")
    flags.DEFINE_string("step", "best", "'best', 'latest' or a step number.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
