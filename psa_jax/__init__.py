"""psa_jax: Polarized Self-Attention and HRNet in JAX / Flax NNX (NHWC).

What importers use, by name (each loaded on first access, so that `import psa_jax` neither imports
JAX nor initialises a backend: `psa_jax.runtime.xla_flags.configure_xla` can still run first):

    from psa_jax import PSA_p, PSA_s, make_attention, pose_hrnet, seg_hrnet, from_torch

    psa = PSA_p(64, rngs=nnx.Rngs(0))            # (B, H, W, 64) -> (B, H, W, 64), official PSA_p
    psa = PSA_s(64, formulation="paper", rngs=nnx.Rngs(0))   # the published equations, sequential
    psa = make_attention("psa_s", 64, rngs=nnx.Rngs(0))      # by registry name (docs/psa.md)
    net = pose_hrnet("w32", attention="psa_p")    # (B, 256, 192, 3) -> (B, 64, 48, 17) heatmaps

Networks are built as the plain program unless asked otherwise (`program='xla_cpu'`: the
value-identical XLA:CPU variant, `psa_jax.layers.xla_cpu`).

Sub-packages (docs/architecture.md): `psa_jax.layers` (attention blocks, primitives),
`psa_jax.models` (backbones, heads, networks), `psa_jax.convert` (PyTorch weights),
`psa_jax.data`, `psa_jax.evaluation`, `psa_jax.tasks`, `psa_jax.training`, `psa_jax.runtime`,
`psa_jax.tools` (command lines). `layers` and `models` need only the core install.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("PSA_p", "PSA_s", "PolarizedSelfAttention", "ChannelOnlyAttention", "SpatialOnlyAttention",
                     "psa_macs", "make_attention", "ATTENTION_NAMES"), "psa_jax.layers"),
    **dict.fromkeys(("pose_hrnet", "seg_hrnet", "mscale_ocr", "pose_resnet", "HRNetBackbone", "PoseHRNet",
                     "SegHRNetV2", "MscaleOCR", "summary", "count_params"), "psa_jax.models"),
    **dict.fromkeys(("from_torch", "ConversionError"), "psa_jax.convert"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'psa_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

