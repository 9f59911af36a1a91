"""`make_attention(name, channels)`: every attention block behind one call, for ablations.

Every block maps (B, H, W, C) -> (B, H, W, C) and takes the same keyword arguments
(`init`, `dtype`, `param_dtype`, `rngs`), so an experiment swaps the attention type in a residual
block by changing one config string.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers.cbam import CBAM
from psa_jax.layers.global_context import GlobalContext
from psa_jax.layers.non_local import NonLocal
from psa_jax.layers.psa import PolarizedSelfAttention
from psa_jax.layers.squeeze_excitation import SqueezeExcitation

__all__ = ["ATTENTION_NAMES", "Identity", "make_attention"]


class Identity(nnx.Module):
    """`y = x` (the 'none' attention): no parameters."""

    def __init__(self, channels: int | None = None, **unused):
        del channels, unused

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def _psa(layout: str, formulation: str) -> Callable[..., nnx.Module]:
    """The registry's PSA entries: `PSA_p` / `PSA_s` with `formulation`, built as the shared
    `PolarizedSelfAttention` class (same parameters and values; the layout is a field)."""
    def build(channels: int, **kw) -> nnx.Module:
        return PolarizedSelfAttention(channels, layout=layout, formulation=formulation, **kw)
    return build


_BUILDERS: dict[str, Callable[..., nnx.Module]] = {
    "none": Identity,
    "psa_p": _psa("parallel", "official"),       # = PSA_p(C)
    "psa_s": _psa("sequential", "official"),     # = PSA_s(C)
    "psa_p_paper": _psa("parallel", "paper"),    # = PSA_p(C, formulation='paper')
    "psa_s_paper": _psa("sequential", "paper"),  # = PSA_s(C, formulation='paper')
    "se": SqueezeExcitation,
    "cbam": CBAM,
    "gc": GlobalContext,
    "nonlocal": NonLocal,
}
ATTENTION_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def make_attention(name: str, channels: int, *, init: str = "reference", dtype: jnp.dtype | None = None,
                   param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    """Builds the attention block `name` for `channels` channels.

    Args:
      name: one of `ATTENTION_NAMES`: 'none', 'psa_p', 'psa_s' (official PSA), 'psa_p_paper',
        'psa_s_paper' (the published equations; see `psa_jax.layers.psa` and docs/psa.md), 'se',
        'cbam', 'gc', 'nonlocal'.
      channels: C.
      init: 'reference' (each block's own reference initialisation) or 'hrnet' (conv weights
        N(0, 1e-3), as HRNet's init_weights applies to every conv in the backbone).
      kwargs: block-specific options (e.g. `reduction=16` for se/cbam/gc).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown attention {name!r}; valid names: {', '.join(ATTENTION_NAMES)}")
    if name == "none":
        return Identity()
    return _BUILDERS[name](channels, init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **kwargs)
