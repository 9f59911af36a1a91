"""Attention blocks (NHWC, Flax NNX): Polarized Self-Attention and the blocks it is compared with."""

from psa_jax.layers.cbam import CBAM
from psa_jax.layers.conv import Conv2d
from psa_jax.layers.global_context import GlobalContext
from psa_jax.layers.non_local import NonLocal
from psa_jax.layers.norm import BatchNorm, LayerNorm
from psa_jax.layers.psa import (
    ChannelOnlyAttention,
    PolarizedSelfAttention,
    PSA_p,
    PSA_s,
    SpatialOnlyAttention,
    psa_macs,
)
from psa_jax.layers.registry import ATTENTION_NAMES, Identity, make_attention
from psa_jax.layers.squeeze_excitation import SqueezeExcitation

__all__ = [
    "PSA_p", "PSA_s", "PolarizedSelfAttention", "ChannelOnlyAttention", "SpatialOnlyAttention", "psa_macs",
    "SqueezeExcitation", "CBAM", "GlobalContext", "NonLocal",
    "Identity", "make_attention", "ATTENTION_NAMES", "Conv2d", "BatchNorm", "LayerNorm",
]
