"""Global-context block (GCNet; Cao et al., ICCVW 2019), a comparison block for PSA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers import initializers as inits
from psa_jax.layers.conv import Conv2d
from psa_jax.layers.norm import LayerNorm
from psa_jax.layers.squeeze_excitation import reduced_channels

__all__ = ["GlobalContext"]


class GlobalContext(nnx.Module):
    """`y = x + W2 relu(LN(W1 c))`, `c = sum_n softmax_n(w_k . x_n + b_k) x_n` (attention pooling).

    Context modelling with a 1x1 C -> 1 key (`conv_mask`, with bias), a bottleneck transform
    C -> C/r -> C (1x1 convs with bias, LayerNorm over C/r, ReLU) and fusion by addition, as in
    the GCNet reference (`ratio = 1/16`, pooling 'att', fusion 'channel_add').
    Input and output (B, H, W, C). Parameters `conv_mask`, `transform_in`, `transform_norm`,
    `transform_out`.
    """

    def __init__(self, channels: int, *, reduction: int = 16, init: inits.InitName = "reference",
                 dtype: jnp.dtype | None = None, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        inits.check_init_name(init)
        self.channels = channels
        self.dtype = dtype
        mid = reduced_channels(channels, reduction)
        kernel_init = inits.torch_default_kernel if init == "reference" else inits.hrnet_normal
        kw = dict(use_bias=True, kernel_init=kernel_init, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)
        self.conv_mask = Conv2d(channels, 1, 1, **kw)
        self.transform_in = Conv2d(channels, mid, 1, **kw)
        self.transform_norm = LayerNorm(mid, dtype=jnp.float32, param_dtype=param_dtype)
        self.transform_out = Conv2d(mid, channels, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        if x.ndim != 4:
            raise ValueError(f"GlobalContext expects x of rank 4 (B, H, W, C), got shape {x.shape}")
        b, h, w, c = x.shape
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        self.conv_mask.record_macs(h, w)
        logits = jnp.einsum("bhwc,c->bhw", x, self.conv_mask.matrix(dtype)[:, 0], preferred_element_type=jnp.float32)
        logits = logits + self.conv_mask.bias[...][0]
        p = jax.nn.softmax(logits.reshape(b, h * w), axis=-1).reshape(b, h, w)
        context = jnp.einsum("bhw,bhwc->bc", p.astype(dtype), x, preferred_element_type=jnp.float32)
        t = self.transform_out(jax.nn.relu(self.transform_norm(self.transform_in(context[:, None, None, :]))))
        return x + t.astype(dtype)
