"""Geometry of top-down pose: boxes, affine/UDP warps, flips and half-body crops (NumPy/OpenCV).

Reference recipes (followed exactly; each function names its source):

* MSRA/DARK path: the original HRNet code, leoxiaobin/deep-high-resolution-net.pytorch
  (`lib/dataset/coco.py`, `lib/dataset/JointsDataset.py`, `lib/utils/transforms.py`).
* UDP path: HuangJunJie2017/UDP-Pose, `master` branch, `deep-high-resolution-net.pytorch/lib/`
  (`dataset/JointsDataset.py::get_warpmatrix`, `rotate_points`, `utils/transforms.py`).

Conventions used throughout psa_jax pose code:

* Coordinates are pixel indices: pixel `(i, j)` of an image has its centre at `x = j, y = i`,
  so a horizontal flip of a `W`-wide image maps `x -> W - 1 - x` (HRNet `fliplr_joints`).
* `center` is `(x, y)` and `scale` is the box size `(w, h)` **in pixels**, i.e. HRNet's `scale`
  multiplied by `pixel_std = 200`; both references only ever use `scale * 200`, so the warps
  are identical.
* Low-level warp functions take `output_wh = (width, height)` (OpenCV's `dsize` order, as both
  references do). The higher-level pose API takes `input_size = (height, width)`.
* Warp matrices are `(2, 3)` float64 arrays mapping source (image) points to destination
  (crop/heatmap) points: `dst = M[:, :2] @ src + M[:, 2]`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

# COCO person keypoints (17), in the order of COCO's `categories[0]['keypoints']`.
COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# Left/right joint pairs swapped by a horizontal flip (HRNet `coco.py::flip_pairs`, 0-based).
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
# Joints of the upper body for the half-body augmentation (HRNet `coco.py::upper_body_ids`).
COCO_UPPER_BODY_IDS = tuple(range(11))
# COCO's 1-based skeleton (as in the annotation json's category), for drawing.
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
PIXEL_STD = 200.0  # HRNet expresses `scale` in units of 200 px; psa_jax stores pixels.
BOX_PADDING = 1.25  # HRNet `coco.py::_xywh2cs`: scale *= 1.25.
HALF_BODY_PADDING = 1.5  # HRNet `JointsDataset.half_body_transform`: scale *= 1.5.

__all__ = [
    "COCO_KEYPOINT_NAMES", "COCO_FLIP_PAIRS", "COCO_UPPER_BODY_IDS", "COCO_SKELETON",
    "PIXEL_STD", "BOX_PADDING", "HALF_BODY_PADDING",
    "clean_box", "box_to_center_scale", "get_affine_transform", "udp_warp_matrix", "warp_matrix",
    "affine_points", "invert_affine", "flip_matrix", "flip_permutation", "fliplr_joints",
    "half_body_center_scale", "warp_image", "select_training_instances", "InstanceCounts",
]


# ----------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------
def clean_box(box_xywh: Sequence[float], width: int, height: int) -> np.ndarray | None:
    """Clips a COCO box to the image the way HRNet sanitises ground-truth boxes.

    HRNet `lib/dataset/coco.py::_load_coco_keypoint_annotation_kernal`:
    `x1 = max(0, x)`, `x2 = min(W - 1, x1 + max(0, w - 1))` (same for y), kept when
    `x2 >= x1 and y2 >= y1`; the cleaned box is `[x1, y1, x2 - x1, y2 - y1]`. (mmpose instead
    clips `x2 = x + w` to `[0, W - 1]`, a small difference between the two codebases; psa_jax
    follows HRNet here.)

    Returns:
      float64 `(4,)` `[x, y, w, h]`, or None when the box lies outside the image.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    x1 = max(0.0, x)
    y1 = max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 >= x1 and y2 >= y1:
        return np.array([x1, y1, x2 - x1, y2 - y1], np.float64)
    return None


def box_to_center_scale(
    box_xywh: Sequence[float] | np.ndarray,
    aspect_ratio: float,
    padding: float = BOX_PADDING,
) -> tuple[np.ndarray, np.ndarray]:
    """Box `[x, y, w, h]` -> (center, scale) with the model's aspect ratio and padding.

    HRNet `lib/dataset/coco.py::_xywh2cs`: the centre is the box centre; the shorter side is
    grown so that `w / h == aspect_ratio` (= input width / input height, 192/256); then the size
    is multiplied by `padding` (1.25).

    Args:
      box_xywh: `(..., 4)` boxes.
      aspect_ratio: input width / input height.
      padding: size multiplier.

    Returns:
      center `(..., 2)` and scale `(..., 2)` (box size in pixels), float64.
    """
    box = np.asarray(box_xywh, np.float64)
    x, y, w, h = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    center = np.stack([x + w * 0.5, y + h * 0.5], axis=-1)
    wider = w > aspect_ratio * h
    taller = w < aspect_ratio * h
    new_w = np.where(taller, h * aspect_ratio, w)
    new_h = np.where(wider, w / aspect_ratio, h)
    scale = np.stack([new_w, new_h], axis=-1) * padding
    return center, scale


# ----------------------------------------------------------------------------------------------
# Warps
# ----------------------------------------------------------------------------------------------
def get_affine_transform(
    center: Sequence[float],
    scale: Sequence[float],
    rotation: float,
    output_wh: Sequence[float],
    shift: Sequence[float] = (0.0, 0.0),
    inverse: bool = False,
) -> np.ndarray:
    """The standard (biased) top-down crop warp.

    HRNet `lib/utils/transforms.py::get_affine_transform`: three point pairs, the box centre
    `c -> (w/2, h/2)`, the point `c + R(rot) (0, -scale_w/2) -> (w/2, h/2 - w/2)` and a third
    point perpendicular to both; only `scale[0]` sets the zoom (the aspect ratio was already
    fixed by `box_to_center_scale`). In closed form:
    `dst = s * [[cos r, sin r], [-sin r, cos r]] (src - c - scale * shift) + (w/2, h/2)`
    with `s = output_w / scale_w` and `r` in radians. It maps the box edge `c.x - scale_w/2` to
    `x = 0`, i.e. `w` output pixels span `scale_w` input pixels with no half-pixel alignment
    (the bias UDP removes).

    Args:
      center: `(x, y)` box centre in image pixels.
      scale: `(w, h)` box size in pixels (HRNet scale x 200).
      rotation: degrees (HRNet `r`).
      output_wh: `(width, height)` of the crop (or heatmap, for decoding).
      shift: fraction of the box size to shift the centre by (HRNet `shift`, default 0).
      inverse: return the crop -> image map instead.

    Returns:
      `(2, 3)` float64 matrix.
    """
    c = np.asarray(center, np.float64)
    src_w = float(scale[0])
    out_w, out_h = float(output_wh[0]), float(output_wh[1])
    if not src_w > 0 or not math.isfinite(src_w):
        raise ValueError(f"box width must be positive and finite, got scale={tuple(scale)}")
    s = out_w / src_w
    rad = math.radians(float(rotation))
    cs, sn = math.cos(rad), math.sin(rad)
    a = s * np.array([[cs, sn], [-sn, cs]], np.float64)
    origin = c + np.asarray(scale, np.float64) * np.asarray(shift, np.float64)
    t = np.array([out_w * 0.5, out_h * 0.5]) - a @ origin
    m = np.concatenate([a, t[:, None]], axis=1)
    return invert_affine(m) if inverse else m


def udp_warp_matrix(
    center: Sequence[float],
    scale: Sequence[float],
    rotation: float,
    output_wh: Sequence[float],
) -> np.ndarray:
    """The unbiased (UDP) crop warp, image -> crop.

    UDP-Pose `master` `lib/dataset/JointsDataset.py`: the image is warped with
    `get_warpmatrix(r, 2c, image_size - 1, s)` under `cv2.WARP_INVERSE_MAP` (a crop -> image
    matrix) and the joints with `rotate_points` (its inverse); mmpose
    `mmpose/structures/bbox/transforms.py::get_udp_warp_matrix` writes the same map forward.
    Here the forward map is returned:
    `dst = diag(sx, sy) [[cos r, -sin r], [sin r, cos r]] (src - c) + (output - 1) / 2`,
    `sx = (output_w - 1) / scale_w`, `sy = (output_h - 1) / scale_h`: the box spans the crop's
    first to last pixel centre, so continuous image positions map without a half-pixel bias and
    a horizontal flip of the crop (`x -> w - 1 - x`) is a flip of the image box.

    Args/returns as `get_affine_transform` (scale in pixels, rotation in degrees).
    """
    c = np.asarray(center, np.float64)
    sw, sh = float(scale[0]), float(scale[1])
    if not (sw > 0 and sh > 0) or not (math.isfinite(sw) and math.isfinite(sh)):
        raise ValueError(f"box size must be positive and finite, got scale={tuple(scale)}")
    sx = (float(output_wh[0]) - 1.0) / sw
    sy = (float(output_wh[1]) - 1.0) / sh
    rad = math.radians(float(rotation))
    cs, sn = math.cos(rad), math.sin(rad)
    a = np.array([[cs * sx, -sn * sx], [sn * sy, cs * sy]], np.float64)
    t = np.array([sx * sw * 0.5, sy * sh * 0.5]) - a @ c
    return np.concatenate([a, t[:, None]], axis=1)


def warp_matrix(codec: str, center, scale, rotation: float, output_wh) -> np.ndarray:
    """`udp_warp_matrix` for `codec == 'udp'`, else `get_affine_transform` (msra, dark)."""
    if codec == "udp":
        return udp_warp_matrix(center, scale, rotation, output_wh)
    if codec in ("msra", "dark"):
        return get_affine_transform(center, scale, rotation, output_wh)
    raise ValueError(f"unknown codec {codec!r}; expected 'msra', 'dark' or 'udp'")


def affine_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Applies a `(2, 3)` affine map to `(..., 2)` points (HRNet `transforms.affine_transform`)."""
    p = np.asarray(points, np.float64)
    m = np.asarray(matrix, np.float64)
    return p @ m[:, :2].T + m[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a `(2, 3)` affine map."""
    m = np.asarray(matrix, np.float64)
    a_inv = np.linalg.inv(m[:, :2])
    return np.concatenate([a_inv, (-a_inv @ m[:, 2])[:, None]], axis=1)


def flip_matrix(width: float) -> np.ndarray:
    """`(2, 3)` map of a horizontal flip `x -> width - 1 - x` (HRNet `fliplr_joints`)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])


def flip_permutation(num_joints: int, flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS) -> np.ndarray:
    """Index array `perm` such that `joints[perm]` swaps every left/right pair."""
    perm = np.arange(num_joints)
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return perm


def fliplr_joints(
    joints: np.ndarray,
    visible: np.ndarray,
    width: float,
    flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS,
) -> tuple[np.ndarray, np.ndarray]:
    """Flips joints of a `width`-wide image and swaps left/right.

    HRNet `lib/utils/transforms.py::fliplr_joints`: `x -> width - x - 1`, pairs swapped, then
    joints multiplied by visibility (invisible joints become (0, 0)).

    Args:
      joints: `(K, 2)` x, y.
      visible: `(K,)` visibility (0/1).

    Returns:
      flipped `(K, 2)` joints and `(K,)` visibility.
    """
    perm = flip_permutation(len(joints), flip_pairs)
    out = np.asarray(joints, np.float64).copy()
    out[:, 0] = width - out[:, 0] - 1.0
    out = out[perm]
    vis = np.asarray(visible)[perm]
    return out * vis[:, None], vis


def half_body_center_scale(
    joints: np.ndarray,
    visible: np.ndarray,
    rng: np.random.Generator,
    aspect_ratio: float,
    upper_body_ids: Sequence[int] = COCO_UPPER_BODY_IDS,
    padding: float = HALF_BODY_PADDING,
) -> tuple[np.ndarray, np.ndarray] | None:
    """A crop around the upper or the lower body.

    HRNet `JointsDataset.half_body_transform`: joints with visibility > 0 are split into upper
    (`upper_body_ids`) and lower; the upper set is chosen if `randn() < 0.5` and it has more than
    2 joints, else the lower set if it has more than 2, else the upper set; fewer than 2 joints
    -> None. Centre = mean of the chosen joints, size = their extent with the aspect ratio fixed,
    times 1.5.

    Returns:
      (center `(2,)`, scale `(2,)` in pixels), or None.
    """
    upper_mask = np.zeros(len(joints), bool)
    upper_mask[list(upper_body_ids)] = True
    vis = np.asarray(visible) > 0
    upper = np.asarray(joints, np.float64)[vis & upper_mask]
    lower = np.asarray(joints, np.float64)[vis & ~upper_mask]
    if rng.standard_normal() < 0.5 and len(upper) > 2:
        selected = upper
    else:
        selected = lower if len(lower) > 2 else upper
    if len(selected) < 2:
        return None
    center = selected.mean(axis=0)
    w, h = selected.max(axis=0) - selected.min(axis=0)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h]) * padding


def warp_image(image: np.ndarray, matrix: np.ndarray, output_wh: Sequence[int]) -> np.ndarray:
    """`cv2.warpAffine` with bilinear sampling and a black border (both references).

    Args:
      image: `(H, W, C)` uint8.
      matrix: `(2, 3)` image -> crop map.
      output_wh: `(width, height)` of the crop.
    """
    return cv2.warpAffine(image, np.asarray(matrix, np.float64), (int(output_wh[0]), int(output_wh[1])),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# ----------------------------------------------------------------------------------------------
# Which annotated persons become top-down instances
# ----------------------------------------------------------------------------------------------
class InstanceCounts(dict):
    """Counts of annotated persons by outcome (a dict; `+=` merges)."""

    KEYS = ("kept", "crowd", "zero_area", "box_outside_image", "no_labelled_keypoints",
            "degenerate_box", "non_finite", "keypoints_outside_image")

    def __init__(self, **kw):
        super().__init__({k: 0 for k in self.KEYS})
        self.update(kw)

    def __iadd__(self, other):
        for k, v in other.items():
            self[k] = self.get(k, 0) + int(v)
        return self


def select_training_instances(
    bbox: np.ndarray,
    keypoints: np.ndarray,
    area: np.ndarray,
    iscrowd: np.ndarray,
    width: int,
    height: int,
) -> tuple[np.ndarray, np.ndarray, InstanceCounts]:
    """The persons of one image that HRNet turns into top-down samples, with their clean boxes.

    HRNet `lib/dataset/coco.py::_load_coco_keypoint_annotation_kernal`, in its order:
    crowd annotations are skipped (`getAnnIds(iscrowd=False)`); then `area > 0` and a box that
    survives `clean_box`; then persons whose keypoint list is all zeros
    (`max(obj['keypoints']) == 0`) are skipped. Keypoints outside the image are kept (the warp
    and the target weights handle them) and only counted. psa_jax adds two guards the reference
    lacks (it would crash or produce NaN): non-finite numbers, and a clean box of zero width *and*
    height (its scale would be 0).

    Args:
      bbox: `(N, 4)` COCO `[x, y, w, h]`; keypoints `(N, K, 3)`; area `(N,)`; iscrowd `(N,)`.
      width, height: image size from the annotation file.

    Returns:
      indices `(M,)` int64 of the kept persons, their clean boxes `(M, 4)` float64, and counts.
    """
    counts = InstanceCounts()
    keep, boxes = [], []
    for i in range(len(bbox)):
        kp = np.asarray(keypoints[i], np.float64)
        if bool(iscrowd[i]):
            counts["crowd"] += 1
            continue
        if not (np.all(np.isfinite(bbox[i])) and np.all(np.isfinite(kp)) and np.isfinite(area[i])):
            counts["non_finite"] += 1
            continue
        box = clean_box(bbox[i], width, height)
        if not area[i] > 0:
            counts["zero_area"] += 1
            continue
        if box is None:
            counts["box_outside_image"] += 1
            continue
        if kp.max() == 0:
            counts["no_labelled_keypoints"] += 1
            continue
        if box[2] <= 0 and box[3] <= 0:
            counts["degenerate_box"] += 1
            continue
        labelled = kp[:, 2] > 0
        xs, ys = kp[labelled, 0], kp[labelled, 1]
        if np.any((xs < 0) | (xs > width - 1) | (ys < 0) | (ys > height - 1)):
            counts["keypoints_outside_image"] += 1  # kept, as the reference does
        counts["kept"] += 1
        keep.append(i)
        boxes.append(box)
    return (np.asarray(keep, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4), counts)
