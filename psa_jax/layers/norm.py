"""Normalisation layers with fp32 statistics whatever the compute dtype."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers import xla_cpu
from psa_jax.layers import initializers as inits

__all__ = ["BatchNorm", "LayerNorm", "batch_norm_train"]

_F32 = jnp.float32


def _shift(x: jax.Array) -> jax.Array:
    """Per-channel shift K (C,) of `x` (N..., C) in fp32: its first sample, a constant for autodiff."""
    if x.size == 0:
        return jnp.zeros(x.shape[-1:], _F32)
    return jax.lax.stop_gradient(x[(0,) * (x.ndim - 1)].astype(_F32))


def _shifted(x: jax.Array) -> jax.Array:
    """d = x - K in fp32 (`_shift`): exact where x is within a factor 2 of K."""
    return x.astype(_F32) - _shift(x)


def _batch_stats(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """Rows [mean, a, b, 1/std, unbiased var, shift, mean - shift] (7, C) of `x` (N..., C), in fp32.

    Shifted one-pass statistics: with a per-channel shift K (the channel's first sample, a
    constant for autodiff), d = x - K, var = max(E[d^2] - E[d]^2, 0) and mean = K + E[d]. The
    plain one-pass E[x^2] - E[x]^2 cancels catastrophically in fp32 when a channel's mean is large
    against its spread (output errors of 1e-2 at mean 100 / std 0.5); shifted by a sample, |d| is
    of the order of the spread, and the two sums stay one pass over x (K costs no reduction). The
    normalised output is `(x - K) * a + b` with a = scale / std, b = bias - E[d] * a, so that no
    term of the size of the mean cancels there either. The rows travel as one array because
    XLA:CPU gives each separately consumed small vector its own kernel.
    """
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    shift = _shift(x)
    d = _shifted(x)
    mean_d = jnp.sum(d, axes) / n
    var = jnp.maximum(jnp.sum(d * d, axes) / n - mean_d * mean_d, 0.0)
    inv = jax.lax.rsqrt(var + epsilon)
    a = scale.astype(_F32) * inv
    b = bias.astype(_F32) - mean_d * a
    return jnp.stack([shift + mean_d, a, b, inv, var * (n / max(n - 1, 1)), shift, mean_d])


def _normalize(x: jax.Array, stats: jax.Array, dtype) -> jax.Array:
    return (x.astype(dtype) - stats[5].astype(dtype)) * stats[1].astype(dtype) + stats[2].astype(dtype)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode BatchNorm with a hand-written backward pass.

    x (N..., C), scale and bias (C,) -> (y (N..., C) in `dtype`, batch mean (C,), unbiased
    batch variance (C,)). Forward: `BatchNorm`'s numbers (`_batch_stats`). Backward (the standard
    BatchNorm gradient, as PyTorch's), with x_hat = (x - mean) / std and sums over the N axes:
        d_bias = sum(g),  d_scale = sum(g * x_hat),
        dx = scale / std * (g - d_bias / n - x_hat * d_scale / n).
    All in fp32 whatever `dtype`. It gives the autodiff path's gradients (to fp32 rounding) in
    fewer XLA:CPU kernels: autodiff spreads the statistics' small vector ops over many. `BatchNorm`
    uses it when built with a program whose `fused_batchnorm` is set (`psa_jax.layers.xla_cpu`).
    The mean and variance outputs feed the running statistics; their cotangents are ignored
    (callers stop their gradient). Reverse mode only (`jax.custom_vjp`).
    """
    return _batch_norm_fwd(x, scale, bias, epsilon, dtype)[0]


def _batch_norm_fwd(x, scale, bias, epsilon, dtype):
    stats = _batch_stats(x, scale, bias, epsilon)
    return (_normalize(x, stats, dtype), stats[0], stats[4]), (x, stats, scale)


def _batch_norm_bwd(epsilon, dtype, residuals, cotangents):
    del epsilon, dtype
    x, stats, scale = residuals
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    a, inv, mean_d = stats[1], stats[3], stats[6]
    g = cotangents[0].astype(_F32)
    # x - mean = d - E[d] with the forward's d = x - K (the same expression: XLA computes it once),
    # never x minus the rounded fp32 mean, which loses digits when the mean is large.
    d = _shifted(x)
    d_bias = jnp.sum(g, axes)
    d_scale = (jnp.sum(g * d, axes) - mean_d * d_bias) * inv
    c1 = -a * inv * d_scale / n
    coef = jnp.stack([a, c1, -a * d_bias / n - mean_d * c1])   # one small array, as above
    dx = g * coef[0] + d * coef[1] + coef[2]       # = g a + (x - mean) c1 - a d_bias / n
    return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nnx.Module):
    """BatchNorm over all axes but the last (NHWC), with PyTorch `nn.BatchNorm2d` semantics.

    Training mode (`use_running_average=False`) normalises with the batch statistics and updates
    the running ones as PyTorch does: `running = (1 - momentum) * running + momentum * batch`,
    with the *unbiased* batch variance for `running_var` (`n / (n - 1)`). Under `jax.jit` with a
    batch-sharded input the statistics are over the global batch (SyncBN); there is no
    `axis_name`. `model.eval()` / `model.train()` switch the mode. Built with `program='xla_cpu'`
    (or a `ProgramOptions` with `fused_batchnorm`), training mode runs `batch_norm_train`: same
    numbers, a hand-written backward pass in fewer XLA:CPU kernels.

    Parameters: `scale`, `bias` (C,) (PyTorch `weight`, `bias`); batch stats `mean`, `var` (C,)
    (PyTorch `running_mean`, `running_var`).

    Args:
      num_features: C.
      momentum: PyTorch's convention (0.1; Flax's `momentum=0.9` means the same).
      epsilon: 1e-5 as PyTorch.
      dtype: compute dtype of the output (None: the input's); statistics are always fp32.
      program: 'plain' (default: autodiff of the statistics), 'xla_cpu' or a
        `xla_cpu.ProgramOptions`; its `fused_batchnorm` selects `batch_norm_train`.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5,
                 use_running_average: bool = False, dtype: jnp.dtype | None = None,
                 param_dtype: jnp.dtype = jnp.float32, scale_init: nnx.Initializer = inits.ones,
                 program: str | xla_cpu.ProgramOptions = "plain", rngs: nnx.Rngs | None = None):
        self.num_features = num_features
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average
        self.dtype = dtype
        self.fused_vjp = xla_cpu.program_options(program).fused_batchnorm
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
            a = self.scale[...].astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
            b = self.bias[...].astype(jnp.float32) - mean * a
            return x.astype(dtype) * a.astype(dtype) + b.astype(dtype)
        if self.fused_vjp:
            y, mean, unbiased = batch_norm_train(x, self.scale[...], self.bias[...], self.epsilon, dtype)
        else:  # the same statistics, differentiated by autodiff
            stats = _batch_stats(x, self.scale[...], self.bias[...], self.epsilon)
            y, mean, unbiased = _normalize(x, stats, dtype), stats[0], stats[4]
        m = self.momentum
        # `set_value`, not `self.mean[...] = ...`: the indexed form compares the new value's
        # sharding, which on a tracer builds its error message by walking the whole trace so far
        # (flax `Variable.set_value(index=...)`), quadratic in the network size.
        self.mean.set_value((1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean))
        self.var.set_value((1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased))
        return y


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
