"""A synthetic COCO person-keypoint dataset in COCO's own layout (for demos and tests).

    write_synthetic_coco('/tmp/synth', num_train=512, num_val=64)
    -> /tmp/synth/{train2017,val2017}/*.jpg
       /tmp/synth/annotations/person_keypoints_{train,val}2017.json
       /tmp/synth/annotations/person_detections_val2017.json

Each image shows 1-3 frontal stick figures drawn with OpenCV over a smooth random background.
The 17 COCO joints are dots joined by limbs; every joint type has its own colour except that a
left/right pair shares one, and the two sides are told apart by a mirror-asymmetric marker (a
white notch on the figure's outer side) and by their place in the figure. This keeps the
horizontal-flip augmentation valid: a mirrored left wrist looks exactly like a right wrist, as
for real people, whereas a colour unique to "left wrist" would contradict the swapped label.
About 8% of joints are not labelled (v=0, not drawn) and about 10% are labelled but occluded
(v=1, drawn small); joints outside the image are unlabelled, as in COCO. Areas are ~60% of the
tight box (a segment-like area), occasionally a tiny far-away person has no labelled keypoint
(num_keypoints=0, as COCO has).

The detections json imitates a person detector: every annotated person gets a jittered box with
a high score, sometimes a duplicate with a lower score, and each image 0-2 low-score false boxes.
The files go through exactly the same builder, pipeline and evaluator as real COCO.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from etils import epath

from psa_jax.data.pose_transforms import COCO_KEYPOINT_NAMES, COCO_SKELETON

__all__ = ["write_synthetic_coco", "render_person", "JOINT_COLORS"]

# One BGR colour per joint type; left/right partners share a colour (see the module docstring).
_PAIR_COLORS = [(255, 255, 255), (0, 215, 255), (255, 0, 255), (0, 0, 255), (0, 255, 0),
                (255, 0, 0), (0, 128, 255), (255, 255, 0), (128, 0, 255)]
_JOINT_TYPE = [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]
JOINT_COLORS = [_PAIR_COLORS[t] for t in _JOINT_TYPE]
_SIDE = np.array([0, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1], np.float64)  # +1 = left


def _figure(rng: np.random.Generator) -> np.ndarray:
    """A random frontal pose in body units (height ~1, y down, pelvis at 0): `(17, 2)`.

    The person's left side is at +x (a person facing the camera).
    """
    p = np.zeros((17, 2))
    neck = np.array([0.0, -0.33])
    head = neck + np.array([rng.uniform(-0.03, 0.03), -0.1])
    p[0] = head
    p[1], p[2] = head + [0.03, -0.025], head + [-0.03, -0.025]
    p[3], p[4] = head + [0.065, -0.005], head + [-0.065, -0.005]
    for side, (s, e, w) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):
        shoulder = neck + [side * 0.12, 0.02]
        a1 = math.radians(rng.uniform(-15, 130))
        a2 = a1 + math.radians(rng.uniform(-30, 100))
        elbow = shoulder + 0.16 * np.array([side * math.sin(a1), math.cos(a1)])
        wrist = elbow + 0.15 * np.array([side * math.sin(a2), math.cos(a2)])
        p[s], p[e], p[w] = shoulder, elbow, wrist
    for side, (h, k, a) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):
        hip = np.array([side * 0.08, 0.0])
        a1 = math.radians(rng.uniform(-10, 35))
        a2 = a1 + math.radians(rng.uniform(-25, 15))
        knee = hip + 0.23 * np.array([side * math.sin(a1), math.cos(a1)])
        ankle = knee + 0.23 * np.array([side * math.sin(a2), math.cos(a2)])
        p[h], p[k], p[a] = hip, knee, ankle
    return p


def render_person(image: np.ndarray, joints: np.ndarray, visibility: np.ndarray, height_px: float,
                  angle: float) -> None:
    """Draws one stick figure in place.

    Args:
      image: `(H, W, 3)` uint8 BGR canvas.
      joints: `(17, 2)` joint positions in pixels.
      visibility: `(17,)` COCO v (0: not drawn, 1: drawn small, 2: drawn).
      height_px: figure height in pixels (sets line and dot sizes).
      angle: figure rotation in radians (orients the side markers).
    """
    thick = max(1, int(round(height_px * 0.018)))
    radius = max(2, int(round(height_px * 0.028)))
    shift = 4  # sub-pixel drawing
    f = float(1 << shift)
    drawn = visibility > 0
    for a, b in COCO_SKELETON:
        a, b = a - 1, b - 1
        if drawn[a] and drawn[b]:
            color = tuple(int(0.6 * c) for c in JOINT_COLORS[b])
            cv2.line(image, tuple(np.round(joints[a] * f).astype(int)), tuple(np.round(joints[b] * f).astype(int)),
                     color, thick, cv2.LINE_AA, shift)
    outward = np.array([math.cos(angle), math.sin(angle)])
    for j in range(17):
        if not drawn[j]:
            continue
        r = radius if visibility[j] == 2 else max(1, radius // 2)
        c = joints[j]
        cv2.circle(image, tuple(np.round(c * f).astype(int)), int(r * f), JOINT_COLORS[j], -1, cv2.LINE_AA, shift)
        if _SIDE[j] != 0 and visibility[j] == 2:
            notch = c + _SIDE[j] * outward * r * 0.6
            cv2.circle(image, tuple(np.round(notch * f).astype(int)), int(max(1.0, r * 0.4) * f), (255, 255, 255),
                       -1, cv2.LINE_AA, shift)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    corners = rng.uniform(20, 140, size=(2, 2, 3)).astype(np.float32)
    bg = cv2.resize(corners, (w, h), interpolation=cv2.INTER_LINEAR)
    bg += rng.normal(0, 6, size=(h, w, 3)).astype(np.float32)
    for _ in range(rng.integers(0, 4)):  # grey clutter
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        cv2.rectangle(bg, (int(x0), int(y0)), (int(x0 + rng.integers(5, w // 3)), int(y0 + rng.integers(5, h // 3))),
                      tuple(float(v) for v in [rng.uniform(40, 160)] * 3), -1)
    return np.clip(bg, 0, 255).astype(np.uint8)


def _person(rng: np.random.Generator, h: int, w: int, tiny: bool = False) -> dict[str, Any]:
    height_px = rng.uniform(0.04, 0.08) * h if tiny else rng.uniform(0.35, 0.9) * h
    angle = math.radians(rng.uniform(-15, 15))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pose = _figure(rng) @ rot.T * height_px
    lo, hi = pose.min(0), pose.max(0)
    # place so that the figure is mostly inside (a little may leave the frame)
    margin = 0.1 * (hi - lo)
    tx = rng.uniform(-lo[0] - margin[0], w - hi[0] + margin[0])
    ty = rng.uniform(-lo[1] - margin[1], h - hi[1] + margin[1])
    joints = pose + [tx, ty]
    u = rng.random(17)
    vis = np.where(u < 0.08, 0, np.where(u < 0.18, 1, 2))
    inside = (joints[:, 0] >= 0) & (joints[:, 0] <= w - 1) & (joints[:, 1] >= 0) & (joints[:, 1] <= h - 1)
    vis = np.where(inside, vis, 0)
    if tiny:
        vis[:] = 0
    # box: the figure plus a head/feet/hand margin, clipped to the image
    x0, y0 = joints.min(0) - [0.06 * height_px, 0.08 * height_px]
    x1, y1 = joints.max(0) + [0.06 * height_px, 0.04 * height_px]
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(w - 1.0, x1), min(h - 1.0, y1)
    return {"joints": joints, "vis": vis, "height_px": height_px, "angle": angle,
            "bbox": [x0, y0, max(1.0, x1 - x0), max(1.0, y1 - y0)]}


def _write_split(root: epath.Path, split: str, n: int, image_size: Sequence[int], rng: np.random.Generator,
                 next_ann_id: list[int], first_image_id: int, with_detections: bool) -> dict[str, Any]:
    h, w = int(image_size[0]), int(image_size[1])
    folder = root / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations, detections = [], [], []
    for i in range(n):
        image_id = first_image_id + i
        canvas = _background(rng, h, w)
        people = [_person(rng, h, w) for _ in range(int(rng.integers(1, 4)))]
        if rng.random() < 0.05:
            people.append(_person(rng, h, w, tiny=True))
        for p in people:
            render_person(canvas, p["joints"], p["vis"], p["height_px"], p["angle"])
        name = f"{image_id:012d}.jpg"
        ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise RuntimeError(f"could not encode synthetic image {name}")
        (folder / name).write_bytes(buf.tobytes())
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for p in people:
            kp = np.zeros((17, 3))
            labelled = p["vis"] > 0
            kp[labelled, :2] = np.round(p["joints"][labelled], 2)
            kp[:, 2] = p["vis"]
            bx, by, bw, bh = p["bbox"]
            annotations.append({
                "id": next_ann_id[0], "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "keypoints": [float(v) if k % 3 < 2 else int(v) for k, v in enumerate(kp.reshape(-1))],
                "num_keypoints": int(labelled.sum()), "bbox": [round(float(v), 2) for v in p["bbox"]],
                "area": round(float(0.6 * bw * bh), 2), "segmentation": [],
            })
            next_ann_id[0] += 1
            if with_detections:
                for dup in range(1 + int(rng.random() < 0.3)):
                    jitter = rng.normal(0, 0.04, size=4) * [bw, bh, bw, bh]
                    box = [bx + jitter[0], by + jitter[1], bw * (1 + jitter[2] / bw), bh * (1 + jitter[3] / bh)]
                    score = rng.uniform(0.75, 1.0) if dup == 0 else rng.uniform(0.05, 0.5)
                    detections.append({"image_id": image_id, "category_id": 1, "score": round(float(score), 4),
                                       "bbox": [round(float(v), 2) for v in box]})
        if with_detections:
            for _ in range(int(rng.integers(0, 3))):
                bw, bh = rng.uniform(10, w / 3), rng.uniform(20, h / 2)
                box = [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh]
                detections.append({"image_id": image_id, "category_id": 1,
                                   "score": round(float(rng.uniform(0.01, 0.3)), 4),
                                   "bbox": [round(float(v), 2) for v in box]})
    category = {"supercategory": "person", "id": 1, "name": "person", "keypoints": list(COCO_KEYPOINT_NAMES),
                "skeleton": [list(s) for s in COCO_SKELETON]}
    dataset = {"info": {"description": "psa_jax synthetic stick figures (COCO person keypoint format)"},
               "licenses": [], "images": images, "annotations": annotations, "categories": [category]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"person_keypoints_{split}2017.json").write_text(json.dumps(dataset))
    if with_detections:
        (root / "annotations" / f"person_detections_{split}2017.json").write_text(json.dumps(detections))
    return {"images": len(images), "persons": len(annotations), "detections": len(detections)}


def write_synthetic_coco(root: str | epath.PathLike, *, num_train: int, num_val: int,
                         image_size: Sequence[int] = (256, 256), seed: int = 0) -> dict[str, Any]:
    """Writes a synthetic COCO-layout person keypoint dataset (see the module docstring).

    Args:
      root: output folder (created; existing files of the same names are overwritten).
      num_train, num_val: images per split (a split with 0 images is not written).
      image_size: `(H, W)` of every image.
      seed: everything is a deterministic function of the seed.

    Returns:
      `{'root': str, 'train': {images, persons, detections}, 'validation': {...}}`.
    """
    root = epath.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng_train, rng_val = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    ann_id = [1]
    summary: dict[str, Any] = {"root": str(root)}
    if num_train > 0:
        summary["train"] = _write_split(root, "train", num_train, image_size, rng_train, ann_id, 1, False)
    if num_val > 0:
        summary["validation"] = _write_split(root, "val", num_val, image_size, rng_val, ann_id, 1_000_000, True)
    return summary
