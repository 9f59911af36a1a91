"""Pictures of predicted poses: the COCO skeleton drawn over an image with OpenCV.

Each person is drawn as its limbs (the 19 edges of COCO's person skeleton, as listed in the
`categories[0].skeleton` of `person_keypoints_*.json`) and a filled circle per keypoint. Colours
follow the body side of the joints: a limb between two left joints (`left_*` in
`COCO_KEYPOINT_NAMES`) is drawn in `LEFT_COLOR`, between two right joints in `RIGHT_COLOR`, a limb
across the midline (eye to eye, nose to each eye, shoulder to shoulder, hip to hip) in
`CENTER_COLOR`; a keypoint takes the colour of its own side (the nose: `CENTER_COLOR`). Joints whose score is below `score_threshold` are hidden, and
so is every limb that touches one.

Images are uint8 `(H, W, 3)` in OpenCV's BGR order (what `cv2.imread` returns and `cv2.imwrite`
expects); the colour constants are BGR too.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from psa_jax.data.pose_transforms import COCO_KEYPOINT_NAMES, COCO_SKELETON

__all__ = [
    "BOX_COLOR",
    "CENTER_COLOR",
    "COCO_JOINT_SIDES",
    "COCO_LIMBS",
    "LEFT_COLOR",
    "RIGHT_COLOR",
    "default_line_width",
    "draw_box",
    "draw_pose",
    "joint_colors",
    "limb_colors",
]

# COCO's skeleton with 0-based joint indices (the annotation file lists them 1-based).
COCO_LIMBS: tuple[tuple[int, int], ...] = tuple((a - 1, b - 1) for a, b in COCO_SKELETON)
# Body side of each COCO keypoint from its name: 'left', 'right' or 'center' (the nose).
COCO_JOINT_SIDES: tuple[str, ...] = tuple(
    "left" if n.startswith("left_") else "right" if n.startswith("right_") else "center" for n in COCO_KEYPOINT_NAMES)

LEFT_COLOR = (255, 128, 0)     # BGR: blue-ish, the person's left side
RIGHT_COLOR = (0, 128, 255)    # BGR: orange, the person's right side
CENTER_COLOR = (0, 220, 0)     # BGR: green, limbs crossing the midline and the nose
BOX_COLOR = (255, 255, 255)    # BGR: white person boxes
_SIDE_COLOR = {"left": LEFT_COLOR, "right": RIGHT_COLOR, "center": CENTER_COLOR}


def joint_colors(sides: Sequence[str] = COCO_JOINT_SIDES) -> list[tuple[int, int, int]]:
    """BGR colour of each keypoint: the colour of its body side."""
    return [_SIDE_COLOR[s] for s in sides]


def limb_colors(limbs: Sequence[tuple[int, int]] = COCO_LIMBS,
                sides: Sequence[str] = COCO_JOINT_SIDES) -> list[tuple[int, int, int]]:
    """BGR colour of each limb: left/right when both ends are on that side, else the centre colour."""
    return [_SIDE_COLOR[sides[a]] if sides[a] == sides[b] else CENTER_COLOR for a, b in limbs]


def default_line_width(height: int, width: int) -> int:
    """Limb thickness in pixels for an image: 1 px per 160 px of the shorter side, at least 2."""
    return max(2, round(min(height, width) / 160))


def draw_box(image: np.ndarray, box_xywh: Sequence[float], *, color: tuple[int, int, int] = BOX_COLOR,
             thickness: int = 1, label: str | None = None) -> np.ndarray:
    """Draws a `[x, y, w, h]` rectangle (and an optional text label above it) on `image` in place."""
    x, y, w, h = (float(v) for v in box_xywh)
    p0 = (round(x), round(y))
    p1 = (round(x + w), round(y + h))
    cv2.rectangle(image, p0, p1, color, thickness, cv2.LINE_AA)
    if label:
        cv2.putText(image, label, (p0[0], max(p0[1] - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)
    return image


def draw_pose(image: np.ndarray, keypoints: np.ndarray, *, score_threshold: float = 0.3,
              limbs: Sequence[tuple[int, int]] = COCO_LIMBS, sides: Sequence[str] = COCO_JOINT_SIDES,
              line_width: int | None = None, radius: int | None = None) -> np.ndarray:
    """Draws the skeletons of one or several persons on a copy of `image`.

    Args:
      image: uint8 `(H, W, 3)` BGR.
      keypoints: `(K, 3)` or `(N, K, 3)` image pixels `x, y` and a score per joint (a score of
        1 for ground truth with `v > 0`); with the default `limbs` and `sides`, K = 17 (COCO).
      score_threshold: joints scoring below it are not drawn, nor any limb touching them.
      limbs: 0-based joint pairs to connect; sides: 'left' | 'right' | 'center' per joint.
      line_width: limb thickness (default `default_line_width`); radius: keypoint circle radius
        (default `line_width + 1`).

    Returns:
      the drawn uint8 `(H, W, 3)` BGR image (`image` itself is not modified).
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"draw_pose needs a uint8 (H, W, 3) BGR image, got {img.dtype} {img.shape}")
    kps = np.asarray(keypoints, np.float64)
    if kps.ndim == 2:
        kps = kps[None]
    if kps.ndim != 3 or kps.shape[-1] != 3:
        raise ValueError(f"keypoints must be (K, 3) or (N, K, 3) x, y, score; got shape {np.shape(keypoints)}")
    k = kps.shape[1]
    if len(sides) != k or any(max(a, b) >= k for a, b in limbs):
        raise ValueError(f"the skeleton ({len(sides)} joint sides, limbs up to joint "
                         f"{max((max(p) for p in limbs), default=-1)}) does not fit {k} keypoints; "
                         "pass limbs= and sides= for a keypoint set other than COCO's 17")
    out = np.ascontiguousarray(img.copy())
    lw = default_line_width(*img.shape[:2]) if line_width is None else int(line_width)
    r = lw + 1 if radius is None else int(radius)
    l_colors, j_colors = limb_colors(limbs, sides), joint_colors(sides)
    for person in kps:
        shown = np.isfinite(person).all(axis=1) & (person[:, 2] >= score_threshold)
        pts = np.round(np.where(np.isfinite(person[:, :2]), person[:, :2], 0)).astype(np.int64)
        for (a, b), color in zip(limbs, l_colors):
            if shown[a] and shown[b]:
                cv2.line(out, (int(pts[a, 0]), int(pts[a, 1])), (int(pts[b, 0]), int(pts[b, 1])), color, lw,
                         cv2.LINE_AA)
        for j in np.flatnonzero(shown):
            cv2.circle(out, (int(pts[j, 0]), int(pts[j, 1])), r, j_colors[j], -1, cv2.LINE_AA)
    return out
