"""Squeeze-and-excitation (Hu et al., CVPR 2018), a comparison block for PSA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers import initializers as inits
from psa_jax.layers.conv import Conv2d

__all__ = ["SqueezeExcitation"]


def reduced_channels(channels: int, reduction: int) -> int:
    """C // r, at least 1 (the bottleneck width of SE / CBAM / GC)."""
    if reduction < 1:
        raise ValueError(f"reduction={reduction} must be >= 1")
    return max(1, channels // reduction)


class SqueezeExcitation(nnx.Module):
    """`y = x * sigmoid(W2 relu(W1 GAP(x) + b1) + b2)`; W1: C -> C/r, W2: C/r -> C (1x1, with bias).

    Input and output (B, H, W, C). Parameters `fc1`, `fc2` (1x1 convolutions on the pooled map).

    Args:
      channels: C.
      reduction: r (16 in the paper).
      init: 'reference' (PyTorch default) or 'hrnet' (conv weights N(0, 1e-3)).
    """

    def __init__(self, channels: int, *, reduction: int = 16, init: inits.InitName = "reference",
                 dtype: jnp.dtype | None = None, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        inits.check_init_name(init)
        self.channels = channels
        self.dtype = dtype
        mid = reduced_channels(channels, reduction)
        kernel_init = inits.torch_default_kernel if init == "reference" else inits.hrnet_normal
        kw = dict(use_bias=True, kernel_init=kernel_init, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Conv2d(channels, mid, 1, **kw)
        self.fc2 = Conv2d(mid, channels, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        if x.ndim != 4:
            raise ValueError(f"SqueezeExcitation expects x of rank 4 (B, H, W, C), got shape {x.shape}")
        dtype = self.dtype or x.dtype
        s = jnp.mean(x, axis=(1, 2), keepdims=True, dtype=jnp.float32)
        s = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(s))))
        return x.astype(dtype) * s.astype(dtype)
