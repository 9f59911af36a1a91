"""Convolutional Block Attention Module (Woo et al., ECCV 2018), a comparison block for PSA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers import initializers as inits
from psa_jax.layers.conv import Conv2d
from psa_jax.layers.norm import BatchNorm
from psa_jax.layers.squeeze_excitation import reduced_channels

__all__ = ["CBAM"]


class CBAM(nnx.Module):
    """Channel attention then spatial attention, applied in sequence.

    Channel: `A_c = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`, a shared MLP C -> C/r -> C (1x1
    convs with bias, ReLU between); `x1 = x * A_c`.
    Spatial: `A_s = sigmoid(BN(conv7x7([max_c(x1), mean_c(x1)])))` (2 -> 1 channel, no bias);
    `y = x1 * A_s`. Input and output (B, H, W, C).

    Parameters: `mlp_in`, `mlp_out`, `spatial_conv`, `spatial_bn`.
    """

    def __init__(self, channels: int, *, reduction: int = 16, kernel_size: int = 7,
                 init: inits.InitName = "reference", dtype: jnp.dtype | None = None,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        inits.check_init_name(init)
        self.channels = channels
        self.dtype = dtype
        mid = reduced_channels(channels, reduction)
        kernel_init = inits.torch_default_kernel if init == "reference" else inits.hrnet_normal
        kw = dict(kernel_init=kernel_init, param_dtype=param_dtype, rngs=rngs)
        self.mlp_in = Conv2d(channels, mid, 1, use_bias=True, dtype=jnp.float32, **kw)
        self.mlp_out = Conv2d(mid, channels, 1, use_bias=True, dtype=jnp.float32, **kw)
        self.spatial_conv = Conv2d(2, 1, kernel_size, dtype=dtype, **kw)
        self.spatial_bn = BatchNorm(1, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)

    def _mlp(self, v: jax.Array) -> jax.Array:
        return self.mlp_out(jax.nn.relu(self.mlp_in(v)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        if x.ndim != 4:
            raise ValueError(f"CBAM expects x of rank 4 (B, H, W, C), got shape {x.shape}")
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        avg = jnp.mean(x, axis=(1, 2), keepdims=True, dtype=jnp.float32)
        mx = jnp.max(x, axis=(1, 2), keepdims=True).astype(jnp.float32)
        x1 = x * jax.nn.sigmoid(self._mlp(avg) + self._mlp(mx)).astype(dtype)
        pooled = jnp.concatenate([jnp.max(x1, -1, keepdims=True),
                                  jnp.mean(x1, -1, keepdims=True, dtype=jnp.float32).astype(dtype)], -1)
        a_s = jax.nn.sigmoid(self.spatial_bn(self.spatial_conv(pooled).astype(jnp.float32)))
        return x1 * a_s.astype(dtype)
