"""Resizing with PyTorch `F.interpolate` semantics, NHWC."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["resize_bilinear", "upsample_nearest"]


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
    """`F.interpolate(mode='nearest', scale_factor=factor)` for an integer factor: (B, H, W, C) ->
    (B, H*f, W*f, C), `out[i, j] = x[i // f, j // f]`."""
    if factor == 1:
        return x
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def _align_corners_axis(x: jax.Array, out: int, axis: int) -> jax.Array:
    size = x.shape[axis]
    if out == size:
        return x
    if out == 1 or size == 1:
        pos = jnp.zeros((out,), jnp.float32)
    else:
        pos = jnp.arange(out, dtype=jnp.float32) * ((size - 1) / (out - 1))
    lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, size - 1)
    hi = jnp.clip(lo + 1, 0, size - 1)
    frac = (pos - lo).astype(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = out
    frac = frac.reshape(shape)
    return jnp.take(x, lo, axis=axis) * (1 - frac) + jnp.take(x, hi, axis=axis) * frac


def resize_bilinear(x: jax.Array, size: tuple[int, int], *, align_corners: bool = False) -> jax.Array:
    """`F.interpolate(x, size, mode='bilinear', align_corners=...)` on NHWC (B, H, W, C).

    `align_corners=False` (half-pixel centres; NVIDIA semantic-segmentation, mmseg) is
    `jax.image.resize(..., 'bilinear', antialias=False)`, which also matches PyTorch when
    downsampling (no antialiasing). `align_corners=True` (HRNet-Seg's Cityscapes configs) maps the
    corner pixels onto each other: `src = dst * (in - 1) / (out - 1)`.
    """
    h, w = int(size[0]), int(size[1])
    if x.shape[1:3] == (h, w):
        return x
    if align_corners:
        return _align_corners_axis(_align_corners_axis(x, h, 1), w, 2)
    out = jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear", antialias=False)
    return out.astype(x.dtype)
