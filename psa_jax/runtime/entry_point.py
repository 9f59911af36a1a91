"""What train.py and eval.py do first when run from the command line."""

from __future__ import annotations

import logging
import os

from psa_jax.runtime import xla_flags

__all__ = ["start_process"]

# Where compiled programs are kept between runs (override with $PSA_JAX_XLA_CACHE).
DEFAULT_XLA_CACHE = os.path.expanduser("~/.cache/psa_jax/xla")


def start_process() -> None:
    """CPU-only XLA flags and the persistent compilation cache (before the JAX backend starts),
    then INFO logging with orbax/absl's per-save chatter turned down."""
    xla_flags.configure_xla(cache_dir=os.environ.get("PSA_JAX_XLA_CACHE", DEFAULT_XLA_CACHE))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
