"""Non-local block, embedded-Gaussian form (Wang et al., CVPR 2018), a comparison block for PSA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers import initializers as inits
from psa_jax.layers.conv import Conv2d
from psa_jax.layers.norm import BatchNorm

__all__ = ["NonLocal"]


class NonLocal(nnx.Module):
    """`z = x + BN(W_z y)`, `y_i = sum_j softmax_j(theta(x_i) . phi(x_j)) g(x_j)`.

    theta, phi, g: 1x1 convs C -> C/2 (with bias); W_z: 1x1 C/2 -> C (with bias) followed by a
    BatchNorm whose scale starts at zero, so the block starts as the identity (the reference's
    initialisation). With `sub_sample=True` (the reference default) phi and g are 2x2 max-pooled,
    dividing the N x N attention cost by 4. Memory grows with N^2: meant for low resolutions.
    Input and output (B, H, W, C). Parameters `theta`, `phi`, `g`, `w_z`, `bn`.
    """

    def __init__(self, channels: int, *, sub_sample: bool = True, init: inits.InitName = "reference",
                 dtype: jnp.dtype | None = None, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        inits.check_init_name(init)
        if channels < 2:
            raise ValueError(f"channels={channels}: the non-local block halves the channels, need >= 2")
        self.channels = channels
        self.sub_sample = sub_sample
        self.dtype = dtype
        inter = channels // 2
        kernel_init = inits.torch_default_kernel if init == "reference" else inits.hrnet_normal
        kw = dict(use_bias=True, kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.theta = Conv2d(channels, inter, 1, **kw)
        self.phi = Conv2d(channels, inter, 1, **kw)
        self.g = Conv2d(channels, inter, 1, **kw)
        self.w_z = Conv2d(inter, channels, 1, **kw)
        self.bn = BatchNorm(channels, dtype=dtype, param_dtype=param_dtype, scale_init=inits.zeros, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        if x.ndim != 4:
            raise ValueError(f"NonLocal expects x of rank 4 (B, H, W, C), got shape {x.shape}")
        b, h, w, _ = x.shape
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        theta = self.theta(x).reshape(b, h * w, -1)
        phi, g = self.phi(x), self.g(x)
        if self.sub_sample and h >= 2 and w >= 2:
            pool = lambda t: nnx.max_pool(t, (2, 2), strides=(2, 2))  # noqa: E731
            phi, g = pool(phi), pool(g)
        phi = phi.reshape(b, -1, phi.shape[-1])
        g = g.reshape(b, -1, g.shape[-1])
        logits = jnp.einsum("bid,bjd->bij", theta, phi, preferred_element_type=jnp.float32)
        attn = jax.nn.softmax(logits, axis=-1).astype(dtype)
        y = jnp.einsum("bij,bjd->bid", attn, g).reshape(b, h, w, -1)
        return x + self.bn(self.w_z(y))
