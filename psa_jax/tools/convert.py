r"""Converts a PyTorch checkpoint into an orbax checkpoint that eval.py (or train.py's
`config.init.checkpoint`) restores.

    python -m psa_jax.tools.convert psa_p.pth /ckpt/psa_p --config=configs/cityscapes_mscale_ocr_psa_p.py
    python -m psa_jax.tools.convert hrnet_w32-36af842e.pth /ckpt/w32_imagenet --config=configs/coco_w32_256x192.py \
        --layout=imagenet

The network is built from the config (`config.model`), the weights are loaded by key name with
every missing / unexpected key and shape mismatch reported, and WORKDIR/checkpoints/0 is written
with the model state and provenance (`meta.source`, `meta.converted_from`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m psa_jax.tools.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="PyTorch checkpoint (.pth/.pt) or .npz of arrays")
    parser.add_argument("workdir", help="output directory (checkpoints/0 is written there)")
    parser.add_argument("--config", required=True, help="config file the network is built from")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set model.attention=psa_s (repeatable)")
    parser.add_argument("--layout", choices=("network", "imagenet"), default="network",
                        help="'network': a whole network of the config's layout (strict); 'imagenet': HRNet "
                             "classifier weights into the backbone")
    parser.add_argument("--allow_pickle", action="store_true",
                        help="read full pickles (only for trusted files that weights_only loading rejects)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)

    from flax import nnx

    from psa_jax.convert.from_torch import ConversionError
    from psa_jax.convert.pytorch_checkpoints import load_pytorch
    from psa_jax.tasks.registry import get_task
    from psa_jax.training.checkpointing import Checkpointer
    from psa_jax.training.config_schema import load_config

    config = load_config(args.config, args.set)
    task = get_task(config, args.workdir)
    model = task.build_model(nnx.Rngs(config.seed))
    try:
        report = load_pytorch(model, args.source, args.layout, allow_pickle=args.allow_pickle)
    except (ConversionError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report)
    ckpt = Checkpointer(os.path.join(args.workdir, "checkpoints"), keep_best=0)
    ckpt.save(0, model=nnx.state(model), meta={
        "source": "psa_jax.convert", "converted_from": os.path.abspath(args.source), "layout": args.layout,
        "config": config.to_dict(), "missing": report.missing, "unexpected": report.unexpected})
    ckpt.close()
    print(f"wrote {os.path.join(args.workdir, 'checkpoints', '0')}; evaluate with: python eval.py "
          f"--config={args.config} --workdir={args.workdir} --step=latest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
