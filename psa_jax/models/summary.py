"""Parameter and FLOP counts comparable with the HRNet papers' tables.

`summary(model, (H, W))` traces one eval-mode forward pass of a single image (no computation)
and returns:

* `params`: trainable parameters (conv/linear weights and biases, BN and LN affine terms), the
  count HRNet's tables report (28,536,113 for pose HRNet-W32).
* `gflops`: HRNet's convention (`lib/utils/utils.py::get_model_summary`): convolution
  multiply-adds `kernel.numel() * H_out * W_out`, summed, divided by 2^30. Attention blocks count
  the 1x1 convolutions of their reference structure at full resolution (even where psa_jax
  evaluates them on pooled vectors), and nothing for matmuls or softmaxes, as those hooks do.
* `executed_gmacs`: multiply-adds psa_jax actually executes (every convolution and dot product in
  the traced program), / 1e9 — what achieved FLOP/s should be computed from (FLOPs = 2 x MACs).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers.mac_counter import count_conv_macs

__all__ = ["summary", "count_params", "executed_macs"]


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (`nnx.Param` entries; BN running stats excluded)."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _eqn_macs(eqn: Any) -> int:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec  # (out_feature, in_feature, *spatial)
        per_output = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
        return math.prod(eqn.outvars[0].aval.shape) * per_output
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
    return 0


def _jaxpr_macs(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else _subjaxprs(eqn):
            total += _jaxpr_macs(sub)
    return total


def _subjaxprs(eqn: Any):
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(v, "jaxpr", None)
            if inner is not None:
                yield inner if hasattr(inner, "eqns") else inner.jaxpr


def executed_macs(fn, *args) -> int:
    """Multiply-adds of every conv and dot in `jax.make_jaxpr(fn)(*args)` (args may be shape structs)."""
    return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def summary(model: nnx.Module, input_hw: tuple[int, int], *, channels: int = 3) -> dict[str, float | int]:
    """Counts for one (1, H, W, channels) image through `model` in eval mode.

    The model itself is not modified (a merged copy is switched to eval mode inside the trace).
    Returns {'params', 'gflops', 'macs', 'executed_gmacs', 'convs'}.
    """
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, int(input_hw[0]), int(input_hw[1]), channels), jnp.float32)

    def forward(state, x):
        m = nnx.merge(graphdef, state)
        m.eval()
        return m(x)

    with count_conv_macs() as counter:
        jax.eval_shape(forward, state, x)
    hrnet_macs = counter.macs
    return {
        "params": count_params(model),
        "gflops": hrnet_macs / 2 ** 30,
        "macs": hrnet_macs,
        "executed_gmacs": executed_macs(forward, state, x) / 1e9,
        "convs": counter.convs,
    }
