"""XLA:CPU program variants: the program options and the value-identical rewrites they switch on.

A network is built for one *program*, an explicit construction option (`ProgramOptions`), never a
process-wide switch: `pose_hrnet(..., program='xla_cpu')` threads the choice once to its
convolutions, BatchNorms and residual-block outputs. Every rewrite computes the same values and
gradients as the plain program (tests: `tests/test_xla_cpu.py`); each only changes the XLA program
that XLA:CPU compiles:

* `materialize` (on residual-block outputs, `psa_jax.models.blocks`, and on the fuse outputs of
  HRNet modules, `psa_jax.models.hrnet`): forces a value into a buffer of its own. Otherwise
  XLA:CPU fuses a residual stream's whole add/ReLU chain, across the blocks of a branch, into
  every consumer in the backward pass (each weight-gradient transpose), which makes the train step
  slow to run and to compile. `lax.optimization_barrier` does not help: XLA:CPU removes it before
  fusion. The points are not on BatchNorm outputs, where they would keep one more buffer per
  conv-BN pair alive without making anything faster.
* `conv2d_phase_vjp` (strided convolutions, `psa_jax.layers.conv.Conv2d`): the input gradient of a
  stride-s convolution as s*s stride-1 convolutions (`phase_conv_input_grad`). XLA's own
  transpose is an lhs-dilated convolution, which XLA:CPU runs in slow generic code.
* `fused_batchnorm` (`psa_jax.layers.norm.BatchNorm` in training mode): BatchNorm's backward
  pass written by hand (`psa_jax.layers.norm.batch_norm_train`), in fewer XLA:CPU kernels than
  autodiff of the statistics. It stays in `norm.py` because it differentiates the statistics
  defined there (`_batch_stats`), which the plain path shares.

`program_for_platform('cpu')` is 'xla_cpu'; accelerators compile the plain program. Where the
options came from, with measurements: `benchmarks/NOTES.md`, "Where the XLA:CPU program options
came from".
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

__all__ = ["ProgramOptions", "PLAIN", "XLA_CPU", "PROGRAMS", "program_options", "program_for_platform",
           "materialize", "conv2d_phase_vjp", "phase_conv_input_grad"]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class ProgramOptions:
    """Which value-identical XLA:CPU rewrites a network is built with (all off: the plain program).

    Attributes:
      materialize: a `materialize` point on every residual-block output and HRNet fuse output.
      phase_conv_vjp: strided convolutions get their input gradient from `conv2d_phase_vjp`.
      fused_batchnorm: training-mode BatchNorm runs `norm.batch_norm_train` (hand-written VJP).
    """

    materialize: bool = False
    phase_conv_vjp: bool = False
    fused_batchnorm: bool = False


PLAIN = ProgramOptions()
XLA_CPU = ProgramOptions(materialize=True, phase_conv_vjp=True, fused_batchnorm=True)
PROGRAMS: dict[str, ProgramOptions] = {"plain": PLAIN, "xla_cpu": XLA_CPU}


def program_options(program: str | ProgramOptions) -> ProgramOptions:
    """'plain' | 'xla_cpu' | a `ProgramOptions` -> the `ProgramOptions`."""
    if isinstance(program, ProgramOptions):
        return program
    if isinstance(program, str) and program in PROGRAMS:
        return PROGRAMS[program]
    raise ValueError(f"unknown program {program!r}; valid: {', '.join(repr(p) for p in PROGRAMS)} "
                     "or a psa_jax.layers.xla_cpu.ProgramOptions")


def program_for_platform(platform: str) -> str:
    """The program to build for a JAX platform name: 'cpu' -> 'xla_cpu', anything else -> 'plain'."""
    return "xla_cpu" if str(platform).lower() == "cpu" else "plain"


# ----------------------------------------------------------------------------------- materialize

def _identity(v: jax.Array) -> jax.Array:
    return v


def _times_one(v: jax.Array) -> jax.Array:
    # Bit-identical to `v` for every value (NaN, inf and -0.0 included). It must differ from
    # `_identity` syntactically: JAX drops a cond output that every branch merely forwards,
    # which would erase the materialisation point.
    return v * jnp.ones((), v.dtype)


def materialize(x: jax.Array) -> jax.Array:
    """Returns `x`, computed once into a buffer of its own (a materialisation point).

    `x` goes through a `lax.cond` on a data-dependent predicate (`x.flat[0] == x.flat[0]`) that XLA
    cannot fold; one branch returns `x`, the other `x * 1`, so the result is `x` bit for bit
    whichever runs (NaN included), and the gradient is the identity. Empty arrays are returned
    as they are.
    """
    if x.size == 0:
        return x
    first = x.reshape(-1)[0]
    return jax.lax.cond(first == first, _identity, _times_one, x)


# ------------------------------------------------------------------ strided convolution gradient

def _conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """The NHWC/HWIO convolution of `psa_jax.layers.conv.conv2d` (the same operation)."""
    pads = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_DIMENSION_NUMBERS)


def phase_conv_input_grad(dy: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], stride: int,
                          padding: int) -> jax.Array:
    """d(loss)/dx of a stride-s convolution as s*s stride-1 convolutions, one per input phase.

    Split the padded input positions by phase: position `s*a + r` is reached only by the taps
    `u = r + s*t`, through output `a - t`, so

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
def conv2d_phase_vjp(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """`psa_jax.layers.conv.conv2d` (same values) whose input gradient is `phase_conv_input_grad`.

    x (B, H, W, C_in), kernel (kh, kw, C_in, C_out) -> (B, H', W', C_out). The kernel gradient is
    XLA's own. Reverse mode only (`jax.custom_vjp`).
    """
    return _conv(x, kernel, stride, padding)


def _phase_vjp_fwd(x, kernel, stride, padding):
    return _conv(x, kernel, stride, padding), (x, kernel)


def _phase_vjp_bwd(stride, padding, residuals, dy):
    x, kernel = residuals
    dx = phase_conv_input_grad(dy, kernel, x.shape, stride, padding).astype(x.dtype)
    _, kernel_vjp = jax.vjp(lambda k: _conv(x, k, stride, padding), kernel)
    (dk,) = kernel_vjp(dy)
    return dx, dk


conv2d_phase_vjp.defvjp(_phase_vjp_fwd, _phase_vjp_bwd)
