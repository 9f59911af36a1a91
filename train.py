r"""Trains a pose or segmentation network from an ml-collections config.

    python train.py --workdir=workdirs/demo                      # embedded default: synthetic pose demo
    python train.py --config=configs/coco_w32_256x192.py --workdir=/ckpt/w32 \
        --config.data.manual_dir=/data/coco --config.batch_size=64
    python train.py --config=configs/coco_w32_256x192.py --workdir=gs://bucket/w32 ...   # on every TPU worker
    python train.py ... --config.distributed.coordinator_address=10.0.0.1:1234 \
        --config.distributed.num_processes=2 --config.distributed.process_id=0          # one process per GPU

The run is resumable: started again with the same --workdir it continues from the latest
checkpoint (model, optimizer and the data position), on any number of processes and devices;
started again after it finished, it prints its final metrics. Outputs in WORKDIR: checkpoints/
(orbax; latest and best-by-metric kept, plus checkpoints every config.checkpoint.every_minutes),
metrics.jsonl, tensorboard/, curves.png, results/, config.json, final_metrics.json. The loop
itself is `psa_jax.training.loop.train` (docs/training.md).

Exit status: 0 done; 1 error (the last line says which); 75 stopped by SIGTERM/SIGINT after
writing a checkpoint (run the same command to resume); 128+N killed by a second signal N.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from psa_jax.runtime.entry_point import run_main, start_process
from psa_jax.training.preflight import define_config_flag

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "pose_synthetic_demo.py")


def main(argv):
    del argv
    start_process()  # XLA flags + compilation cache before the backend starts; logging
    from psa_jax.tasks.registry import get_task
    from psa_jax.training.loop import train
    from psa_jax.training.preemption import EXIT_PREEMPTED, Preempted

    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    try:
        results = train(config, workdir)
    except Preempted as stop:
        print(stop, file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    metric = get_task(config, workdir).metric
    if results:
        print(f"metrics in {workdir}/metrics.jsonl, curves in {workdir}/curves.png, "
              f"final metrics in {workdir}/final_metrics.json")
        print(f"{metric}={results.get(metric, float('nan')):.4f}")


if __name__ == "__main__":
    define_config_flag("config", _DEFAULT_CONFIG, "Training configuration file.")
    flags.DEFINE_string("workdir", "workdirs/demo", "Where checkpoints, metrics and plots are written (local or "
                                                    "a bucket path such as gs://bucket/run).")
    run_main(main)
