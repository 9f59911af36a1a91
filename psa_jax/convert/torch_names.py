"""PyTorch state_dict names of every parameter of an NNX module.

psa_jax modules keep the attribute names of the reference PyTorch code, so a parameter's
PyTorch key is its NNX path joined with dots, with two adjustments a module can declare in a
`torch_names` class attribute:

* `{'attr': 'name'}` renames a child (e.g. `_BottleneckUp.reduce` is PyTorch's `conv_up.0`); the
  new name may contain dots (`'bn': '1.0'` for a BN inside a nested `Sequential`);
* `{'attr': None}` drops the path component (e.g. `PolarizedSelfAttention.channel_only`, whose
  parameters PyTorch keeps directly on the PSA module).

The leaf names and array layouts are translated per layer type (`LEAF_RULES`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from flax import nnx

from psa_jax.layers.conv import Conv2d, ConvTranspose2d
from psa_jax.layers.norm import BatchNorm, LayerNorm

__all__ = ["TorchParam", "torch_parameter_map", "LEAF_RULES"]


def _conv_kernel(w: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    """OIHW -> HWIO."""
    return np.transpose(w, (2, 3, 1, 0))


def _conv_transpose_kernel(w: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    """ConvTranspose2d (C_in, C_out, kh, kw) -> (kh, kw, C_in, C_out)."""
    return np.transpose(w, (2, 3, 0, 1))


def _flatten_to(w: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    """LayerNorm([C, 1, 1]) weight (C, 1, 1) -> (C,)."""
    return w.reshape(target_shape) if w.size == int(np.prod(target_shape)) else w


def _identity(w: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    return w


Transform = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
# layer type -> {nnx leaf name: (PyTorch leaf name, transform from PyTorch layout)}
LEAF_RULES: dict[type, dict[str, tuple[str, Transform]]] = {
    Conv2d: {"kernel": ("weight", _conv_kernel), "bias": ("bias", _identity)},
    ConvTranspose2d: {"kernel": ("weight", _conv_transpose_kernel), "bias": ("bias", _identity)},
    BatchNorm: {"scale": ("weight", _identity), "bias": ("bias", _identity),
                "mean": ("running_mean", _identity), "var": ("running_var", _identity)},
    LayerNorm: {"scale": ("weight", _flatten_to), "bias": ("bias", _flatten_to)},
}


def _torch_shape(rule_name: str, transform: Transform, shape: tuple[int, ...]) -> tuple[int, ...]:
    if transform is _conv_kernel:
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    if transform is _conv_transpose_kernel:
        kh, kw, i, o = shape
        return (i, o, kh, kw)
    return shape


@dataclasses.dataclass
class TorchParam:
    """One NNX variable and how to fill it from a PyTorch tensor."""

    variable: nnx.Variable
    nnx_path: str
    transform: Transform
    torch_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.variable.shape)


def _children(node) -> list[tuple[object, object]]:
    if isinstance(node, (nnx.List, list, tuple)):
        return list(enumerate(node))
    if isinstance(node, (nnx.Dict, dict)):
        return list(node.items())
    return [(k, v) for k, v in vars(node).items() if not k.startswith("_")]


def torch_parameter_map(module: nnx.Module, prefix: str = "") -> dict[str, TorchParam]:
    """PyTorch key -> `TorchParam` for every Param and BatchStat of `module`.

    Args:
      module: any psa_jax module (layer or network).
      prefix: prepended to every key (e.g. 'backbone.').
    """
    out: dict[str, TorchParam] = {}

    def visit(node, torch_parts: list[str], nnx_parts: list[str]) -> None:
        rules = LEAF_RULES.get(type(node))
        if rules is None:
            for base in type(node).__mro__[1:]:
                if base in LEAF_RULES:
                    rules = LEAF_RULES[base]
                    break
        names = getattr(type(node), "torch_names", {}) if isinstance(node, nnx.Module) else {}
        for key, child in _children(node):
            if child is None:
                continue
            if isinstance(child, nnx.Variable):
                if not isinstance(child, (nnx.Param, nnx.BatchStat)):
                    continue
                if rules is None or key not in rules:
                    raise TypeError(f"no PyTorch name rule for {type(node).__name__}.{key} at "
                                    f"{'.'.join(nnx_parts) or '<root>'}")
                torch_leaf, transform = rules[key]
                torch_key = ".".join(torch_parts + [torch_leaf])
                shape = tuple(child.shape)
                out[prefix + torch_key] = TorchParam(child, ".".join(nnx_parts + [str(key)]), transform,
                                                     _torch_shape(torch_leaf, transform, shape))
            elif isinstance(child, (nnx.Module, nnx.List, nnx.Dict, list, tuple, dict)):
                mapped = names.get(key, key) if isinstance(key, str) else key
                parts = torch_parts if mapped is None else torch_parts + [str(mapped)]
                visit(child, parts, nnx_parts + [str(key)])

    visit(module, [], [])
    return out
