"""Validation of the user-facing model options shared by every network constructor."""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

from psa_jax.layers.registry import ATTENTION_NAMES
from psa_jax.layers.xla_cpu import ProgramOptions
from psa_jax.models.blocks import ModelOptions

Placement = Literal["basic", "all_residual"]
PLACEMENTS: tuple[str, ...] = ("basic", "all_residual")

__all__ = ["Placement", "PLACEMENTS", "model_options"]


def model_options(attention: str, placement: str, dtype: jnp.dtype | None, param_dtype: jnp.dtype,
                  program: str | ProgramOptions = "plain") -> ModelOptions:
    """Checks `attention` / `placement` / `program` and returns the block options.

    placement: 'basic' puts the attention after conv1-BN-ReLU of every BasicBlock of stages 2-4
    (the official PSA code); 'all_residual' also after the 3x3 conv-BN-ReLU of every Bottleneck
    (the paper's text: "after the first 3x3 convolution in every residual block").
    program: 'plain' (default), 'xla_cpu' or a `psa_jax.layers.xla_cpu.ProgramOptions`: the
    value-identical program variant the network is built as (see `psa_jax.layers.xla_cpu`).
    """
    if attention not in ATTENTION_NAMES:
        raise ValueError(f"unknown attention {attention!r}; valid names: {', '.join(ATTENTION_NAMES)}")
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; valid: {', '.join(PLACEMENTS)}")
    return ModelOptions(attention=attention, attention_in_bottleneck=placement == "all_residual",
                        dtype=dtype, param_dtype=param_dtype, program=program)
