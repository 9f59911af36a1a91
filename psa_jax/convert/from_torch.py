"""Loading PyTorch state_dicts into psa_jax modules in place.

`from_torch(module, state_dict)` maps every key through `torch_parameter_map` (the reference
attribute names), transposes conv kernels from OIHW to HWIO, and writes parameters and BatchNorm
running statistics into the module. Nothing is written unless every expected key is present with
the right shape (or explicitly allowed to be missing): one `ConversionError` lists every missing
key, unexpected key and shape mismatch.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from psa_jax.convert.torch_names import torch_parameter_map

__all__ = ["ConversionError", "ConversionReport", "from_torch", "to_numpy_state_dict", "normalize_keys"]

# PyTorch bookkeeping that has no counterpart in an NNX module.
_ALWAYS_IGNORED = ("*num_batches_tracked",)


class ConversionError(ValueError):
    """A state_dict does not match the module; the message lists every problem."""


@dataclasses.dataclass
class ConversionReport:
    """What `from_torch` did: loaded keys, and the allowed missing / ignored unexpected keys."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]

    def __str__(self) -> str:
        return (f"loaded {len(self.loaded)} tensors; {len(self.missing)} expected keys left at their "
                f"initial values; {len(self.unexpected)} checkpoint keys ignored")


def to_numpy_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """torch tensors (any device/dtype) or arrays -> float32/int NumPy arrays."""
    out = {}
    for k, v in state_dict.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu()
            if str(v.dtype) in ("torch.bfloat16", "torch.float16"):
                v = v.float()
            v = v.numpy()
        out[str(k)] = np.asarray(v)
    return out


def normalize_keys(state_dict: Mapping[str, Any], *, strip_prefixes: Iterable[str] = ("module.",)) -> dict[str, Any]:
    """Removes DDP/DataParallel prefixes (`module.`) from every key that has them."""
    out = {}
    for k, v in state_dict.items():
        for p in strip_prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def from_torch(module: nnx.Module, state_dict: Mapping[str, Any], *, prefix: str = "",
               allow_missing: Iterable[str] = (), ignore_unexpected: Iterable[str] = (),
               strip_prefixes: Iterable[str] = ("module.",)) -> ConversionReport:
    """Loads a PyTorch state_dict into `module` in place.

    Args:
      module: a psa_jax layer or network whose attribute names follow the reference code.
      state_dict: key -> torch tensor or NumPy array (a `.pth` file's `state_dict`).
      prefix: the part of the checkpoint keys above `module` (e.g. 'backbone.'); keys without it
        are unexpected.
      allow_missing: fnmatch patterns of module keys that may be absent (left as initialised),
        e.g. '*.deattn.*' when loading a backbone checkpoint trained without attention.
      ignore_unexpected: fnmatch patterns of checkpoint keys to skip (e.g. a classifier head).
      strip_prefixes: removed from checkpoint keys first (DDP's 'module.').
    Returns:
      A `ConversionReport`.
    Raises:
      ConversionError: listing every missing key, unexpected key and shape mismatch (and nothing
        is written).
    """
    sd = normalize_keys(to_numpy_state_dict(state_dict), strip_prefixes=strip_prefixes)
    allow_missing, ignore_unexpected = tuple(allow_missing), tuple(ignore_unexpected)
    targets = torch_parameter_map(module, prefix)
    provided = {k: v for k, v in sd.items() if not _matches(k, _ALWAYS_IGNORED)}

    missing = sorted(k for k in targets if k not in provided)
    hard_missing = [k for k in missing if not _matches(k, allow_missing)]
    unexpected = sorted(k for k in provided if k not in targets)
    hard_unexpected = [k for k in unexpected if not _matches(k, ignore_unexpected)]
    mismatched = []
    converted: dict[str, np.ndarray] = {}
    for key, target in targets.items():
        if key not in provided:
            continue
        value = provided[key]
        if tuple(value.shape) != target.torch_shape and value.size != int(np.prod(target.shape)):
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)}, module expects {target.torch_shape} "
                              f"(psa_jax {target.nnx_path} {target.shape})")
            continue
        array = target.transform(value, target.shape)
        if tuple(array.shape) != target.shape:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} does not convert to {target.shape} "
                              f"({target.nnx_path})")
            continue
        converted[key] = array

    if hard_missing or hard_unexpected or mismatched:
        lines = [f"state_dict does not match {type(module).__name__}:"]
        for title, items in (("missing keys", hard_missing), ("unexpected keys", hard_unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {x}" for x in items)
        lines.append("Check that the module was built with the checkpoint's settings (width, attention "
                     "'psa_p'/'psa_s', placement, num_classes, ocr), and that the checkpoint's key layout "
                     "is the one this module mirrors (see psa_jax.convert).")
        raise ConversionError("\n".join(lines))

    for key, array in converted.items():
        variable = targets[key].variable
        variable[...] = jnp.asarray(array, dtype=variable.dtype)
    return ConversionReport(loaded=sorted(converted), missing=missing, unexpected=unexpected)
