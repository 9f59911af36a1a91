"""Normalisation layers with fp32 statistics whatever the compute dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers import initializers as inits

__all__ = ["BatchNorm", "LayerNorm"]


class BatchNorm(nnx.Module):
    """BatchNorm over all axes but the last (NHWC), with PyTorch `nn.BatchNorm2d` semantics.

    Training mode (`use_running_average=False`) normalises with the batch statistics and updates
    the running ones as PyTorch does: `running = (1 - momentum) * running + momentum * batch`,
    with the *unbiased* batch variance for `running_var` (`n / (n - 1)`). Under `jax.jit` with a
    batch-sharded input the statistics are over the global batch (SyncBN); there is no
    `axis_name`. `model.eval()` / `model.train()` switch the mode.

    Parameters: `scale`, `bias` (C,) (PyTorch `weight`, `bias`); batch stats `mean`, `var` (C,)
    (PyTorch `running_mean`, `running_var`).

    Args:
      num_features: C.
      momentum: PyTorch's convention (0.1; Flax's `momentum=0.9` means the same).
      epsilon: 1e-5 as PyTorch.
      dtype: compute dtype of the output (None: the input's); statistics are always fp32.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5,
                 use_running_average: bool = False, dtype: jnp.dtype | None = None,
                 param_dtype: jnp.dtype = jnp.float32, scale_init: nnx.Initializer = inits.ones,
                 rngs: nnx.Rngs | None = None):
        self.num_features = num_features
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average
        self.dtype = dtype
        del rngs  # deterministic initialisation; kept for a uniform constructor signature
        self.scale = nnx.Param(scale_init(None, (num_features,), param_dtype))
        self.bias = nnx.Param(inits.zeros(None, (num_features,), param_dtype))
        self.mean = nnx.BatchStat(inits.zeros(None, (num_features,), jnp.float32))
        self.var = nnx.BatchStat(inits.ones(None, (num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., C) -> (..., C)."""
        if x.shape[-1] != self.num_features:
            raise ValueError(f"BatchNorm expects {self.num_features} channels, got input {x.shape}")
        dtype = self.dtype or x.dtype
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = jnp.mean(xf, axes)
            var = jnp.maximum(jnp.mean(jnp.square(xf), axes) - jnp.square(mean), 0.0)
            n = x.size // x.shape[-1]
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            # `set_value`, not `self.mean[...] = ...`: the indexed form compares the new value's
            # sharding, which on a tracer builds an error message by walking the whole trace
            # (flax 0.12 `Variable.set_value(index=...)`): 90 of the 120 s of tracing W32.
            self.mean.set_value((1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean))
            self.var.set_value((1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased))
        a = self.scale[...].astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
        b = self.bias[...].astype(jnp.float32) - mean * a
        return x.astype(dtype) * a.astype(dtype) + b.astype(dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, statistics in fp32.

    Parameters `scale`, `bias` (C,). PyTorch's `LayerNorm([C, 1, 1])` on a (B, C, 1, 1) tensor
    (PSA_s) is this on (B, 1, 1, C); its weight (C, 1, 1) is reshaped on conversion.
    """

    def __init__(self, num_features: int, *, epsilon: float = 1e-5, dtype: jnp.dtype | None = None,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs | None = None):
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.scale = nnx.Param(inits.ones(None, (num_features,), param_dtype))
        self.bias = nnx.Param(inits.zeros(None, (num_features,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., C) -> (..., C)."""
        dtype = self.dtype or x.dtype
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, -1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), -1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)
