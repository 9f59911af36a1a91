"""NHWC convolution with PyTorch `nn.Conv2d` semantics (symmetric integer padding, HWIO kernel)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers import initializers as inits
from psa_jax.layers.xla_cpu import cpu_phase_vjp_enabled
from psa_jax.layers.mac_counter import record_conv_macs

__all__ = ["Conv2d", "ConvTranspose2d", "conv2d"]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """`y[b, i, j, o] = sum_{u, v, c} x_pad[b, s*i + u, s*j + v, c] * kernel[u, v, c, o]`.

    On XLA:CPU a strided convolution gets its input gradient from `_phase_conv_input_grad`
    (`psa_jax.layers.xla_cpu.set_cpu_phase_vjp`); values and gradients are the same.

    Args:
      x: (B, H, W, C_in).
      kernel: (kh, kw, C_in, C_out).
      stride: the same stride along H and W.
      padding: zeros added on every side (PyTorch's `padding=p`).
    Returns:
      (B, (H + 2p - kh) // s + 1, (W + 2p - kw) // s + 1, C_out).
    """
    if stride > 1 and cpu_phase_vjp_enabled():
        return _conv2d_phase_vjp(x, kernel, stride, padding)
    return _conv2d_plain(x, kernel, stride, padding)


def _conv2d_plain(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    pads = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_DIMENSION_NUMBERS)


def _phase_conv_input_grad(dy: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], stride: int,
                           padding: int) -> jax.Array:
    """d(loss)/dx of a stride-s convolution as s*s stride-1 convolutions, one per input phase.

    XLA's own transpose of a strided convolution is a convolution of the s-dilated `dy` (an
    "lhs-dilated" convolution), which XLA:CPU runs in slow generic code. Instead, split the padded
    input positions by phase: position `s*a + r` is reached only by the taps `u = r + s*t`,
    through output `a - t`, so

        dx_pad[s*a + r, s*b + q] = sum_{t, t'} dy[a - t, b - t'] . kernel[r + s*t, q + s*t']^T,

    a stride-1 "full" correlation of `dy` with the spatially flipped sub-kernel `kernel[r::s, q::s]`
    (channels transposed). The s*s phase results are interleaved and the padding is cropped.

    Args:
      dy: (B, H_out, W_out, C_out) cotangent of the output.
      kernel: (kh, kw, C_in, C_out).
      x_shape: (B, H, W, C_in).
    Returns:
      (B, H, W, C_in) in dy's dtype.
    """
    b, h, w, c_in = x_shape
    kh, kw = kernel.shape[:2]
    s, p = stride, padding
    hp, wp = h + 2 * p, w + 2 * p
    rows_per_phase = -(-hp // s)                 # phase length along H (phase 0 is the longest)
    cols_per_phase = -(-wp // s)
    ho, wo = dy.shape[1:3]
    phases = []
    for r in range(s):
        row = []
        for q in range(s):
            sub = kernel[r::s, q::s]                                         # (T, T', C_in, C_out)
            t_h, t_w = sub.shape[:2]
            if t_h == 0 or t_w == 0:
                row.append(jnp.zeros((b, rows_per_phase, cols_per_phase, c_in), dy.dtype))
                continue
            # Full correlation, then pad/crop to the phase's length (rows_per_phase for every phase;
            # the tail beyond the padded input is cropped after interleaving).
            sub = jnp.flip(sub, (0, 1)).swapaxes(2, 3).astype(dy.dtype)      # (T, T', C_out, C_in)
            pad_h = (t_h - 1, rows_per_phase - ho)
            pad_w = (t_w - 1, cols_per_phase - wo)
            row.append(jax.lax.conv_general_dilated(dy, sub, (1, 1), (pad_h, pad_w),
                                                    dimension_numbers=_DIMENSION_NUMBERS))
        phases.append(jnp.stack(row, axis=3))                                # (B, A, A', s, C_in)
    dx_pad = jnp.stack(phases, axis=2)                                       # (B, A, s, A', s, C_in)
    dx_pad = dx_pad.reshape(b, rows_per_phase * s, cols_per_phase * s, c_in)
    return dx_pad[:, p:p + h, p:p + w, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d_phase_vjp(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    return _conv2d_plain(x, kernel, stride, padding)


def _phase_vjp_fwd(x, kernel, stride, padding):
    return _conv2d_plain(x, kernel, stride, padding), (x, kernel)


def _phase_vjp_bwd(stride, padding, residuals, dy):
    x, kernel = residuals
    dx = _phase_conv_input_grad(dy, kernel, x.shape, stride, padding).astype(x.dtype)
    _, kernel_vjp = jax.vjp(lambda k: _conv2d_plain(x, k, stride, padding), kernel)
    (dk,) = kernel_vjp(dy)
    return dx, dk


_conv2d_phase_vjp.defvjp(_phase_vjp_fwd, _phase_vjp_bwd)


class Conv2d(nnx.Module):
    """2-D convolution on NHWC inputs.

    Parameters: `kernel` (k, k, C_in, C_out) and, with `use_bias`, `bias` (C_out,). The names map
    to PyTorch's `weight` (C_out, C_in, k, k; transposed by `psa_jax.convert`) and `bias`.

    Args:
      in_channels, out_channels: C_in, C_out.
      kernel_size: k (square kernels only, as in every network here).
      stride: s.
      padding: zeros on each side; default `k // 2` ("same" for odd k at stride 1).
      use_bias: add a learned bias.
      kernel_init, bias_init: default PyTorch's (`torch_default_kernel`, `torch_default_bias`).
      dtype: compute dtype (None: the input's); params are stored in `param_dtype`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *, stride: int = 1,
                 padding: int | None = None, use_bias: bool = False,
                 kernel_init: nnx.Initializer | None = None, bias_init: nnx.Initializer | None = None,
                 dtype: jnp.dtype | None = None, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"Conv2d channels must be positive, got in_channels={in_channels}, "
                             f"out_channels={out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.dtype = dtype
        fan_in = kernel_size * kernel_size * in_channels
        kernel_init = kernel_init or inits.torch_default_kernel
        self.kernel = nnx.Param(kernel_init(rngs.params(), (kernel_size, kernel_size, in_channels, out_channels),
                                            param_dtype))
        if use_bias:
            bias_init = bias_init or inits.torch_default_bias(fan_in)
            self.bias = nnx.Param(bias_init(rngs.params(), (out_channels,), param_dtype))
        else:
            self.bias = None

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        k, s, p = self.kernel_size, self.stride, self.padding
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def record_macs(self, h: int, w: int) -> None:
        """Reports this conv's HRNet-convention multiply-adds for an (h, w) input."""
        record_conv_macs(self.kernel.shape[0] * self.kernel.shape[1] * self.in_channels * self.out_channels,
                         *self.output_hw(h, w))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C_in) -> (B, H', W', C_out)."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"Conv2d expects x of shape (B, H, W, {self.in_channels}), got {x.shape}")
        self.record_macs(x.shape[1], x.shape[2])
        dtype = self.dtype or x.dtype
        y = conv2d(x.astype(dtype), self.kernel[...].astype(dtype), self.stride, self.padding)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y

    def matrix(self, dtype: jnp.dtype | None = None) -> jax.Array:
        """A 1x1 kernel as a (C_in, C_out) matrix, for blocks that apply it to pooled vectors."""
        if self.kernel_size != 1:
            raise ValueError("matrix() is only defined for 1x1 convolutions")
        k = self.kernel[...][0, 0]
        return k if dtype is None else k.astype(dtype)


class ConvTranspose2d(nnx.Module):
    """Transposed convolution with PyTorch `nn.ConvTranspose2d` semantics, NHWC.

    Output size `(H - 1) * s - 2p + k + output_padding`. The kernel is stored (k, k, C_in, C_out)
    (PyTorch's (C_in, C_out, k, k) transposed by `psa_jax.convert`) and applied as a stride-1
    convolution of the s-dilated input with the spatially flipped kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, output_padding: int = 0, use_bias: bool = False,
                 kernel_init: nnx.Initializer | None = None, dtype: jnp.dtype | None = None,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.output_padding = output_padding
        self.dtype = dtype
        # PyTorch computes fan_in of a transposed conv from weight.size(1) * k * k = C_out * k * k.
        fan_in = out_channels * kernel_size * kernel_size
        kernel_init = kernel_init or inits.torch_default_bias(fan_in)
        self.kernel = nnx.Param(kernel_init(rngs.params(), (kernel_size, kernel_size, in_channels, out_channels),
                                            param_dtype))
        self.bias = (nnx.Param(inits.torch_default_bias(fan_in)(rngs.params(), (out_channels,), param_dtype))
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C_in) -> (B, (H-1)s - 2p + k + op, (W-1)s - 2p + k + op, C_out)."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"ConvTranspose2d expects x of shape (B, H, W, {self.in_channels}), got {x.shape}")
        k, s, p, op = self.kernel_size, self.stride, self.padding, self.output_padding
        out_h, out_w = (x.shape[1] - 1) * s - 2 * p + k + op, (x.shape[2] - 1) * s - 2 * p + k + op
        record_conv_macs(k * k * self.in_channels * self.out_channels, out_h, out_w)
        dtype = self.dtype or x.dtype
        kernel = jnp.flip(self.kernel[...], (0, 1)).astype(dtype)
        pads = ((k - 1 - p, k - 1 - p + op),) * 2
        y = jax.lax.conv_general_dilated(x.astype(dtype), kernel, (1, 1), pads, lhs_dilation=(s, s),
                                         dimension_numbers=_DIMENSION_NUMBERS)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y
