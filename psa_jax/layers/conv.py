"""NHWC convolution with PyTorch `nn.Conv2d` semantics (symmetric integer padding, HWIO kernel)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers import initializers as inits
from psa_jax.layers import xla_cpu
from psa_jax.layers.mac_counter import record_conv_macs

__all__ = ["Conv2d", "ConvTranspose2d", "conv2d"]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0, *,
           phase_vjp: bool = False) -> jax.Array:
    """`y[b, i, j, o] = sum_{u, v, c} x_pad[b, s*i + u, s*j + v, c] * kernel[u, v, c, o]`.

    Args:
      x: (B, H, W, C_in).
      kernel: (kh, kw, C_in, C_out).
      stride: the same stride along H and W.
      padding: zeros added on every side (PyTorch's `padding=p`).
      phase_vjp: for stride > 1, take the input gradient from `xla_cpu.conv2d_phase_vjp` (the same
        values and gradients, a program XLA:CPU runs faster); ignored at stride 1.
    Returns:
      (B, (H + 2p - kh) // s + 1, (W + 2p - kw) // s + 1, C_out).
    """
    if stride > 1 and phase_vjp:
        return xla_cpu.conv2d_phase_vjp(x, kernel, stride, padding)
    return _conv2d_plain(x, kernel, stride, padding)


def _conv2d_plain(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    pads = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_DIMENSION_NUMBERS)


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
      program: 'plain' (default), 'xla_cpu' or a `xla_cpu.ProgramOptions`; with its
        `phase_conv_vjp`, a strided convolution's input gradient comes from
        `xla_cpu.conv2d_phase_vjp` (same values).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *, stride: int = 1,
                 padding: int | None = None, use_bias: bool = False,
                 kernel_init: nnx.Initializer | None = None, bias_init: nnx.Initializer | None = None,
                 dtype: jnp.dtype | None = None, param_dtype: jnp.dtype = jnp.float32,
                 program: str | xla_cpu.ProgramOptions = "plain", rngs: nnx.Rngs):
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"Conv2d channels must be positive, got in_channels={in_channels}, "
                             f"out_channels={out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.dtype = dtype
        self.phase_vjp = xla_cpu.program_options(program).phase_conv_vjp and stride > 1
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
        y = conv2d(x.astype(dtype), self.kernel[...].astype(dtype), self.stride, self.padding,
                   phase_vjp=self.phase_vjp)
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
