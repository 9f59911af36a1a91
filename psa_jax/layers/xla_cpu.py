"""Backend-specific program shaping. Every function here is the identity on values.

XLA:CPU fuses elementwise producers into their consumers. In a residual network's backward pass
it copied the residual stream's whole add/ReLU chain (across all blocks of a branch, up to 218
instructions) into every weight-gradient transpose fusion, which made the HRNet-W32 train step
both slow and slow to compile (26 s/step and 119 s of XLA compile, against 9 s and 47 s with
materialisation points on the block and fuse outputs; `benchmarks/NOTES.md`). `materialize`
forces its argument to be computed once into a buffer by routing it through a data-dependent
`lax.cond` whose two branches both return the input unchanged: XLA cannot fold the predicate;
one branch is `v`, the other `v * 1` (bit-identical for every value: NaN, inf, -0.0). The
branches must differ syntactically, because JAX (0.10) drops every cond output that all
branches merely forward, which silently removed a cond of two identities.
`lax.optimization_barrier` does not work for this on CPU (it is removed before fusion).

The points sit on residual-block outputs (`psa_jax.models.blocks`) and on the fuse outputs of
HRNet modules (`psa_jax.models.hrnet`), not on BatchNorm outputs (there they kept one more
buffer alive per conv-BN pair: +580 MB for W32, no speed gain). They are applied only when the
default backend is the CPU and `set_cpu_materialization(True)` (the default); GPU and TPU
compile the plain program.

The same switch pattern guards the other CPU-only workaround, the phase-convolution gradient of
strided convolutions (`psa_jax.layers.conv.conv2d`, `set_cpu_phase_vjp`): XLA:CPU lowers a
strided convolution's input gradient to an lhs-dilated convolution that runs in slow generic
code. BatchNorm's training-mode backward pass is the third (`psa_jax.layers.norm.batch_norm_train`,
`set_cpu_fused_batchnorm`): autodiff of the one-pass statistics spreads a handful of small vector
ops over separate XLA:CPU kernels per BatchNorm (8 in the forward pass); the hand-written VJP
needs about half (W32 train step: 7,599 -> 6,723 fusions, 10% less XLA compile time, 40-75 MB less
resident memory). All are checked against the plain path in `tests/test_backend_tuning.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["materialize", "set_cpu_materialization", "cpu_materialization_enabled", "set_cpu_phase_vjp",
           "cpu_phase_vjp_enabled", "set_cpu_fused_batchnorm", "cpu_fused_batchnorm_enabled", "on_cpu"]

_STATE = {"cpu_materialization": True, "cpu_phase_vjp": True, "cpu_fused_batchnorm": True}


def on_cpu() -> bool:
    """Whether programs traced now compile for XLA:CPU (the default backend)."""
    return jax.default_backend() == "cpu"


def set_cpu_materialization(enabled: bool) -> None:
    """Turns the CPU materialisation points on (default) or off (for benchmarks)."""
    _STATE["cpu_materialization"] = bool(enabled)


def cpu_materialization_enabled() -> bool:
    return _STATE["cpu_materialization"] and on_cpu()


def set_cpu_phase_vjp(enabled: bool) -> None:
    """Turns the phase-convolution gradient of strided convolutions on CPU on (default) or off."""
    _STATE["cpu_phase_vjp"] = bool(enabled)


def cpu_phase_vjp_enabled() -> bool:
    return _STATE["cpu_phase_vjp"] and on_cpu()


def set_cpu_fused_batchnorm(enabled: bool) -> None:
    """Turns BatchNorm's hand-written training-mode VJP (`norm.batch_norm_train`) on CPU on or off."""
    _STATE["cpu_fused_batchnorm"] = bool(enabled)


def cpu_fused_batchnorm_enabled() -> bool:
    return _STATE["cpu_fused_batchnorm"] and on_cpu()


def _identity(v: jax.Array) -> jax.Array:
    return v


def _times_one(v: jax.Array) -> jax.Array:
    # Bit-identical to `v` for every value (NaN, inf and -0.0 included). It must differ from
    # `_identity` syntactically: JAX (0.10) drops cond outputs that every branch merely forwards,
    # which erased the materialisation point when both branches were `_identity`.
    return v * jnp.ones((), v.dtype)


def materialize(x: jax.Array) -> jax.Array:
    """Returns `x`; on XLA:CPU, as a separately computed buffer (see module doc)."""
    if not cpu_materialization_enabled() or x.size == 0:
        return x
    first = x.reshape(-1)[0]
    return jax.lax.cond(first == first, _identity, _times_one, x)
