"""Segmentation test-time inference: whole image, sliding window, multi-scale + flip, NVIDIA mscale.

Every mode takes `predict_fn(images) -> logits`, images float32 NHWC (B, h, w, 3) normalised,
logits NHWC (B, h', w', C) at any resolution (models return 1/4 of the input), and returns
float32 (B, H, W, C) scores at `out_size` (default: the input size), from which the caller takes the
argmax. Resizing is bilinear with half-pixel centres and no antialiasing (`jax.image.resize(...,
antialias=False)` = PyTorch `F.interpolate(mode='bilinear', align_corners=False)`).

  whole_inference       one forward pass, logits resized (HRNet-Seg single-scale protocol:
                        whole 1024x2048 image, `lib/datasets/base_dataset.py::inference`).
  slide_inference       overlapping windows; each window's logits are resized to the window and
                        summed into the image, then divided by the number of windows covering each
                        pixel (mmsegmentation `EncoderDecoder.slide_inference`: grid of
                        ceil((size - window) / stride) + 1 windows, the last aligned to the border).
  multiscale_inference  average over scales (and horizontal flips) of softmax probabilities of the
                        logits resized to `out_size`; a scaled image larger than `window` is
                        processed by sliding windows (scales, windows and stride as HRNet-Seg
                        `lib/datasets/cityscapes.py::multi_scale_inference`: 0.5..1.75, flip,
                        1024x2048 windows with stride = window). Averaging probabilities over
                        flips is mmseg's `aug_test`; HRNet-Seg's `base_dataset.inference` averages
                        a flip pair's logits and exponentiates instead.
  mscale_inference      NVIDIA hierarchical multi-scale attention
                        (`network/ocrnet.py::MscaleOCR.nscale_forward`, scales 0.5/1.0/2.0, no flip):
                        the network's own method (`psa_jax.models.mscale.MscaleOCR.nscale(images,
                        scales)`) does the merging; this only resizes its joint logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["resize_nhwc", "whole_inference", "window_starts", "slide_inference", "multiscale_inference",
           "mscale_inference", "PredictFn"]

PredictFn = Callable[[jax.Array], jax.Array]


def resize_nhwc(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of (B, h, w, C) to (B, *size, C), half-pixel centres, no antialiasing, float32."""
    x = jnp.asarray(x, jnp.float32)
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return jax.image.resize(x, (x.shape[0], int(size[0]), int(size[1]), x.shape[3]), "bilinear", antialias=False)


def whole_inference(predict_fn: PredictFn, images: jax.Array, *, out_size: tuple[int, int] | None = None) -> jax.Array:
    """Logits of the whole image, resized to `out_size` -> float32 (B, H, W, C)."""
    out_size = tuple(images.shape[1:3]) if out_size is None else tuple(out_size)
    return resize_nhwc(predict_fn(images), out_size)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of length `window` covering [0, size) with `stride`, the last one
    aligned to the end (`max(size - window, 0)`)."""
    if window >= size:
        return [0]
    if stride < 1:
        raise ValueError(f"stride={stride} must be >= 1")
    n = math.ceil((size - window) / stride) + 1
    return sorted({min(i * stride, size - window) for i in range(n)})


def slide_inference(
    predict_fn: PredictFn,
    images: jax.Array,
    *,
    window: tuple[int, int] = (512, 1024),
    stride: tuple[int, int] | None = None,
    out_size: tuple[int, int] | None = None,
) -> jax.Array:
    """Sliding-window logits, averaged where windows overlap -> float32 (B, H, W, C) at out_size.

    Args:
      window: (h, w) of each window; clipped to the image (a smaller image is one window).
      stride: (h, w) steps; default 2/3 of the window (rounded up), as mmseg's Cityscapes configs.
    """
    _, h, w, _ = images.shape
    wh, ww = min(window[0], h), min(window[1], w)
    if stride is None:
        stride = (math.ceil(2 * window[0] / 3), math.ceil(2 * window[1] / 3))
    ys, xs = window_starts(h, wh, stride[0]), window_starts(w, ww, stride[1])
    count = np.zeros((h, w), np.float32)
    total = None
    for y in ys:
        for x in xs:
            logits = resize_nhwc(predict_fn(images[:, y:y + wh, x:x + ww]), (wh, ww))
            if total is None:
                total = jnp.zeros((images.shape[0], h, w, logits.shape[-1]), jnp.float32)
            total = total.at[:, y:y + wh, x:x + ww].add(logits)
            count[y:y + wh, x:x + ww] += 1
    logits = total / jnp.asarray(count)[None, :, :, None]
    out_size = (h, w) if out_size is None else tuple(out_size)
    return resize_nhwc(logits, out_size)


def multiscale_inference(
    predict_fn: PredictFn,
    images: jax.Array,
    *,
    scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    flip: bool = True,
    window: tuple[int, int] | None = (1024, 2048),
    stride: tuple[int, int] | None = None,
    out_size: tuple[int, int] | None = None,
) -> jax.Array:
    """Mean softmax probabilities over scales (x flips) -> float32 (B, H, W, C) at out_size.

    Each scale resizes the image to (int(H*s + 0.5), int(W*s + 0.5)); a scaled image larger than
    `window` in either side goes through `slide_inference(window, stride)` (stride default: the
    window, as HRNet-Seg), otherwise through one forward pass. Flipped predictions are flipped
    back before averaging. window=None: always whole-image.
    """
    _, h, w, _ = images.shape
    out_size = (h, w) if out_size is None else tuple(out_size)
    total, n = None, 0
    for s in scales:
        size = (max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5)))
        scaled = resize_nhwc(images, size)
        for flipped in ((False, True) if flip else (False,)):
            x = scaled[:, :, ::-1] if flipped else scaled
            if window is not None and (size[0] > window[0] or size[1] > window[1]):
                logits = slide_inference(predict_fn, x, window=window, stride=stride or tuple(window))
            else:
                logits = whole_inference(predict_fn, x)
            if flipped:
                logits = logits[:, :, ::-1]
            probs = jax.nn.softmax(resize_nhwc(logits, out_size), axis=-1)
            total = probs if total is None else total + probs
            n += 1
    return total / n


def mscale_inference(
    nscale_fn: Callable[[jax.Array, Sequence[float]], jax.Array],
    images: jax.Array,
    *,
    scales: Sequence[float] = (0.5, 1.0, 2.0),
    out_size: tuple[int, int] | None = None,
) -> jax.Array:
    """NVIDIA hierarchical multi-scale attention inference -> float32 logits (B, H, W, C) at out_size.

    Args:
      nscale_fn: `(images, scales) -> joint logits` (B, h, w, C), e.g. `MscaleOCR.nscale` in eval
        mode; it runs every scale and merges them with its attention heads.
      scales: must contain 1.0 (the target scale of the hierarchy).
    """
    if 1.0 not in tuple(scales):
        raise ValueError(f"scales={tuple(scales)} must contain 1.0 (the target scale of the hierarchy)")
    out_size = tuple(images.shape[1:3]) if out_size is None else tuple(out_size)
    return resize_nhwc(nscale_fn(images, tuple(scales)), out_size)
