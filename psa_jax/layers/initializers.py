"""Weight initialisers that restate the PyTorch reference codes' conventions for HWIO kernels.

All return Flax-style initialisers `init(key, shape, dtype) -> array`. Kernels are HWIO, so
`fan_in = kh * kw * in_channels`.

| name | distribution | reference |
| --- | --- | --- |
| `torch_default_kernel` | U(+-1/sqrt(fan_in)) (`kaiming_uniform_(a=sqrt(5))`) | `torch.nn.Conv2d.reset_parameters` |
| `torch_default_bias(fan_in)` | U(+-1/sqrt(fan_in)) | same |
| `kaiming_normal_fan_in` | N(0, 2/fan_in) (`kaiming_normal_(mode='fan_in', nonlinearity='relu')`) | `PSA.py::kaiming_init(mode='fan_in')` |
| `hrnet_normal` | N(0, 0.001^2) | HRNet `init_weights` (pose, seg, NVIDIA hrnetv2) |

Sampling: with a concrete key (eager model construction) values are drawn by NumPy's PCG64
seeded from the key's bits, because eager `jax.random` compiles one small program per distinct
parameter shape, which makes building a large network slow. Under a trace (e.g. sharded construction inside `nnx.jit`), `jax.random` is used. Both paths
are deterministic functions of the key and draw from the same distribution.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Initializer = nnx.Initializer
InitName = Literal["reference", "hrnet"]
INIT_NAMES: tuple[str, ...] = ("reference", "hrnet")

__all__ = ["torch_default_kernel", "torch_default_bias", "kaiming_normal_fan_in", "hrnet_normal", "normal",
           "uniform", "zeros", "ones", "check_init_name", "fan_in"]


def fan_in(shape: tuple[int, ...]) -> int:
    """Receptive field x input channels of an HWIO kernel (or the first axis of a matrix)."""
    return int(math.prod(shape[:-1])) if len(shape) > 1 else int(shape[0])


def _concrete(key: jax.Array) -> bool:
    return not isinstance(key, jax.core.Tracer)


def _numpy_rng(key: jax.Array) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def normal(stddev: float) -> Initializer:
    """N(0, stddev^2)."""
    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        if _concrete(key):
            return jnp.asarray(_numpy_rng(key).standard_normal(shape, np.float32) * stddev, dtype)
        return stddev * jax.random.normal(key, shape, dtype)
    return init


def uniform(bound: float) -> Initializer:
    """U(-bound, bound)."""
    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        if _concrete(key):
            return jnp.asarray(_numpy_rng(key).uniform(-bound, bound, shape).astype(np.float32), dtype)
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _fan_in_scaled(kind: str, gain2: float) -> Initializer:
    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        std = math.sqrt(gain2 / fan_in(shape))
        return (normal(std) if kind == "normal" else uniform(math.sqrt(3.0) * std))(key, shape, dtype)
    return init


torch_default_kernel: Initializer = _fan_in_scaled("uniform", 1.0 / 3.0)
kaiming_normal_fan_in: Initializer = _fan_in_scaled("normal", 2.0)
hrnet_normal: Initializer = normal(1e-3)


def torch_default_bias(fan_in_: int) -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default conv/linear bias."""
    return uniform(1.0 / math.sqrt(fan_in_))


def zeros(key: jax.Array | None, shape, dtype=jnp.float32) -> jax.Array:
    return jnp.asarray(np.zeros(shape, np.float32), dtype)


def ones(key: jax.Array | None, shape, dtype=jnp.float32) -> jax.Array:
    return jnp.asarray(np.ones(shape, np.float32), dtype)


def check_init_name(init: str) -> str:
    if init not in INIT_NAMES:
        raise ValueError(f"init={init!r} is not one of {INIT_NAMES}: 'reference' is the block's own "
                         "reference initialisation, 'hrnet' the N(0, 1e-3) of HRNet's init_weights")
    return init
