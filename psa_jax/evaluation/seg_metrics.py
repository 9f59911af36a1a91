"""Semantic segmentation metrics from a confusion matrix: IoU per class, mIoU, pixel accuracy.

The confusion matrix `conf[g, p]` counts pixels of ground-truth class g predicted as p; pixels
whose label is the ignore index (or outside [0, C)) are not counted. It is summed over batches and
processes (integer addition: any order gives the same matrix) and the metrics are computed once at
the end, as HRNet-Semantic-Segmentation `lib/utils/utils.py::get_confusion_matrix` +
`tools/test.py`, NVIDIA/semantic-segmentation `utils/misc.py::fast_hist` and cityscapesScripts
`evalPixelLevelSemanticLabeling.py` do (one matrix for the whole dataset, not a mean of per-image
IoUs).

  IoU_c = conf[c, c] / (sum_p conf[c, p] + sum_g conf[g, c] - conf[c, c])
  mIoU = mean of IoU_c over classes with a non-empty union (cityscapesScripts and mmseg skip
         classes that are neither present nor predicted as NaN; HRNet-Seg counts them as 0; on
         Cityscapes val every class is present, so both agree)
  pixel accuracy = trace(conf) / sum(conf)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["confusion_matrix", "confusion_matrix_jax", "SegMetrics", "segmentation_metrics",
           "format_iou_table", "cross_process_sum"]


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int, *, ignore_index: int = 255,
                     valid: np.ndarray | None = None) -> np.ndarray:
    """NumPy confusion matrix int64 (C, C), rows = ground truth, columns = prediction.

    Args:
      pred: int (B, H, W) (or any shape) predicted classes in [0, C).
      label: int, same shape, ground truth; ignore_index / out-of-range values are skipped.
      valid: optional bool (B,) per-image mask (e.g. the eval pipeline's padding flag) or a
        pixel mask of `label`'s shape.
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} != label shape {label.shape}")
    keep = (label != ignore_index) & (label >= 0) & (label < num_classes)
    if valid is not None:
        valid = np.asarray(valid, bool)
        keep &= valid.reshape(valid.shape + (1,) * (label.ndim - valid.ndim))
    if np.any((pred[keep] < 0) | (pred[keep] >= num_classes)):
        raise ValueError(f"predictions must lie in [0, {num_classes})")
    index = label[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_matrix_jax(pred: jax.Array, label: jax.Array, num_classes: int, *, ignore_index: int = 255,
                         valid: jax.Array | None = None) -> jax.Array:
    """The same in jax.numpy (jit-able, int32 counts; fine below 2^31 pixels per call)."""
    keep = (label != ignore_index) & (label >= 0) & (label < num_classes)
    if valid is not None:
        keep &= jnp.reshape(valid, valid.shape + (1,) * (label.ndim - valid.ndim)).astype(bool)
    index = jnp.where(keep, label * num_classes + pred, 0).astype(jnp.int32).reshape(-1)
    counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index].add(keep.reshape(-1).astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


@dataclasses.dataclass(frozen=True)
class SegMetrics:
    iou: np.ndarray            # float64 (C,), NaN for classes with an empty union
    miou: float                # mean over non-NaN IoUs (NaN if there are none)
    pixel_accuracy: float      # trace / total (NaN if no pixel)
    mean_accuracy: float       # mean over present classes of conf[c, c] / sum_p conf[c, p]
    num_pixels: int

    def as_dict(self, class_names: Sequence[str]) -> dict:
        return {"mIoU": self.miou, "pixel_accuracy": self.pixel_accuracy,
                "mean_accuracy": self.mean_accuracy, "num_pixels": self.num_pixels,
                "IoU": {name: float(v) for name, v in zip(class_names, self.iou)}}


def segmentation_metrics(conf: np.ndarray) -> SegMetrics:
    """IoU per class, mIoU, pixel and mean class accuracy from a (C, C) confusion matrix (fractions)."""
    conf = np.asarray(conf, np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square, got {conf.shape}")
    tp = np.diag(conf)
    gt = conf.sum(axis=1)
    pr = conf.sum(axis=0)
    union = gt + pr - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    total = conf.sum()
    present = ~np.isnan(iou)
    return SegMetrics(
        iou=iou,
        miou=float(iou[present].mean()) if present.any() else float("nan"),
        pixel_accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
        mean_accuracy=float(np.nanmean(acc)) if (gt > 0).any() else float("nan"),
        num_pixels=int(total),
    )


def format_iou_table(metrics: SegMetrics, class_names: Sequence[str], conf: np.ndarray | None = None) -> str:
    """A plain-text table: class, IoU (%), and (if `conf` is given) its ground-truth pixel share."""
    lines = [f"{'class':<16}{'IoU %':>8}" + (f"{'GT px %':>10}" if conf is not None else "")]
    gt = None if conf is None else np.asarray(conf, np.float64).sum(axis=1)
    for c, name in enumerate(class_names):
        iou = "     n/a" if np.isnan(metrics.iou[c]) else f"{100 * metrics.iou[c]:8.2f}"
        share = "" if gt is None else f"{100 * gt[c] / max(gt.sum(), 1):10.3f}"
        lines.append(f"{name:<16}{iou}{share}")
    lines.append(f"{'mIoU':<16}{100 * metrics.miou:8.2f}")
    lines.append(f"{'pixel acc.':<16}{100 * metrics.pixel_accuracy:8.2f}")
    lines.append(f"{'mean class acc.':<16}{100 * metrics.mean_accuracy:8.2f}")
    return "\n".join(lines)


def cross_process_sum(x: np.ndarray) -> np.ndarray:
    """Sums a non-negative integer array (< 2^62) over all JAX processes; identity with one process."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    # Without jax_enable_x64, int64 would travel as int32: send 31-bit halves, add up in int64.
    x = x.astype(np.int64)
    halves = np.stack([x >> 31, x & (2**31 - 1)]).astype(np.int32)
    gathered = np.asarray(multihost_utils.process_allgather(halves, tiled=False), np.int64)
    return (gathered[:, 0] << 31).sum(axis=0) + gathered[:, 1].sum(axis=0)
