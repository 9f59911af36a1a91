"""Heatmaps -> keypoints: argmax + quarter offset (MSRA), DARK, UDP and UDP combined decoding (NumPy/OpenCV).

Heatmaps are NHWC `(B, h, w, K)`; decoded coordinates are heatmap pixels `(B, K, 2)` (x, y) with
scores `(B, K)` (the heatmap maximum, before any blur; for ``udp_combined``, whose maps are
`(B, h, w, 3K)`, the blurred classification maximum as mmpose). `heatmaps_to_image` then maps them to
image pixels through the inverse of the warp that produced the input crop.

References, followed exactly:

* ``msra``: HRNet `lib/core/inference.py::get_max_preds` and `get_final_preds`
  (`TEST.POST_PROCESS: true`): argmax; if `1 < px < w - 1` and `1 < py < h - 1`, move 0.25 px
  towards the larger neighbour in x and in y; `transform_preds` maps heatmap pixels back with
  the inverse `get_affine_transform` at heatmap size.
* ``dark``: DarkPose (ilovepose/DarkPose) `lib/core/inference.py::get_final_preds`: argmax;
  `gaussian_blur` (zero-padded border, `cv2.GaussianBlur(k, k, 0)` with `TEST.BLUR_KERNEL: 11`,
  rescaled to the map's original maximum); `log(max(hm, 1e-10))`; one Newton step `taylor` at the
  integer argmax with central differences (first derivatives over 1 px, second over 2 px), only
  where `1 < px < w - 2` and `1 < py < h - 2` and the Hessian is invertible.
* ``udp``: UDP-Pose `master` `lib/core/inference.py::post` and `get_final_preds`: argmax;
  `cv2.GaussianBlur(7, 7)` per map, min-max renormalised to the original maximum; clip to
  [0.001, 50]; log; edge-pad by 1; one Newton step with unit-spaced differences (singular Hessian
  -> no step); `transform_preds` maps `x * scale / (w - 1) + center - scale / 2`.
* ``udp_combined`` (maps `(B, h, w, 3K)`, channel `3k` classification, `3k + 1` / `3k + 2` x / y
  offsets in units of the radius; `psa_jax.data.pose_targets`): mmpose 0.x
  `core/evaluation/top_down_eval.py::keypoints_from_heatmaps` (`use_udp=True`,
  `target_type='CombinedTarget'`), the decoder of UDP-Pose's combined-target configs
  (`test_cfg.modulate_kernel=11`): every classification map blurred in place with
  `cv2.GaussianBlur((2k + 1, 2k + 1), 0)` (k = 11: 23 x 23, sigma 3.8) and every offset map with
  `(k, k)` (11 x 11, sigma 2.0), OpenCV's default border; argmax of the blurred classification
  map (its value is the score); coordinate = argmax + radius * (blurred x, y offset at the argmax),
  radius = `radius_factor * max(w, h)`; inverse warp as ``udp``. mmpose 1.x `UDPHeatmap.decode`
  blurs only the classification maps: `blur_offsets=False`.

Deviation, documented: where a heatmap is constant (e.g. all zero for an unlabelled joint) the
references divide 0 by 0 when renormalising and return NaN; here the renormalisation is skipped
for such maps, so the argmax (0, 0) and its score are returned instead.
"""

from __future__ import annotations

import cv2
import numpy as np

from psa_jax.data.pose_targets import CODECS, UDP_CODECS, UDP_RADIUS_FACTOR, PoseCodec, udp_combined_radius
from psa_jax.data.pose_transforms import get_affine_transform, udp_warp_matrix, invert_affine, affine_points

DARK_BLUR_KERNEL = 11  # DarkPose experiments/coco/hrnet/*.yaml TEST.BLUR_KERNEL (both input sizes)
UDP_BLUR_KERNEL = 7  # UDP-Pose master lib/core/inference.py::post
COMBINED_BLUR_KERNEL = 11  # mmpose / UDP-Pose combined-target configs test_cfg.modulate_kernel

__all__ = ["DARK_BLUR_KERNEL", "UDP_BLUR_KERNEL", "COMBINED_BLUR_KERNEL", "get_max_preds", "decode_msra",
           "decode_dark", "decode_udp", "decode_udp_combined", "decode_heatmaps", "heatmaps_to_image",
           "keypoints_from_heatmaps"]


def _check(heatmaps: np.ndarray) -> np.ndarray:
    hm = np.asarray(heatmaps)
    if hm.ndim != 4:
        raise ValueError(f"heatmaps must be NHWC (B, h, w, K), got shape {hm.shape}")
    if not np.all(np.isfinite(hm)):
        raise ValueError("heatmaps contain NaN or inf; check the model output (diverged training?)")
    return hm


def get_max_preds(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer argmax per joint; HRNet `get_max_preds` (coordinates zeroed where max <= 0).

    Args:
      heatmaps: `(B, h, w, K)`.

    Returns:
      coords `(B, K, 2)` float64 (x, y) and maxvals `(B, K)` float32.
    """
    hm = _check(heatmaps)
    b, h, w, k = hm.shape
    flat = hm.reshape(b, h * w, k)
    idx = np.argmax(flat, axis=1)  # first maximum in row-major order, as torch/numpy argmax
    maxvals = np.take_along_axis(flat, idx[:, None, :], axis=1)[:, 0, :]
    coords = np.stack([idx % w, idx // w], axis=-1).astype(np.float64)
    coords *= (maxvals > 0)[..., None]
    return coords, maxvals.astype(np.float32)


def _gather(maps: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """maps `(B, K, H, W)`, integer y/x `(B, K)` -> `(B, K)` values."""
    b, k = np.indices(y.shape)
    return maps[b, k, y, x]


def decode_msra(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax + 0.25 px towards the higher neighbour (HRNet `get_final_preds`, POST_PROCESS)."""
    hm = _check(heatmaps)
    coords, maxvals = get_max_preds(hm)
    _, h, w, _ = hm.shape
    maps = np.moveaxis(hm, 3, 1)  # (B, K, h, w)
    px = np.floor(coords[..., 0] + 0.5).astype(np.int64)
    py = np.floor(coords[..., 1] + 0.5).astype(np.int64)
    ok = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
    pxc, pyc = np.clip(px, 1, w - 2), np.clip(py, 1, h - 2)
    dx = _gather(maps, pyc, pxc + 1).astype(np.float64) - _gather(maps, pyc, pxc - 1)
    dy = _gather(maps, pyc + 1, pxc).astype(np.float64) - _gather(maps, pyc - 1, pxc)
    coords = coords + 0.25 * np.stack([np.sign(dx), np.sign(dy)], axis=-1) * ok[..., None]
    return coords, maxvals


def _dark_blur(maps: np.ndarray, kernel: int) -> np.ndarray:
    """DarkPose `gaussian_blur`: zero-padded blur, rescaled to each map's original maximum.

    maps `(B, K, h, w)` -> float64 `(B, K, h, w)`.
    """
    border = (kernel - 1) // 2
    b, k, h, w = maps.shape
    out = np.empty((b, k, h, w), np.float64)
    for i in range(b):
        padded = np.zeros((h + 2 * border, w + 2 * border, k), np.float64)
        padded[border:border + h, border:border + w] = np.moveaxis(maps[i], 0, -1)
        blurred = cv2.GaussianBlur(padded, (kernel, kernel), 0)[border:border + h, border:border + w]
        out[i] = np.moveaxis(blurred, -1, 0)
    origin_max = maps.reshape(b, k, -1).max(-1).astype(np.float64)
    new_max = out.reshape(b, k, -1).max(-1)
    ratio = np.divide(origin_max, new_max, out=np.ones_like(origin_max), where=new_max != 0)
    return out * ratio[..., None, None]


def decode_dark(heatmaps: np.ndarray, blur_kernel: int = DARK_BLUR_KERNEL) -> tuple[np.ndarray, np.ndarray]:
    """DARK: blur, log, one Taylor (Newton) step at the argmax (DarkPose `get_final_preds`)."""
    hm = _check(heatmaps)
    coords, maxvals = get_max_preds(hm)
    _, h, w, _ = hm.shape
    maps = np.log(np.maximum(_dark_blur(np.moveaxis(hm, 3, 1), blur_kernel), 1e-10))
    px = coords[..., 0].astype(np.int64)
    py = coords[..., 1].astype(np.int64)
    ok = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
    x, y = np.clip(px, 2, w - 3), np.clip(py, 2, h - 3)
    g = lambda dy_, dx_: _gather(maps, y + dy_, x + dx_)  # noqa: E731
    dx = 0.5 * (g(0, 1) - g(0, -1))
    dy = 0.5 * (g(1, 0) - g(-1, 0))
    dxx = 0.25 * (g(0, 2) - 2 * g(0, 0) + g(0, -2))
    dxy = 0.25 * (g(1, 1) - g(-1, 1) - g(1, -1) + g(-1, -1))
    dyy = 0.25 * (g(2, 0) - 2 * g(0, 0) + g(-2, 0))
    det = dxx * dyy - dxy ** 2
    ok &= det != 0
    safe = np.where(ok, det, 1.0)
    # offset = -H^-1 d with H = [[dxx, dxy], [dxy, dyy]]
    off_x = -(dyy * dx - dxy * dy) / safe
    off_y = -(-dxy * dx + dxx * dy) / safe
    coords = coords + np.stack([off_x, off_y], axis=-1) * ok[..., None]
    return coords, maxvals


def decode_udp(heatmaps: np.ndarray, blur_kernel: int = UDP_BLUR_KERNEL) -> tuple[np.ndarray, np.ndarray]:
    """UDP: blur, renormalise, clip, log, edge pad, one Newton step (UDP-Pose `master` `post`)."""
    hm = _check(heatmaps)
    coords, maxvals = get_max_preds(hm)
    b, h, w, k = hm.shape
    maps = np.empty((b, k, h, w), np.float64)
    for i in range(b):
        # the reference blurs the (float32) map with OpenCV's default border (BORDER_REFLECT_101)
        blurred = cv2.GaussianBlur(np.ascontiguousarray(hm[i]), (blur_kernel, blur_kernel), 0)
        maps[i] = np.moveaxis(blurred.reshape(h, w, k), -1, 0)
    orig_max = hm.reshape(b, h * w, k).max(1)  # (B, K)
    mx = maps.reshape(b, k, -1).max(-1)
    mn = maps.reshape(b, k, -1).min(-1)
    rng = mx - mn
    norm = np.divide(maps - mn[..., None, None], rng[..., None, None], out=maps.copy(),
                     where=(rng != 0)[..., None, None]) * np.where(rng != 0, orig_max, 1.0)[..., None, None]
    maps = np.log(np.clip(norm, 0.001, 50))
    maps = np.pad(maps, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    x = coords[..., 0].astype(np.int64) + 1
    y = coords[..., 1].astype(np.int64) + 1
    g = lambda dy_, dx_: _gather(maps, y + dy_, x + dx_)  # noqa: E731
    i0 = g(0, 0)
    ix1, ix1_ = g(0, 1), g(0, -1)
    iy1, iy1_ = g(1, 0), g(-1, 0)
    dx = 0.5 * (ix1 - ix1_)
    dy = 0.5 * (iy1 - iy1_)
    dxx = ix1 - 2 * i0 + ix1_
    dyy = iy1 - 2 * i0 + iy1_
    dxy = 0.5 * (g(1, 1) - ix1 - iy1 + 2 * i0 - ix1_ - iy1_ + g(-1, -1))
    det = dxx * dyy - dxy ** 2
    ok = det != 0  # numpy.linalg.inv raises LinAlgError only for exactly singular matrices
    safe = np.where(ok, det, 1.0)
    step_x = (dyy * dx - dxy * dy) / safe
    step_y = (-dxy * dx + dxx * dy) / safe
    coords = coords - np.stack([step_x, step_y], axis=-1) * ok[..., None]
    return coords, maxvals


def _blur_maps(maps: np.ndarray, kernel: int) -> np.ndarray:
    """`cv2.GaussianBlur((kernel, kernel), 0)` of every `(h, w)` map of a float32 `(B, h, w, C)` array
    (OpenCV's default border, BORDER_REFLECT_101), C split into chunks OpenCV accepts."""
    out = np.empty_like(maps)
    b, c = maps.shape[0], maps.shape[-1]
    for i in range(b):
        for lo in range(0, c, 256):
            chunk = np.ascontiguousarray(maps[i, :, :, lo:lo + 256])
            out[i, :, :, lo:lo + 256] = cv2.GaussianBlur(chunk, (kernel, kernel), 0).reshape(chunk.shape)
    return out


def decode_udp_combined(maps: np.ndarray, blur_kernel: int = COMBINED_BLUR_KERNEL, *,
                        radius_factor: float = UDP_RADIUS_FACTOR, blur_offsets: bool = True
                        ) -> tuple[np.ndarray, np.ndarray]:
    """UDP combined-target decoding: blur, argmax of the classification map, plus the offset there.

    Args:
      maps: `(B, h, w, 3K)` combined maps (channel order as the 'udp_combined' targets).
      blur_kernel: k; classification maps are blurred with a `2k + 1` kernel, offsets with `k`.
      radius_factor: the targets' disk radius / `max(w, h)`.
      blur_offsets: blur the offset maps too (mmpose 0.x / UDP-Pose; False: mmpose 1.x).

    Returns:
      coords `(B, K, 2)` heatmap pixels (float64) and scores `(B, K)` float32 (the blurred
      classification maximum, as mmpose). A classification map with no positive value decodes to
      pixel (0, 0) plus the offsets there (HRNet's `get_max_preds` convention; mmpose writes -1 and
      then reads the offset maps at a wrapped-around index).
    """
    hm = _check(maps)
    b, h, w, c = hm.shape
    if c % 3:
        raise ValueError(f"combined maps need 3 channels per joint (classification, x offset, y offset); got "
                         f"{c} channels. Was the network built for codec 'udp_combined' (3 * num_keypoints outputs)?")
    if blur_kernel < 1 or blur_kernel % 2 == 0:
        raise ValueError(f"blur_kernel must be a positive odd size, got {blur_kernel}")
    hm = hm.astype(np.float32)
    cls = _blur_maps(hm[..., 0::3], 2 * blur_kernel + 1)
    offsets = hm.reshape(b, h, w, c // 3, 3)[..., 1:]  # (B, h, w, K, 2)
    if blur_offsets:
        offsets = _blur_maps(offsets.reshape(b, h, w, -1), blur_kernel).reshape(offsets.shape)
    coords, scores = get_max_preds(cls)
    x = coords[..., 0].astype(np.int64)
    y = coords[..., 1].astype(np.int64)
    bi, ki = np.indices(x.shape)
    radius = udp_combined_radius((w, h), radius_factor)
    return coords + radius * offsets[bi, y, x, ki].astype(np.float64), scores


def decode_heatmaps(heatmaps: np.ndarray, codec: str | PoseCodec, *, blur_kernel: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Decodes `(B, h, w, C)` network outputs with the codec's reference decoder.

    C = K heatmaps, or 3K combined maps for 'udp_combined' (its radius factor from the
    `PoseCodec`, else the default 0.0546875).

    Returns:
      coords `(B, K, 2)` in heatmap pixels (float64) and scores `(B, K)` (float32).
    """
    name = codec.name if isinstance(codec, PoseCodec) else codec
    if name == "udp_combined":
        factor = codec.radius_factor if isinstance(codec, PoseCodec) else UDP_RADIUS_FACTOR
        return decode_udp_combined(heatmaps, blur_kernel or COMBINED_BLUR_KERNEL, radius_factor=factor)
    if name == "msra":
        return decode_msra(heatmaps)
    if name == "dark":
        return decode_dark(heatmaps, blur_kernel or DARK_BLUR_KERNEL)
    if name == "udp":
        return decode_udp(heatmaps, blur_kernel or UDP_BLUR_KERNEL)
    raise ValueError(f"unknown codec {name!r}; expected one of {CODECS}")


def heatmaps_to_image(coords: np.ndarray, center: np.ndarray, scale: np.ndarray, codec: PoseCodec
                      ) -> np.ndarray:
    """Maps heatmap-pixel coordinates to image pixels (inverse of the crop warp, rotation 0).

    For msra/dark this is HRNet `lib/utils/transforms.py::transform_preds` (inverse
    `get_affine_transform` at heatmap size); for udp and udp_combined it is UDP-Pose `transform_preds`
    (`x * scale / (w - 1) + center - scale / 2`), i.e. the inverse of `udp_warp_matrix`.

    Args:
      coords: `(B, K, 2)` heatmap pixels; center, scale: `(B, 2)` image pixels.

    Returns:
      `(B, K, 2)` float64 image coordinates.
    """
    coords = np.asarray(coords, np.float64)
    out = np.empty_like(coords)
    for i in range(coords.shape[0]):
        if codec.name in UDP_CODECS:
            inv = invert_affine(udp_warp_matrix(center[i], scale[i], 0.0, codec.heatmap_wh))
        else:
            inv = get_affine_transform(center[i], scale[i], 0.0, codec.heatmap_wh, inverse=True)
        out[i] = affine_points(coords[i], inv)
    return out


def keypoints_from_heatmaps(heatmaps: np.ndarray, center: np.ndarray, scale: np.ndarray, codec: PoseCodec,
                            *, blur_kernel: int | None = None) -> np.ndarray:
    """Decode + map back: `(B, h, w, K)` heatmaps (`3K` combined maps for 'udp_combined') -> `(B, K, 3)`
    image (x, y, score)."""
    hm = np.asarray(heatmaps)
    if hm.shape[1:3] != tuple(codec.heatmap_size):
        raise ValueError(f"heatmaps {hm.shape[1:3]} do not match the codec's heatmap size "
                         f"{codec.heatmap_size} for input {codec.input_size}")
    coords, scores = decode_heatmaps(hm, codec, blur_kernel=blur_kernel)
    xy = heatmaps_to_image(coords, np.asarray(center, np.float64), np.asarray(scale, np.float64), codec)
    return np.concatenate([xy, scores[..., None].astype(np.float64)], axis=-1)
