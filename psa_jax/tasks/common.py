"""Helpers every task shares: where the data live, work done once per job, the compute dtype."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from psa_jax.layers.xla_cpu import PROGRAMS, program_for_platform

__all__ = ["resolve_data_dir", "run_on_process_zero", "compute_dtype", "model_program"]


def resolve_data_dir(config: Any, workdir: str | os.PathLike) -> str:
    """`config.data.data_dir`, or WORKDIR/data when empty."""
    return config.data.data_dir or os.path.join(os.fspath(workdir), "data")


def run_on_process_zero(fn: Callable[[], Any], tag: str) -> None:
    """Runs `fn` on process 0 while the other processes wait (dataset preparation)."""
    if jax.process_index() == 0:
        fn()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(tag)


def compute_dtype(name: str):
    """'float32' | 'bfloat16' | 'float16' -> a jnp dtype (clear error otherwise)."""
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    if name not in dtypes:
        raise ValueError(f"config.model.dtype={name!r} is not one of {sorted(dtypes)}")
    return dtypes[name]


def model_program(program: str, platform: str | None) -> str:
    """`config.model.program` -> the program variant a network is built as.

    'auto' picks from `platform`, the platform of the devices the step will run on ('cpu' ->
    'xla_cpu', anything else -> 'plain'; no platform -> 'plain'); 'plain' and 'xla_cpu' are taken
    as they are. The variants compute the same values (`psa_jax.layers.xla_cpu`).
    """
    if program == "auto":
        return program_for_platform(platform) if platform else "plain"
    if program not in PROGRAMS:
        raise ValueError(f"config.model.program={program!r} is not one of {['auto', *PROGRAMS]}")
    return program
