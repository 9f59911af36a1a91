r"""Evaluates a checkpoint (trained here, or converted from PyTorch) with the config's evaluator.

    python eval.py --workdir=workdirs/demo                         # best checkpoint, demo config
    python eval.py --config=configs/coco_w48_384x288_udp_psa_p.py --workdir=/ckpt/w48 --step=best \
        --config.data.manual_dir=/data/coco --config.eval.boxes=det
    python -m psa_jax.tools.convert psa_p.pth /ckpt/psa_p --config=configs/cityscapes_mscale_ocr_psa_p.py
    python eval.py --config=configs/cityscapes_mscale_ocr_psa_p.py --workdir=/ckpt/psa_p \
        --config.data.manual_dir=/data/cityscapes

Only the model weights are restored (onto this machine's devices, whatever mesh wrote them).
Prints the metrics and writes WORKDIR/eval_<step>.json. The work is `psa_jax.training.evaluate`.
`--step=best` / `latest` falls back to the newest readable checkpoint when that one is damaged
(with a warning naming it); `--step=N` restores step N or fails. A failed run's last line is its
error (`error: <Type>: <message>`, exit status 1; PSA_JAX_TRACEBACK=1 shows the traceback).
"""

from __future__ import annotations

import os

from absl import flags

from psa_jax.runtime.entry_point import run_main, start_process
from psa_jax.training.preflight import define_config_flag

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "pose_synthetic_demo.py")


def main(argv):
    del argv
    start_process()  # XLA flags + compilation cache before the backend starts; logging
    from psa_jax.training.evaluate import evaluate

    results = evaluate(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.step)
    for k, v in results.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    define_config_flag("config", _DEFAULT_CONFIG, "Configuration the checkpoint was trained with.")
    flags.DEFINE_string("workdir", "workdirs/demo", "Directory holding checkpoints/ (train.py or "
                                                    "python -m psa_jax.tools.convert).")
    flags.DEFINE_string("step", "best", "'best', 'latest' or a step number.")
    run_main(main)
