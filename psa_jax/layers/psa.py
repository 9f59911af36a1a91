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

Notation: x (B, H, W, C), N = H*W, W_* bias-free 1x1 convolutions unless stated; 'paper' rows
restate the published equations (arXiv 2107.00782, the section on the PSA block).

Channel-only branch, A_ch (B, 1, 1, C)                                       paper: channel-only
    official  A_ch = sigmoid(W_up(W_v^r(x) . softmax_N(W_q^r(x))))      W_q^r: C->1, W_v^r: C->C/2
              W_up: PSA_p a 1x1 C/2->C; PSA_s conv(C/2->C/8, +b) -> LN -> ReLU -> conv(C/8->C, +b)
    paper     A_ch = sigmoid(LN_C(W_z(W_v^r(x) . softmax_N(W_q^r(x)))))  W_z: C/2->C, LayerNorm over C
Spatial-only branch, A_sp (B, H, W, 1), G = GAP(W_q^l(x)) (B, C/2)   paper: spatial-only
    official PSA_p  A_sp = sigmoid(softmax_N(G . W_v^l(x)))              softmax over positions after the product
    official PSA_s  A_sp = sigmoid(G . softmax_N(W_v^l(x)))              softmax over positions of each C/2 row
    paper           A_sp = sigmoid(softmax_{C/2}(G) . W_v^l(x))          softmax over the pooled query
Compositions (no residual inside PSA)                                    paper: compositions
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
from psa_jax.layers.mac_counter import reports_conv_macs
from psa_jax.layers.norm import LayerNorm

__all__ = [
    "PSA_p", "PSA_s", "PolarizedSelfAttention", "ChannelOnlyAttention", "SpatialOnlyAttention",
    "psa_macs", "Layout", "Formulation",
]

Layout = Literal["parallel", "sequential"]
Formulation = Literal["official", "paper"]
_LAYOUTS: tuple[str, ...] = ("parallel", "sequential")
_FORMULATIONS: tuple[str, ...] = ("official", "paper")
_F32 = jnp.float32


def _check_args(channels: int, layout: str, formulation: str) -> None:
    if formulation not in _FORMULATIONS:
        raise ValueError(f"formulation={formulation!r} is not one of {_FORMULATIONS}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {_LAYOUTS}")
    if not isinstance(channels, int) or channels < 2 or channels % 2:
        raise ValueError(f"channels={channels!r}: PSA halves the channels (C/2 query/value "
                         "projections), so channels must be an even integer >= 2")


def _official_sequential(layout: str, formulation: str) -> bool:
    """Official PSA_s: bottleneck `conv_up` and the per-row spatial softmax."""
    return layout == "sequential" and formulation == "official"


def _check_bottleneck(channels: int, layout: str, formulation: str) -> None:
    if _official_sequential(layout, formulation) and channels // 2 // 4 < 1:
        raise ValueError(f"channels={channels}: official PSA_s reduces C/2 by 4 in conv_up, so "
                         "channels must be >= 8")


def _check_input(x: jax.Array, channels: int, who: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{who} expects x of rank 4 (B, H, W, C) in NHWC, got shape {x.shape}")
    if x.shape[-1] != channels:
        raise ValueError(f"{who} was built for channels={channels}, got x with {x.shape[-1]} channels "
                         f"(shape {x.shape})")


# ---------------------------------------------------------------------------------------------
# Multiply-add accounting (HRNet's convention, from shapes; the forward passes do not count)
# ---------------------------------------------------------------------------------------------

def _reference_convs(channels: int, h: int, w: int, *, layout: str, formulation: str,
                     channel_branch: bool = True, spatial_branch: bool = True) -> list[tuple[int, int, int]]:
    """(kernel numel, out_h, out_w) of each 1x1 convolution of the reference structure.

    The reference applies the q/v projections to the (H, W) map and `conv_up` to the 1x1 pooled
    map, whatever order psa_jax evaluates them in.
    """
    half = channels // 2
    convs = []
    if channel_branch:
        convs += [(channels * 1, h, w), (channels * half, h, w)]           # conv_q_right, conv_v_right
        if _official_sequential(layout, formulation):
            mid = half // 4
            convs += [(half * mid, 1, 1), (mid * channels, 1, 1)]          # conv_up.0, conv_up.3
        else:
            convs += [(half * channels, 1, 1)]                             # conv_up (W_z)
    if spatial_branch:
        convs += [(channels * half, h, w), (channels * half, h, w)]        # conv_q_left, conv_v_left
    return convs


def psa_macs(channels: int, hw: tuple[int, int], *, layout: Layout = "parallel",
             formulation: Formulation = "official") -> int:
    """Multiply-adds of one PSA block on one (H, W) image, counted as HRNet's model tables count.

    `deep-high-resolution-net.pytorch: lib/utils/utils.py::get_model_summary` adds
    `weight.numel() * H_out * W_out` per convolution and nothing for matrix products, softmaxes
    or elementwise products. For PSA that is the five (official PSA_s: six) 1x1 convolutions of
    the reference structure: q/v projections at (H, W), `conv_up` at 1x1,

        parallel, or paper:  N * (C + 3 * C * C/2) + C/2 * C
        official sequential: N * (C + 3 * C * C/2) + C/2 * C/8 + C/8 * C,     N = H * W.

    This is what a network's `psa_jax.models.summary(...)['gflops']` includes per block (x 2^-30),
    independent of the cheaper order psa_jax evaluates the block in.
    """
    _check_args(channels, layout, formulation)
    _check_bottleneck(channels, layout, formulation)
    return sum(k * oh * ow for k, oh, ow in _reference_convs(channels, *hw, layout=layout, formulation=formulation))


def _block_convs(m: PolarizedSelfAttention, x_shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
    return _reference_convs(m.channels, *x_shape[1:3], layout=m.layout, formulation=m.formulation)


def _channel_convs(m: ChannelOnlyAttention, x_shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
    return _reference_convs(m.channels, *x_shape[1:3], layout=m.layout, formulation=m.formulation,
                            spatial_branch=False)


def _spatial_convs(m: SpatialOnlyAttention, x_shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
    return _reference_convs(m.channels, *x_shape[1:3], layout=m.layout, formulation=m.formulation,
                            channel_branch=False)


# ---------------------------------------------------------------------------------------------
# Forward math
# ---------------------------------------------------------------------------------------------

def _pointwise(conv: Conv2d, z: jax.Array) -> jax.Array:
    """A 1x1 `Conv2d` applied to pooled vectors (B, C_in) -> (B, C_out) in fp32, as a matrix
    product: the numbers of the convolution of a (B, 1, 1, C_in) map, without a convolution op
    and its layout transposes in the backward pass."""
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
    """The channel-only branch A_ch (paper: channel-only; official `PSA_p/PSA_s.spatial_pool`).

    Parameters (PyTorch names): `conv_q_right` (1x1, C->1), `conv_v_right` (1x1, C->C/2),
    `conv_up` (official parallel and paper: 1x1 C/2->C; official sequential: the C/8 bottleneck,
    `_BottleneckUp`) and, in the paper formulation, `norm` (LayerNorm over C).

    Args:
      channels: C, even (>= 8 for official sequential, whose bottleneck has C/8 channels).
      layout: the block this branch belongs to, 'parallel' (PSA_p) or 'sequential' (PSA_s);
        only the official formulation differs between them.
      formulation: 'official' or 'paper'.
      init: 'reference' (kaiming-normal fan-in on q/v, PyTorch's default on conv_up) or 'hrnet'
        (every conv weight N(0, 1e-3), as HRNet's `init_weights` leaves it; biases keep PyTorch's).
      dtype: compute dtype of the (B, H, W, C) products; pooled vectors stay fp32.
      param_dtype, rngs: parameter storage dtype and initialisation keys.
    """

    def __init__(self, channels: int, *, layout: Layout = "parallel", formulation: Formulation = "official",
                 init: inits.InitName = "reference", dtype: jnp.dtype | None = None,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        _check_args(channels, layout, formulation)
        inits.check_init_name(init)
        _check_bottleneck(channels, layout, formulation)
        bottleneck = _official_sequential(layout, formulation)
        self.channels = channels
        self.layout = layout
        self.formulation = formulation
        self.dtype = dtype
        qv_init = inits.kaiming_normal_fan_in if init == "reference" else inits.hrnet_normal
        up_init = inits.torch_default_kernel if init == "reference" else inits.hrnet_normal
        half = channels // 2
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.conv_q_right = Conv2d(channels, 1, 1, kernel_init=qv_init, **kw)
        self.conv_v_right = Conv2d(channels, half, 1, kernel_init=qv_init, **kw)
        if bottleneck:
            self.conv_up = _BottleneckUp(half, channels, kernel_init=up_init, rngs=rngs)
            self.norm = None
        else:
            self.conv_up = Conv2d(half, channels, 1, kernel_init=up_init, dtype=_F32, **kw)
            self.norm = LayerNorm(channels, epsilon=1e-5, dtype=_F32) if formulation == "paper" else None

    def weights(self, x: jax.Array) -> jax.Array:
        """A_ch: (B, H, W, C) -> (B, 1, 1, C) in fp32."""
        _check_input(x, self.channels, type(self).__name__)
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        q = jnp.einsum("bhwc,c->bhw", x, self.conv_q_right.matrix(dtype)[:, 0], preferred_element_type=_F32)
        p = _softmax_hw(q)                                                               # (B, H, W)
        pooled = jnp.einsum("bhw,bhwc->bc", p.astype(dtype), x, preferred_element_type=_F32)
        z = pooled @ self.conv_v_right.matrix(_F32)                                      # (B, C/2)
        z = self.conv_up(z) if isinstance(self.conv_up, _BottleneckUp) else _pointwise(self.conv_up, z)
        if self.norm is not None:
            z = self.norm(z)
        return jax.nn.sigmoid(z)[:, None, None, :]                                       # (B, 1, 1, C)

    @reports_conv_macs(_channel_convs)
    def __call__(self, x: jax.Array) -> jax.Array:
        """x * A_ch(x): (B, H, W, C) -> (B, H, W, C)."""
        dtype = self.dtype or x.dtype
        return x.astype(dtype) * self.weights(x).astype(dtype)


class SpatialOnlyAttention(nnx.Module):
    """The spatial-only branch A_sp (paper: spatial-only; official `PSA_p/PSA_s.channel_pool`).

    Parameters (PyTorch names): `conv_q_left` ("g", 1x1 C->C/2) and `conv_v_left` ("theta",
    1x1 C->C/2).

    Args:
      channels: C (even).
      layout: the block this branch belongs to. Official 'parallel' (PSA_p): softmax over the
        positions after the product with G; official 'sequential' (PSA_s): softmax over the
        positions of every row of W_v^l(x), before the product. The paper formulation (softmax
        over the C/2 entries of G) is the same for both.
      formulation: 'official' or 'paper'.
      init, dtype, param_dtype, rngs: see `ChannelOnlyAttention`.
    """

    def __init__(self, channels: int, *, layout: Layout = "parallel", formulation: Formulation = "official",
                 init: inits.InitName = "reference", dtype: jnp.dtype | None = None,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        _check_args(channels, layout, formulation)
        inits.check_init_name(init)
        self.channels = channels
        self.layout = layout
        self.formulation = formulation
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
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        mean = jnp.mean(x, axis=(1, 2), dtype=_F32)                                       # (B, C)
        wq = self.conv_q_left.matrix(_F32)                                               # (C, C/2)
        wv = self.conv_v_left.matrix(_F32)
        if channel_scale is not None:
            channel_scale = channel_scale.astype(_F32)
            mean = mean * channel_scale
        g = mean @ wq                                                                    # (B, C/2) = GAP(W_q x)
        if _official_sequential(self.layout, self.formulation):
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

    @reports_conv_macs(_spatial_convs)
    def __call__(self, x: jax.Array) -> jax.Array:
        """x * A_sp(x): (B, H, W, C) -> (B, H, W, C)."""
        dtype = self.dtype or x.dtype
        return x.astype(dtype) * self.weights(x).astype(dtype)


class PolarizedSelfAttention(nnx.Module):
    """Polarized Self-Attention in either layout; `PSA_p` and `PSA_s` fix the layout.

    `y = x * A_ch(x) + x * A_sp(x)` (parallel) or `y = x1 * A_sp(x1),
    x1 = x * A_ch(x)` (sequential). Input and output (B, H, W, C), any H, W >= 1.

    The branches are the submodules `channel_only` (`ChannelOnlyAttention`) and `spatial_only`
    (`SpatialOnlyAttention`). Their parameters carry the official PyTorch names (`conv_q_right`,
    `conv_v_right`, `conv_up`, `conv_q_left`, `conv_v_left`) and `torch_names` drops the branch
    level, so `psa_jax.convert.from_torch` maps an official `PSA_p`/`PSA_s` state_dict onto this
    module directly.

    Args:
      channels: C, even (>= 8 for official sequential).
      layout: 'parallel' or 'sequential'.
      formulation: 'official' (the released code; default) or 'paper' (the published equations).
      init: 'reference' (default: PSA.py's `reset_parameters`, kaiming-normal fan-in on the q/v
        convolutions, PyTorch's default on `conv_up`) or 'hrnet' (N(0, 1e-3) on every conv weight,
        which is what the official segmentation network trained from, since HRNet's
        `init_weights` overwrites the block's own init; then PSA_p starts as about x and PSA_s
        as about 0.25 x).
      dtype: compute dtype (e.g. jnp.bfloat16); None follows the input. Parameters are stored in
        `param_dtype`; softmax, pooling, normalisation and sigmoids run in fp32.
      rngs: `nnx.Rngs` for initialisation.
    """

    torch_names = {"channel_only": None, "spatial_only": None}  # flattened: PyTorch keeps both in one module

    def __init__(self, channels: int, *, layout: Layout = "parallel", formulation: Formulation = "official",
                 init: inits.InitName = "reference", dtype: jnp.dtype | None = None,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        _check_args(channels, layout, formulation)
        self.channels = channels
        self.layout = layout
        self.formulation = formulation
        self.dtype = dtype
        kw = dict(layout=layout, formulation=formulation, init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.channel_only = ChannelOnlyAttention(channels, **kw)
        self.spatial_only = SpatialOnlyAttention(channels, **kw)

    @reports_conv_macs(_block_convs)
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
    """PSA, parallel layout: `y = x * A_ch(x) + x * A_sp(x)` (official `PSA_p`).

    `PolarizedSelfAttention(channels, layout='parallel', ...)`; see there for the arguments.
    Registry names 'psa_p' (official) and 'psa_p_paper'.
    """

    def __init__(self, channels: int, *, formulation: Formulation = "official", init: inits.InitName = "reference",
                 dtype: jnp.dtype | None = None, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        super().__init__(channels, layout="parallel", formulation=formulation, init=init, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)


class PSA_s(PolarizedSelfAttention):  # noqa: N801
    """PSA, sequential layout: `y = x1 * A_sp(x1), x1 = x * A_ch(x)` (official `PSA_s`).

    `PolarizedSelfAttention(channels, layout='sequential', ...)`; see there for the arguments.
    Registry names 'psa_s' (official) and 'psa_s_paper'.
    """

    def __init__(self, channels: int, *, formulation: Formulation = "official", init: inits.InitName = "reference",
                 dtype: jnp.dtype | None = None, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        super().__init__(channels, layout="sequential", formulation=formulation, init=init, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
