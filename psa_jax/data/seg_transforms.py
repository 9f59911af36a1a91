"""Segmentation augmentations on NumPy/OpenCV arrays (one image + its trainId label).

All functions take uint8 RGB images (H, W, 3) and uint8 trainId labels (H, W) and draw their
randomness from an explicit `np.random.Generator`, so a training stream is a pure function of its
seed (see `psa_jax.data.pipeline`).

Random scale + crop is fused into one `cv2.warpAffine` per array: only the output crop is ever
computed, so a 2x scale of a 1024x2048 image costs the same as a 1x one. It reproduces "resize
the whole image to (round(H*s), round(W*s)), pad bottom/right (or around) to the crop size, take a
random crop" with OpenCV's half-pixel-centre convention (`cv2.resize`, `F.interpolate(...,
align_corners=False)`): destination pixel x samples source position (x + x0 + 0.5) / s - 0.5.
Labels use nearest neighbour on the same grid (`cv2.INTER_NEAREST_EXACT`-style rounding, so labels
stay aligned with the image; HRNet-Seg's `cv2.INTER_NEAREST` samples floor(x / s), up to half a
source pixel to the top-left). Pixels outside the scaled image are padding: 0 for the image (black,
before normalisation) and 255 (ignore) for the label, as in HRNet-Semantic-Segmentation
`lib/datasets/base_dataset.py::pad_image`.

References: HRNet-Semantic-Segmentation `lib/datasets/base_dataset.py::{multi_scale_aug, rand_crop,
gen_sample}`; NVIDIA/semantic-segmentation `transforms/joint_transforms.py::{RandomSizeAndCrop,
RandomCrop, RandomHorizontallyFlip}` and torchvision `ColorJitter` (brightness, contrast,
saturation, hue) as used by NVIDIA `datasets/__init__.py`.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "normalize_image", "denormalize_image", "scaled_size",
    "sample_scale", "scale_crop", "random_scale_crop", "resize_then_crop", "hflip",
    "color_jitter",
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_MEAN_255 = IMAGENET_MEAN * 255.0
_INV_STD_255 = 1.0 / (IMAGENET_STD * 255.0)
_MEAN_SCALAR = tuple(float(v) for v in _MEAN_255) + (0.0,)
_INV_STD_SCALAR = tuple(float(v) for v in _INV_STD_255) + (0.0,)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 `(image / 255 - mean) / std` with ImageNet mean/std."""
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        # OpenCV's SIMD loops: one fused convert+subtract pass and one multiply, faster than NumPy.
        out = cv2.subtract(image, _MEAN_SCALAR, dtype=cv2.CV_32F)
        return cv2.multiply(out, _INV_STD_SCALAR, dst=out)
    return (image.astype(np.float32) - _MEAN_255) * _INV_STD_255


def denormalize_image(image: np.ndarray) -> np.ndarray:
    """Inverse of `normalize_image`, rounded and clipped to uint8."""
    return np.clip(np.rint(np.asarray(image, np.float32) / _INV_STD_255 + _MEAN_255), 0, 255).astype(np.uint8)


def scaled_size(height: int, width: int, scale: float, *, rounding: str = "round") -> tuple[int, int]:
    """The image size after scaling by `scale`.

    rounding='round' is HRNet-Seg's `multi_scale_aug` (long side `int(base * s + 0.5)` with
    base = long side, short side `int(short * long_new / long + 0.5)`); 'floor' is NVIDIA's
    `RandomSizeAndCrop` (`int(side * s)`).
    """
    if rounding == "floor":
        return max(1, int(height * scale)), max(1, int(width * scale))
    if rounding != "round":
        raise ValueError(f"rounding={rounding!r}; use 'round' or 'floor'")
    if height > width:
        new_h = int(height * scale + 0.5)
        return max(1, new_h), max(1, int(width * new_h / height + 0.5))
    new_w = int(width * scale + 0.5)
    return max(1, int(height * new_w / width + 0.5)), max(1, new_w)


def sample_scale(rng: np.random.Generator, scale_range: tuple[float, float], scale_step: float | None) -> float:
    """A random scale factor.

    scale_step=None: uniform in [lo, hi] (NVIDIA `random.uniform(0.5, 2.0)`). scale_step=0.1 with
    range (0.5, 2.1): one of {0.5, 0.6, ..., 2.1} uniformly, HRNet-Seg's `0.5 + randint(0, 16) / 10`
    (Python `random.randint` includes both ends).
    """
    lo, hi = scale_range
    if scale_step is None:
        return float(rng.uniform(lo, hi))
    n = int(round((hi - lo) / scale_step))
    return float(lo + scale_step * int(rng.integers(0, n + 1)))


def scale_crop(
    image: np.ndarray,
    label: np.ndarray,
    scaled_hw: tuple[int, int],
    crop_hw: tuple[int, int],
    offset_yx: tuple[int, int],
    *,
    image_interpolation: int = cv2.INTER_LINEAR,
    image_pad: int = 0,
    label_pad: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop `crop_hw` at `offset_yx` of the image resized to `scaled_hw`, computed in one warp.

    Args:
      image: uint8 (H, W, 3).
      label: uint8 (H, W).
      scaled_hw: the virtual resized size (new_h, new_w).
      crop_hw: output size.
      offset_yx: top-left corner of the crop in the resized image; may be negative (the resized
        image then sits that far inside the crop, with padding before it).
    Returns:
      (image crop uint8 crop_hw + (3,), label crop uint8 crop_hw).
    """
    h, w = label.shape
    new_h, new_w = scaled_hw
    ch, cw = crop_hw
    oy, ox = offset_yx
    sy, sx = new_h / h, new_w / w
    # dst x = sx * src_x + (sx - 1) / 2 - ox  (half-pixel centres, then shift by the crop offset)
    m = np.array([[sx, 0.0, 0.5 * (sx - 1.0) - ox], [0.0, sy, 0.5 * (sy - 1.0) - oy]], np.float64)
    # BORDER_REPLICATE reproduces cv2.resize's edge clamping; the true padding is painted below.
    img = cv2.warpAffine(image, m, (cw, ch), flags=image_interpolation, borderMode=cv2.BORDER_REPLICATE)
    lab = cv2.warpAffine(label, m, (cw, ch), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    # The resized image covers crop rows [y0, y1) and columns [x0, x1); paint the rest.
    y0, y1 = min(max(0, -oy), ch), max(0, min(ch, new_h - oy))
    x0, x1 = min(max(0, -ox), cw), max(0, min(cw, new_w - ox))
    for arr, value in ((img, image_pad), (lab, label_pad)):
        arr[:y0] = value
        arr[y1:] = value
        arr[:, :x0] = value
        arr[:, x1:] = value
    return img, lab


def _crop_offset(rng: np.random.Generator, size: int, crop: int, pad_mode: str) -> int:
    if size >= crop:
        return int(rng.integers(0, size - crop + 1))
    if pad_mode == "bottom_right":  # HRNet-Seg pad_image: image at the top-left
        return 0
    # NVIDIA RandomCrop(nopad=False): pad (crop - size) // 2 + 1 on both sides, then random crop.
    pad = (crop - size) // 2 + 1
    return int(rng.integers(0, size + 2 * pad - crop + 1)) - pad


def random_scale_crop(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_hw: tuple[int, int] = (512, 1024),
    scale_range: tuple[float, float] = (0.5, 2.1),
    scale_step: float | None = 0.1,
    rounding: str = "round",
    pad_mode: str = "bottom_right",
    image_interpolation: int = cv2.INTER_LINEAR,
    image_pad: int = 0,
    label_pad: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale, then a random crop of `crop_hw` (padded where the scaled image is smaller).

    Defaults follow HRNet-Seg (scales {0.5, ..., 2.1}, rounded sizes, padding bottom/right,
    bilinear image); NVIDIA uses scale_range (0.5, 2.0), scale_step None, rounding 'floor',
    pad_mode 'centre', cv2.INTER_CUBIC (PIL bicubic) and crop (1024, 2048).
    """
    if pad_mode not in ("bottom_right", "centre"):
        raise ValueError(f"pad_mode={pad_mode!r}; use 'bottom_right' or 'centre'")
    scale = sample_scale(rng, scale_range, scale_step)
    new_h, new_w = scaled_size(*label.shape, scale, rounding=rounding)
    oy = _crop_offset(rng, new_h, crop_hw[0], pad_mode)
    ox = _crop_offset(rng, new_w, crop_hw[1], pad_mode)
    return scale_crop(image, label, (new_h, new_w), crop_hw, (oy, ox), image_interpolation=image_interpolation,
                      image_pad=image_pad, label_pad=label_pad)


def resize_then_crop(
    image: np.ndarray,
    label: np.ndarray,
    scaled_hw: tuple[int, int],
    crop_hw: tuple[int, int],
    offset_yx: tuple[int, int],
    *,
    image_pad: int = 0,
    label_pad: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """The unfused reference for `scale_crop`: `cv2.resize` the whole image, pad, crop (slow; tests)."""
    new_h, new_w = scaled_hw
    img = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    lab = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT)
    ch, cw = crop_hw
    oy, ox = offset_yx
    pad = ((max(0, -oy), max(0, oy + ch - new_h)), (max(0, -ox), max(0, ox + cw - new_w)))
    img = np.pad(img, pad + ((0, 0),), constant_values=image_pad)
    lab = np.pad(lab, pad, constant_values=label_pad)
    y, x = max(0, oy), max(0, ox)
    return img[y:y + ch, x:x + cw], lab[y:y + ch, x:x + cw]


def hflip(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip of an image (H, W, C) and its label (H, W)."""
    return cv2.flip(image, 1), cv2.flip(label, 1)


def _blend(image: np.ndarray, other: np.ndarray | None, factor: float, constant: float = 0.0) -> np.ndarray:
    # factor * image + (1 - factor) * (other or constant), rounded and saturated to uint8 (PIL's
    # Image.blend does the same per step, which is what torchvision ColorJitter runs on PIL images).
    if other is None:
        return cv2.addWeighted(image, factor, image, 0.0, (1.0 - factor) * constant)
    return cv2.addWeighted(image, factor, other, 1.0 - factor, 0.0)


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness: float = 0.25,
    contrast: float = 0.25,
    saturation: float = 0.25,
    hue: float = 0.25,
) -> np.ndarray:
    """Photometric jitter in the manner of torchvision `ColorJitter` (NVIDIA uses 0.25 for all four).

    Brightness, contrast and saturation factors are drawn from [1 - v, 1 + v] and the hue shift
    from [-hue, hue] (fraction of the colour circle); the four are applied in a random order, each
    rounding to uint8 as PIL does. Brightness blends with black, contrast with the mean grey level,
    saturation with the grey image; hue rotates H in HSV (OpenCV's H has 180 steps).

    Args:
      image: uint8 (H, W, 3) RGB.
    Returns:
      uint8 (H, W, 3) RGB.
    """
    out = np.asarray(image, np.uint8)
    for op in rng.permutation(4):
        if op == 0 and brightness > 0:
            out = _blend(out, None, rng.uniform(max(0.0, 1 - brightness), 1 + brightness))
        elif op == 1 and contrast > 0:
            grey = float(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).mean())
            out = _blend(out, None, rng.uniform(max(0.0, 1 - contrast), 1 + contrast), grey)
        elif op == 2 and saturation > 0:
            grey = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
            out = _blend(out, grey, rng.uniform(max(0.0, 1 - saturation), 1 + saturation))
        elif op == 3 and hue > 0:
            shift = int(round(rng.uniform(-hue, hue) * 180))
            values = np.arange(256)
            lut = np.stack([(values + shift) % 180, values, values], axis=-1).astype(np.uint8).reshape(256, 1, 3)
            hsv = cv2.LUT(cv2.cvtColor(out, cv2.COLOR_RGB2HSV), lut)
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out
