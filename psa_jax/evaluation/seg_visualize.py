"""Cityscapes-palette pictures of predictions and labels, for a person to look at.

`save_overlay_png` writes one PNG per image: a 2x2 panel (image | prediction over image /
label over image | errors), and a legend of the classes that appear, in the official Cityscapes
colours (`psa_jax.data.cityscapes.PALETTE`); ignored pixels (255) are black in colour maps and
left uncoloured in overlays.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from etils import epath

from psa_jax.data.cityscapes import CLASS_NAMES, IGNORE_INDEX, PALETTE

__all__ = ["colorize", "error_map", "overlay", "overlay_panel", "save_overlay_png"]


def colorize(train_ids: np.ndarray, palette: np.ndarray = PALETTE) -> np.ndarray:
    """int (H, W) trainIds -> uint8 (H, W, 3) RGB; ignore and out-of-range ids are black."""
    train_ids = np.asarray(train_ids)
    table = np.zeros((256, 3), np.uint8)
    table[:len(palette)] = palette
    return table[np.clip(train_ids, 0, 255).astype(np.uint8)]


def overlay(image: np.ndarray, train_ids: np.ndarray, *, alpha: float = 0.55,
            palette: np.ndarray = PALETTE) -> np.ndarray:
    """Blend the colour map over a uint8 RGB image (H, W, 3); ignored pixels show the image."""
    colors = colorize(train_ids, palette).astype(np.float32)
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colors
    keep = (np.asarray(train_ids) < len(palette))[..., None]
    return np.where(keep, mixed, image).round().astype(np.uint8)


def error_map(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3): white = wrong, dark grey = right, black = ignored label."""
    out = np.zeros((*label.shape, 3), np.uint8)
    valid = (label != IGNORE_INDEX) & (label < len(PALETTE))
    out[valid & (pred == label)] = 60
    out[valid & (pred != label)] = 255
    return out


def _legend(ids: np.ndarray, width: int, names=CLASS_NAMES, palette=PALETTE) -> np.ndarray:
    present = [int(i) for i in np.unique(ids) if i < len(palette)]
    item_w, row_h = 150, 22
    per_row = max(1, width // item_w)
    rows = max(1, -(-len(present) // per_row))
    legend = np.full((rows * row_h + 4, width, 3), 255, np.uint8)
    for k, c in enumerate(present):
        y, x = 2 + (k // per_row) * row_h, (k % per_row) * item_w + 4
        legend[y + 3:y + row_h - 3, x:x + 16] = palette[c]
        cv2.putText(legend, names[c], (x + 22, y + row_h - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return legend


def overlay_panel(image: np.ndarray, pred: np.ndarray, label: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB panel: [image | prediction overlay] over [label overlay | errors] + legend.

    Args:
      image: uint8 (H, W, 3) RGB (use `seg_transforms.denormalize_image` on network inputs).
      pred: int (H, W) predicted trainIds.
      label: optional int (H, W) ground-truth trainIds.
    """
    top = np.concatenate([image, overlay(image, pred)], axis=1)
    if label is None:
        panel, ids = top, pred
    else:
        bottom = np.concatenate([overlay(image, label), error_map(pred, label)], axis=1)
        panel, ids = np.concatenate([top, bottom], axis=0), np.concatenate([pred.ravel(), label.ravel()])
    return np.concatenate([panel, _legend(ids, panel.shape[1])], axis=0)


def save_overlay_png(path: str | os.PathLike, image: np.ndarray, pred: np.ndarray,
                     label: np.ndarray | None = None) -> epath.Path:
    """Writes `overlay_panel(image, pred, label)` as a PNG (local or `gs://`, folders created); returns the path."""
    path = epath.Path(path)
    panel = overlay_panel(np.asarray(image, np.uint8), np.asarray(pred), None if label is None else np.asarray(label))
    ok, png = cv2.imencode(".png", cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"OpenCV could not encode the {panel.shape} overlay panel for {path} as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png.tobytes())
    return path
