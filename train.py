r"""Trains a pose or segmentation network from an ml-collections config.

    python train.py --workdir=workdirs/demo                      # embedded default: synthetic pose demo
    python train.py --config=configs/coco_w32_256x192.py --workdir=/ckpt/w32 \
        --config.data.manual_dir=/data/coco --config.batch_size=64
    python train.py --config=configs/cityscapes_mscale_ocr_psa_p.py --workdir=... --config.distributed=True

The run is resumable: started again with the same --workdir it continues from the latest
checkpoint (model, optimizer and the data iterator's position). Outputs in WORKDIR:
checkpoints/ (orbax; latest and best-by-metric kept), metrics.jsonl, curves.png, results/,
config.json. The loop itself is `psa_jax.training.loop.train`.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from psa_jax.runtime.entry_point import start_process

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "pose_synthetic_demo.py")


def main(argv):
    del argv
    start_process()  # XLA flags + compilation cache before the backend starts; logging
    from psa_jax.tasks.registry import get_task
    from psa_jax.training.loop import train

    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    results = train(config, workdir)
    metric = get_task(config, workdir).metric
    if results:
        print(f"final {metric}={results.get(metric, float('nan')):.4f} "
              f"(metrics in {os.path.join(workdir, 'metrics.jsonl')}, "
              f"curves in {os.path.join(workdir, 'curves.png')})")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Training configuration file.", lock_config=True)
    flags.DEFINE_string("workdir", "workdirs/demo", "Where checkpoints, metrics and plots are written.")
    app.run(main)
