"""Polarized Self-Attention (Liu et al., arXiv 2107.00782), NHWC, Flax NNX.

How to build each variant (the formulations and sources are described in docs/psa.md):

    PSA_p(C)                          official parallel block   (registry name 'psa_p')
    PSA_s(C)                          official sequential block ('psa_s')
    PSA_p(C, formulation='paper')     the published equations, parallel   ('psa_p_paper')
    PSA_s(C, formulation='paper')     the published equations, sequential ('psa_s_paper')

`PSA_p` / `PSA_s` are `PolarizedSelfAttention` with the layout fixed, the class that the registry
(`psa_jax.layers.make_attention`) builds and that code choosing the layout at run time uses. Its
parts are the two branches, `ChannelOnlyAttention` and `SpatialOnlyAttention`, built with the
same (layout, formulation) words and usable on their own. `psa_macs` gives the block's
multiply-adds in HRNet's counting convention from shapes alone; the forward passes hold only the
math and report that count to an active `mac_counter.count_conv_macs` through a decorator.

Notation: x (B, H, W, C), N = H*W, W_* bias-free 1x1 convolutions unless stated; equation numbers
are the paper's (Sec. 3.1, arXiv v2).

Channel-only branch, A_ch (B, 1, 1, C)                                              paper Eq. (1)
    official  A_ch = sigmoid(W_up(W_v^r(x) . softmax_N(W_q^r(x))))      W_q^r: C->1, W_v^r: C->C/2
              W_up: PSA_p a 1x1 C/2->C; PSA_s conv(C/2->C/8, +b) -> LN -> ReLU -> conv(C/8->C, +b)
    paper     A_ch = sigmoid(LN_C(W_z(W_v^r(x) . softmax_N(W_q^r(x)))))  W_z: C/2->C, LayerNorm over C
Spatial-only branch, A_sp (B, H, W, 1), G = GAP(W_q^l(x)) (B, C/2)          paper Eqs. (4), (5)
    official PSA_p  A_sp = sigmoid(softmax_N(G . W_v^l(x)))              softmax over positions after the product
    official PSA_s  A_sp = sigmoid(G . softmax_N(W_v^l(x)))              softmax over positions of each C/2 row
    paper           A_sp = sigmoid(softmax_{C/2}(G) . W_v^l(x))          softmax over the pooled query
Compositions (no residual inside PSA)                                       paper Eqs. (3), (6)-(8)
    parallel    PSA_p(x) = x * A_ch(x) + x * A_sp(x)
    sequential  PSA_s(x) = x1 * A_sp(x1),  x1 = x * A_ch(x)

Reference code: `DeLightCMU/PSA: semantic-segmentation/network/PSA.py`, classes `PSA_p` and
`PSA_s`; its `spatial_pool` is the channel-only branch here, its `channel_pool` the spatial-only
one (the names are swapped relative to the paper). Parameters keep that file's attribute names,
so `psa_jax.convert.from_torch` loads its state_dicts directly.

Evaluation order: every product above is linear in x, so the 1x1 projections are applied to
pooled C-vectors instead of to (B, H, W, C/2) maps wherever that is mathematically equal
(sum_n p_n W_v x_n = W_v sum_n p_n x_n; G . W_v x_n = (W_v^T G) . x_n). Only official PSA_s's
spatial branch, whose softmax acts on every row of W_v^l(x), needs the full projection.
Softmaxes, pooling, normalisation and sigmoids run in fp32 whatever the compute dtype.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers import initializers as inits
from psa_jax.layers.conv import Conv2d
from psa_jax.layers.norm import LayerNorm

__all__ = [
    "ChannelOnlyAttention", "SpatialOnlyAttention", "PolarizedSelfAttention", "PSA_p", "PSA_s",
    "channel_only", "spatial_only", "Layout", "Formulation", "LAYOUTS", "FORMULATIONS",
]

Layout = Literal["parallel", "sequential"]
Formulation = Literal["official", "paper"]
LAYOUTS: tuple[str, ...] = ("parallel", "sequential")
FORMULATIONS: tuple[str, ...] = ("official", "paper")
_F32 = jnp.float32


def _check_args(channels: int, formulation: str, layout: str | None = None) -> None:
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation={formulation!r} is not one of {FORMULATIONS}")
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    if not isinstance(channels, int) or channels < 2 or channels % 2:
        raise ValueError(f"channels={channels!r}: PSA halves the channels (C/2 query/value "
                         "projections), so channels must be an even integer >= 2")
    if formulation == "official" and layout == "sequential" and channels // 2 // 4 < 1:
        raise ValueError(f"channels={channels}: official PSA_s reduces C/2 by 4 in conv_up, so "
                         "channels must be >= 8")


def _check_input(x: jax.Array, channels: int, who: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{who} expects x of rank 4 (B, H, W, C) in NHWC, got shape {x.shape}")
    if x.shape[-1] != channels:
        raise ValueError(f"{who} was built for channels={channels}, got x with {x.shape[-1]} channels "
                         f"(shape {x.shape})")


def _pointwise(conv: Conv2d, z: jax.Array) -> jax.Array:
    """A 1x1 `Conv2d` applied to pooled vectors (B, C_in) -> (B, C_out) in fp32, as a matrix
    product (the same numbers as the convolution of a (B, 1, 1, C_in) map, without a convolution
    op and its layout transposes in the backward pass); the MAC counter is told a 1x1 map."""
    conv.record_macs(1, 1)
    y = z.astype(_F32) @ conv.matrix(_F32)
    return y if conv.bias is None else y + conv.bias[...].astype(_F32)


def _softmax_hw(logits: jax.Array) -> jax.Array:
    """Softmax over the H, W axes of a (B, H, W, ...) fp32 array."""
    b, h, w = logits.shape[:3]
    flat = logits.reshape(b, h * w, *logits.shape[3:])
    return jax.nn.softmax(flat, axis=1).reshape(logits.shape)


class _BottleneckUp(nnx.Module):
    """Official PSA_s `conv_up`: Conv(C/2->C/8, +b) -> LayerNorm([C/8,1,1]) -> ReLU -> Conv(C/8->C, +b).

    PyTorch stores it as an `nn.Sequential`, so its children are named `0`, `1`, `3`.
    """

    torch_names = {"reduce": "0", "norm": "1", "expand": "3"}

    def __init__(self, in_channels: int, out_channels: int, *, kernel_init: nnx.Initializer, rngs: nnx.Rngs):
        mid = in_channels // 4
        self.reduce = Conv2d(in_channels, mid, 1, use_bias=True, kernel_init=kernel_init, dtype=_F32, rngs=rngs)
        self.norm = LayerNorm(mid, epsilon=1e-5, dtype=_F32)
        self.expand = Conv2d(mid, out_channels, 1, use_bias=True, kernel_init=kernel_init, dtype=_F32, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        """(B, C/2) -> (B, C): the 1x1 convolutions of a 1x1 map, applied as matrix products."""
        h = _pointwise(self.reduce, z)
        return _pointwise(self.expand, jax.nn.relu(self.norm(h)))


class ChannelOnlyAttention(nnx.Module):
    """The channel-only branch A_ch (official `PSA_*.spatial_pool`).

    Parameters (PyTorch names): `conv_q_right` (1x1, C->1), `conv_v_right` (1x1, C->C/2),
    `conv_up` (official parallel: 1x1 C/2->C; official sequential: the C/8 bottleneck; paper:
    1x1 C/2->C) and, in the paper formulation, `norm` (LayerNorm over C).

    Args:
      channels: C (even).
      formulation: 'official' or 'paper'.
      bottleneck: official PSA_s's `conv_up` (ignored by the paper formulation).
      init: 'reference' (kaiming-normal fan-in on q/v, PyTorch default on conv_up) or 'hrnet'
        (every conv weight N(0, 1e-3), as HRNet's `init_weights` leaves it; biases keep PyTorch's).
      dtype: compute dtype of the (B, H, W, C) products; pooled vectors stay fp32.
    """

    def __init__(self, channels: int, *, formulation: Formulation = "official", bottleneck: bool = False,
                 init: inits.InitName = "reference", dtype: jnp.dtype | None = None,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        _check_args(channels, formulation, "sequential" if bottleneck else "parallel")
        inits.check_init_name(init)
        self.channels = channels
        self.formulation = formulation
        self.dtype = dtype
        qv_init = inits.kaiming_normal_fan_in if init == "reference" else inits.hrnet_normal
        up_init = inits.torch_default_kernel if init == "reference" else inits.hrnet_normal
        half = channels // 2
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.conv_q_right = Conv2d(channels, 1, 1, kernel_init=qv_init, **kw)
        self.conv_v_right = Conv2d(channels, half, 1, kernel_init=qv_init, **kw)
        if formulation == "official" and bottleneck:
            self.conv_up = _BottleneckUp(half, channels, kernel_init=up_init, rngs=rngs)
            self.norm = None
        else:
            self.conv_up = Conv2d(half, channels, 1, kernel_init=up_init, dtype=_F32, **kw)
            self.norm = LayerNorm(channels, epsilon=1e-5, dtype=_F32) if formulation == "paper" else None

    def weights(self, x: jax.Array) -> jax.Array:
        """A_ch: (B, H, W, C) -> (B, 1, 1, C) in fp32."""
        _check_input(x, self.channels, type(self).__name__)
        h, w = x.shape[1:3]
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        self.conv_q_right.record_macs(h, w)
        self.conv_v_right.record_macs(h, w)
        q = jnp.einsum("bhwc,c->bhw", x, self.conv_q_right.matrix(dtype)[:, 0], preferred_element_type=_F32)
        p = _softmax_hw(q)                                                               # (B, H, W)
        pooled = jnp.einsum("bhw,bhwc->bc", p.astype(dtype), x, preferred_element_type=_F32)
        z = pooled @ self.conv_v_right.matrix(_F32)                                      # (B, C/2)
        z = self.conv_up(z) if isinstance(self.conv_up, _BottleneckUp) else _pointwise(self.conv_up, z)
        if self.norm is not None:
            z = self.norm(z)
        return jax.nn.sigmoid(z)[:, None, None, :]                                       # (B, 1, 1, C)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x * A_ch(x): (B, H, W, C) -> (B, H, W, C)."""
        dtype = self.dtype or x.dtype
        return x.astype(dtype) * self.weights(x).astype(dtype)


class SpatialOnlyAttention(nnx.Module):
    """The spatial-only branch A_sp (official `PSA_*.channel_pool`).

    Parameters (PyTorch names): `conv_q_left` ("g", 1x1 C->C/2) and `conv_v_left` ("theta",
    1x1 C->C/2).

    Args:
      channels: C (even).
      formulation: 'official' or 'paper'.
      softmax_rows: official PSA_s's softmax over positions of every row of W_v^l(x) (before the
        product with G); otherwise official PSA_p's softmax over positions after it. Ignored by
        the paper formulation (softmax over the C/2 entries of G).
      init: see `ChannelOnlyAttention`.
    """

    def __init__(self, channels: int, *, formulation: Formulation = "official", softmax_rows: bool = False,
                 init: inits.InitName = "reference", dtype: jnp.dtype | None = None,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        _check_args(channels, formulation)
        inits.check_init_name(init)
        self.channels = channels
        self.formulation = formulation
        self.softmax_rows = softmax_rows
        self.dtype = dtype
        qv_init = inits.kaiming_normal_fan_in if init == "reference" else inits.hrnet_normal
        kw = dict(kernel_init=qv_init, param_dtype=param_dtype, rngs=rngs)
        self.conv_q_left = Conv2d(channels, channels // 2, 1, **kw)
        self.conv_v_left = Conv2d(channels, channels // 2, 1, **kw)

    def weights(self, x: jax.Array, channel_scale: jax.Array | None = None) -> jax.Array:
        """A_sp of `x * channel_scale`: (B, H, W, C) [, (B, C)] -> (B, H, W, 1) in fp32.

        `channel_scale` lets the sequential layout evaluate the branch on x1 = x * A_ch without
        materialising x1 (the projections absorb the per-channel scale).
        """
        _check_input(x, self.channels, type(self).__name__)
        h, w = x.shape[1:3]
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        self.conv_q_left.record_macs(h, w)
        self.conv_v_left.record_macs(h, w)
        mean = jnp.mean(x, axis=(1, 2), dtype=_F32)                                       # (B, C)
        wq = self.conv_q_left.matrix(_F32)                                               # (C, C/2)
        wv = self.conv_v_left.matrix(_F32)
        if channel_scale is not None:
            channel_scale = channel_scale.astype(_F32)
            mean = mean * channel_scale
        g = mean @ wq                                                                    # (B, C/2) = GAP(W_q x)
        if self.formulation == "official" and self.softmax_rows:
            if channel_scale is None:
                theta = jnp.einsum("bhwc,cd->bhwd", x, wv.astype(dtype), preferred_element_type=_F32)
            else:
                wv_b = channel_scale[:, :, None] * wv                                    # (B, C, C/2)
                theta = jnp.einsum("bhwc,bcd->bhwd", x, wv_b.astype(dtype), preferred_element_type=_F32)
            ctx = jnp.einsum("bhwd,bd->bhw", _softmax_hw(theta), g)
        else:
            if self.formulation == "paper":
                g = jax.nn.softmax(g, axis=-1)
            k = g @ wv.T                                                                 # (B, C) = W_v^T G
            if channel_scale is not None:
                k = k * channel_scale
            ctx = jnp.einsum("bhwc,bc->bhw", x, k.astype(dtype), preferred_element_type=_F32)
            if self.formulation == "official":
                ctx = _softmax_hw(ctx)
        return jax.nn.sigmoid(ctx)[..., None]

    def __call__(self, x: jax.Array) -> jax.Array:
        """x * A_sp(x): (B, H, W, C) -> (B, H, W, C)."""
        dtype = self.dtype or x.dtype
        return x.astype(dtype) * self.weights(x).astype(dtype)


class PolarizedSelfAttention(nnx.Module):
    """Polarized Self-Attention, parallel (PSA_p) or sequential (PSA_s) layout.

    `y = x * A_ch(x) + x * A_sp(x)` (parallel) or `y = x1 * A_sp(x1), x1 = x * A_ch(x)`
    (sequential). Input and output (B, H, W, C), any H, W >= 1.

    The branches are the submodules `channel_only` and `spatial_only`; their parameters carry the
    official PyTorch names (`conv_q_right`, `conv_v_right`, `conv_up`, `conv_q_left`,
    `conv_v_left`), and `psa_jax.convert.from_torch` maps an official `PSA_p`/`PSA_s` state_dict
    onto this module directly.

    Args:
      channels: C, even (>= 8 for official sequential).
      layout: 'parallel' or 'sequential'.
      formulation: 'official' (the released code; default) or 'paper' (the published equations).
      init: 'reference' (default: PSA.py's `reset_parameters`, kaiming-normal fan-in on the q/v
        convolutions, PyTorch's default on `conv_up`) or 'hrnet' (N(0, 1e-3) on every conv weight,
        which is what the official segmentation network trained from, since HRNet's
        `init_weights` overwrites the block's own init; then PSA_p starts as identity and PSA_s
        as about 0.25 x).
      dtype: compute dtype (e.g. jnp.bfloat16); None follows the input. Parameters are stored in
        `param_dtype`; softmax, pooling, normalisation and sigmoids run in fp32.
      rngs: `nnx.Rngs` for initialisation.
    """

    torch_names = {"channel_only": None, "spatial_only": None}  # flattened: PyTorch keeps both in one module

    def __init__(self, channels: int, *, layout: Layout = "parallel", formulation: Formulation = "official",
                 init: inits.InitName = "reference", dtype: jnp.dtype | None = None,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        _check_args(channels, formulation, layout)
        self.channels = channels
        self.layout = layout
        self.formulation = formulation
        self.dtype = dtype
        sequential_official = layout == "sequential" and formulation == "official"
        kw = dict(formulation=formulation, init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.channel_only = ChannelOnlyAttention(channels, bottleneck=sequential_official, **kw)
        self.spatial_only = SpatialOnlyAttention(channels, softmax_rows=sequential_official, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        _check_input(x, self.channels, type(self).__name__)
        dtype = self.dtype or x.dtype
        a_ch = self.channel_only.weights(x)                                              # (B, 1, 1, C)
        if self.layout == "parallel":
            a_sp = self.spatial_only.weights(x)                                          # (B, H, W, 1)
            gate = a_ch + a_sp                      # x * A_ch + x * A_sp = x * (A_ch + A_sp)
        else:
            a_sp = self.spatial_only.weights(x, channel_scale=a_ch[:, 0, 0, :])          # A_sp(x * A_ch)
            gate = a_ch * a_sp                      # (x * A_ch) * A_sp
        return x.astype(dtype) * gate.astype(dtype)


class PSA_p(PolarizedSelfAttention):  # noqa: N801  (the official class name)
    """`PolarizedSelfAttention(channels, layout='parallel', ...)`; official formulation by default."""

    def __init__(self, channels: int, *, formulation: Formulation = "official", **kwargs):
        super().__init__(channels, layout="parallel", formulation=formulation, **kwargs)


class PSA_s(PolarizedSelfAttention):  # noqa: N801
    """`PolarizedSelfAttention(channels, layout='sequential', ...)`; official formulation by default."""

    def __init__(self, channels: int, *, formulation: Formulation = "official", **kwargs):
        super().__init__(channels, layout="sequential", formulation=formulation, **kwargs)


def channel_only(channels: int, *, formulation: Formulation = "official", bottleneck: bool = False,
                 **kwargs) -> ChannelOnlyAttention:
    """The channel-only branch on its own: a module computing `x * A_ch(x)`."""
    return ChannelOnlyAttention(channels, formulation=formulation, bottleneck=bottleneck, **kwargs)


def spatial_only(channels: int, *, formulation: Formulation = "official", softmax_rows: bool = False,
                 **kwargs) -> SpatialOnlyAttention:
    """The spatial-only branch on its own: a module computing `x * A_sp(x)`."""
    return SpatialOnlyAttention(channels, formulation=formulation, softmax_rows=softmax_rows, **kwargs)
