"""Initialising a freshly built network from `config.init` (before training or evaluation).

* `init.checkpoint`: an orbax checkpoint directory written by train.py or by
  `python -m psa_jax.tools.convert` (its `model` item; the latest step).
* `init.pytorch`: a PyTorch file, with `init.pytorch_layout` 'imagenet' (HRNet classifier weights
  into the backbone, the reference recipes' starting point) or 'network' (a whole network of the
  same layout, e.g. an official PSA Cityscapes checkpoint for fine-tuning).
"""

from __future__ import annotations

import logging
from typing import Any

import jax
from flax import nnx

from psa_jax.convert.pytorch_checkpoints import load_pytorch
from psa_jax.training.checkpointing import Checkpointer, abstract_like

__all__ = ["initialise_weights"]

logger = logging.getLogger(__name__)


def initialise_weights(model: nnx.Module, init: Any) -> None:
    """Applies `init` (a ConfigDict with `checkpoint`, `pytorch`, `pytorch_layout`) to `model` in place."""
    if init.checkpoint and init.pytorch:
        raise ValueError("set only one of config.init.checkpoint and config.init.pytorch")
    if init.checkpoint:
        state = nnx.state(model)
        restored = Checkpointer(init.checkpoint, keep_best=0).restore("latest", model=abstract_like(state))
        nnx.update(model, restored["model"])
        logger.info("initialised from orbax checkpoint %s (step %d)", init.checkpoint, restored["step"])
    elif init.pytorch:
        report = load_pytorch(model, init.pytorch, init.pytorch_layout)
        logger.info("initialised from %s (%s layout): %s", init.pytorch, init.pytorch_layout, report)
        if report.unexpected:
            logger.info("skipped checkpoint keys: %s", ", ".join(report.unexpected[:20]) +
                        (" ..." if len(report.unexpected) > 20 else ""))
        if report.missing:
            logger.info("kept initial values for: %s", ", ".join(report.missing[:20]) +
                        (" ..." if len(report.missing) > 20 else ""))
    jax.block_until_ready(nnx.state(model))
