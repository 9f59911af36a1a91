"""Backend-specific program shaping. Every function here is the identity on values.

XLA:CPU fuses elementwise producers into their consumers. In a residual network's backward pass
it copied the whole BatchNorm/ReLU/residual elementwise chain (hundreds of ops) into every
weight-gradient fusion, which made the HRNet train step both slow and slow to compile
(`../shared/reference/cpu_performance.md`; measured here on HRNet-W18-small, batch 16 at 128x96:
2.4 s/step and 95 s to compile, against 0.8 s and 45 s with this). `materialize` forces its
argument to be computed once into a buffer by routing it through a data-dependent `lax.cond`
whose two branches are both the identity (XLA cannot fold the predicate, and whichever branch
runs returns the input unchanged, NaN included). `lax.optimization_barrier` does not work for
this on CPU (it is removed before fusion).

It is applied only when the default backend is the CPU and `set_cpu_materialization(True)`
(the default); GPU and TPU compile the plain program.
"""

from __future__ import annotations

import jax

__all__ = ["materialize", "set_cpu_materialization", "cpu_materialization_enabled"]

_STATE = {"cpu_materialization": True}


def set_cpu_materialization(enabled: bool) -> None:
    """Turns the CPU materialisation points on (default) or off (for benchmarks)."""
    _STATE["cpu_materialization"] = bool(enabled)


def cpu_materialization_enabled() -> bool:
    return _STATE["cpu_materialization"] and jax.default_backend() == "cpu"


def _identity(v: jax.Array) -> jax.Array:
    return v


def materialize(x: jax.Array) -> jax.Array:
    """Returns `x`; on XLA:CPU, as a separately computed buffer (see module doc)."""
    if not cpu_materialization_enabled() or x.size == 0:
        return x
    first = x.reshape(-1)[0]
    return jax.lax.cond(first == first, _identity, _identity, x)
