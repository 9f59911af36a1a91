"""Fake Cityscapes zips in exactly the layout tfds's stock builder reads, with learnable scenes.

The real `leftImg8bit_trainvaltest.zip` / `gtFine_trainvaltest.zip` hold

    leftImg8bit/{train,val,test}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_{labelIds,color,instanceIds}.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_polygons.json

plus a README and license.txt at the root. The stock builder
(tensorflow_datasets `datasets/cityscapes/cityscapes_dataset_builder.py`) lists the city folders of
`leftImg8bit/<split>`, keeps file names matching `[a-z\\-]+_\\d+_\\d+_leftImg8bit.png`, and reads
`<id>_gtFine_labelIds.png` for every image, test split included. The files written here follow that
layout at a small size (default 64x128; `tfds.data_source` does not enforce 1024x2048).

Scenes (`fake_scene`) are street-like and easy to learn: sky above a building skyline, a road
trapezoid with sidewalks, vegetation blobs, cars on the road, people and poles, a strip of 'ego
vehicle' (ignored) at the bottom and a few 'static' (ignored) blobs. Each class is painted in its
Cityscapes colour plus per-image brightness and per-pixel noise, so colour and shape both identify
it and a tiny network learns it in a few hundred CPU steps.
"""

from __future__ import annotations

import json
import os
import pathlib
import zipfile
from collections.abc import Iterable, Mapping

import cv2
import numpy as np

from psa_jax.data.cityscapes import CITYSCAPES_LABELS, LABEL_ID_TO_TRAIN_ID, REQUIRED_ZIPS

__all__ = ["fake_scene", "write_fake_cityscapes", "synthetic_records", "SPLIT_CITIES", "SCENE_LABEL_IDS"]

# Directory split names of the real zips (tfds calls 'val' 'validation').
SPLIT_CITIES: dict[str, tuple[str, ...]] = {
    "train": ("aachen", "bochum"),
    "val": ("frankfurt", "lindau"),
    "test": ("berlin",),
}

_ID = {l.name: l.id for l in CITYSCAPES_LABELS}
_COLOR = {l.id: l.color for l in CITYSCAPES_LABELS}
SCENE_LABEL_IDS = tuple(sorted({_ID[n] for n in (
    "unlabeled", "ego vehicle", "static", "road", "sidewalk", "building", "pole", "vegetation",
    "sky", "person", "car")}))
"""Raw labelIds that `fake_scene` draws (trainIds 0, 1, 2, 5, 8, 10, 11, 13 and ignored ones)."""


def fake_scene(rng: np.random.Generator, height: int = 64, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One street-like scene.

    Returns:
      image: uint8 (height, width, 3) RGB.
      label_ids: uint8 (height, width) raw Cityscapes labelIds.
    """
    h, w = height, width
    lab = np.full((h, w), _ID["sky"], np.uint8)
    horizon = int(h * rng.uniform(0.45, 0.55))
    # Building skyline: blocks of random width and height standing on the horizon.
    x = 0
    while x < w:
        bw = int(rng.integers(max(2, w // 10), max(3, w // 4)))
        top = int(h * rng.uniform(0.08, 0.35))
        lab[top:horizon, x:x + bw] = _ID["building"]
        x += bw
    # Vegetation: a few blobs around the horizon.
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = int(rng.integers(0, w)), int(rng.integers(int(0.25 * h), horizon))
        r = int(max(2, h * rng.uniform(0.06, 0.14)))
        cv2.circle(lab, (cx, cy), r, _ID["vegetation"], -1)
    # Ground: sidewalk everywhere below the horizon, road as a trapezoid.
    lab[horizon:] = _ID["sidewalk"]
    half_top = w * rng.uniform(0.08, 0.16)
    centre = w * rng.uniform(0.4, 0.6)
    road = np.array([[centre - half_top, horizon], [centre + half_top, horizon],
                     [w * 1.1, h], [-0.1 * w, h]], np.int32)
    cv2.fillPoly(lab, [road], _ID["road"])
    # Poles on the sidewalk, people near them, cars on the road.
    for _ in range(int(rng.integers(1, 3))):
        px = int(rng.choice([rng.uniform(0, 0.2 * w), rng.uniform(0.8 * w, w)]))
        pw = max(1, w // 64)
        lab[int(0.2 * h):int(horizon + 0.15 * h), px:px + pw] = _ID["pole"]
    for _ in range(int(rng.integers(1, 3))):
        px = int(rng.choice([rng.uniform(0.02 * w, 0.25 * w), rng.uniform(0.75 * w, 0.98 * w)]))
        py = int(horizon + h * rng.uniform(0.05, 0.2))
        cv2.ellipse(lab, (px, py), (max(1, w // 64), max(3, h // 10)), 0, 0, 360, _ID["person"], -1)
    for _ in range(int(rng.integers(1, 4))):
        cy = int(horizon + h * rng.uniform(0.05, 0.3))
        cw, ch = int(w * rng.uniform(0.08, 0.16)), int(h * rng.uniform(0.07, 0.13))
        cx = int(centre + rng.uniform(-0.25, 0.25) * w)
        lab[max(0, cy - ch // 2):cy + ch // 2, max(0, cx - cw // 2):cx + cw // 2] = _ID["car"]
    # Ignored regions: 'static' blobs and the 'ego vehicle' bonnet; an 'unlabeled' border column.
    for _ in range(int(rng.integers(0, 3))):
        cv2.circle(lab, (int(rng.integers(0, w)), int(rng.integers(0, h))), max(1, h // 32), _ID["static"], -1)
    lab[h - max(1, h // 16):] = _ID["ego vehicle"]
    lab[:, :max(1, w // 128)] = _ID["unlabeled"]

    # Paint: class colour * per-image brightness + per-pixel noise; ignored ids get random colours.
    colors = np.zeros((256, 3), np.float32)
    for label_id, color in _COLOR.items():
        colors[label_id] = color
    for label_id in (_ID["static"], _ID["unlabeled"], _ID["ego vehicle"]):
        colors[label_id] = rng.integers(0, 256, 3)
    image = colors[lab] * rng.uniform(0.8, 1.2) + rng.normal(0.0, 8.0, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), lab


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _color_png(label_ids: np.ndarray) -> bytes:
    colors = np.zeros((256, 3), np.uint8)
    for label_id, color in _COLOR.items():
        colors[label_id] = color
    return _png(cv2.cvtColor(colors[label_ids], cv2.COLOR_RGB2BGR))


def _instance_png(label_ids: np.ndarray) -> bytes:
    # Real *_instanceIds.png are uint16: labelId for stuff, labelId * 1000 + k for instances.
    inst = label_ids.astype(np.uint16)
    for name in ("person", "car"):
        mask = (label_ids == _ID[name]).astype(np.uint8)
        n, comp = cv2.connectedComponents(mask)
        inst = np.where(mask > 0, _ID[name] * 1000 + comp.astype(np.uint16) - 1, inst)
    return _png(inst.astype(np.uint16))


def write_fake_cityscapes(
    manual_dir: str | os.PathLike,
    *,
    num_images: Mapping[str, int] | None = None,
    height: int = 64,
    width: int = 128,
    seed: int = 0,
    corrupt_images: Iterable[str] = (),
    corrupt_labels: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Writes `leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip` into `manual_dir`.

    Args:
      manual_dir: created if needed.
      num_images: per directory split ('train', 'val', 'test'), default {train: 4, val: 2, test: 1};
        images are spread over the split's cities (`SPLIT_CITIES`).
      height, width: image size.
      seed: scenes are a pure function of (seed, split, index).
      corrupt_images / corrupt_labels: image ids whose image / labelIds PNG is written truncated
        (to exercise corrupt-file handling).

    Returns:
      {directory split: [image ids in the order written]}.
    """
    counts = {"train": 4, "val": 2, "test": 1} if num_images is None else dict(num_images)
    unknown = set(counts) - set(SPLIT_CITIES)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; use {sorted(SPLIT_CITIES)}")
    corrupt_images, corrupt_labels = set(corrupt_images), set(corrupt_labels)
    manual_dir = pathlib.Path(manual_dir)
    manual_dir.mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {}
    img_zip_path, gt_zip_path = (manual_dir / name for name in REQUIRED_ZIPS)
    with zipfile.ZipFile(img_zip_path, "w", zipfile.ZIP_STORED) as img_zip, \
            zipfile.ZipFile(gt_zip_path, "w", zipfile.ZIP_STORED) as gt_zip:
        for z in (img_zip, gt_zip):
            z.writestr("README", "Fake Cityscapes data written by psa_jax.data.fake_cityscapes.\n")
            z.writestr("license.txt", "Synthetic test data; no Cityscapes content.\n")
        for split_index, (split, n) in enumerate(sorted(counts.items())):
            cities = SPLIT_CITIES[split]
            ids[split] = []
            for i in range(n):
                city = cities[i % len(cities)]
                image_id = f"{city}_{i // len(cities):06d}_{19 + i:06d}"
                rng = np.random.default_rng([seed, split_index, i])
                image, label_ids = fake_scene(rng, height, width)
                image_png = _png(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                label_png = _png(label_ids)
                if image_id in corrupt_images:
                    image_png = image_png[: len(image_png) // 3]
                if image_id in corrupt_labels:
                    label_png = label_png[: len(label_png) // 3]
                img_zip.writestr(f"leftImg8bit/{split}/{city}/{image_id}_leftImg8bit.png", image_png)
                stem = f"gtFine/{split}/{city}/{image_id}_gtFine"
                gt_zip.writestr(f"{stem}_labelIds.png", label_png)
                gt_zip.writestr(f"{stem}_color.png", _color_png(label_ids))
                gt_zip.writestr(f"{stem}_instanceIds.png", _instance_png(label_ids))
                gt_zip.writestr(f"{stem}_polygons.json", json.dumps(
                    {"imgHeight": height, "imgWidth": width, "objects": []}))
                ids[split].append(image_id)
    missing = (corrupt_images | corrupt_labels) - {i for v in ids.values() for i in v}
    if missing:
        raise ValueError(f"corrupt ids {sorted(missing)} are not among the written images")
    return ids


def synthetic_records(num_images: int, *, height: int = 64, width: int = 128, seed: int = 0) -> list[dict]:
    """In-memory records (the same scenes, labels already mapped to trainIds) without any zip or tfds.

    Each record is {'image_id', 'image' uint8 (H, W, 3), 'label' uint8 (H, W) trainIds,
    'decode_ok': True}, the format of `psa_jax.data.cityscapes.CityscapesRecords`.
    """
    records = []
    for i in range(num_images):
        image, label_ids = fake_scene(np.random.default_rng([seed, 99, i]), height, width)
        records.append({"image_id": f"synthetic_{i:06d}_000019", "image": image,
                        "label": LABEL_ID_TO_TRAIN_ID[label_ids], "decode_ok": True})
    return records
