"""Cityscapes evaluation loop: inference mode -> argmax -> confusion matrix -> mIoU.

Each JAX process evaluates its own shard (`seg_pipeline.seg_eval_dataset`: every process gets the
same number of padded batches, padding marked by 'valid'); the per-process confusion matrices are
summed across processes (`seg_metrics.cross_process_sum`) before the metrics are computed, so the
result is the same on every process and for any process count.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from psa_jax.data.cityscapes import CLASS_NAMES, IGNORE_INDEX
from psa_jax.evaluation import seg_inference as inf
from psa_jax.evaluation.seg_metrics import (
    confusion_matrix_jax,
    cross_process_sum,
    format_iou_table,
    segmentation_metrics,
)

log = logging.getLogger(__name__)

__all__ = ["MODES", "accumulate_confusion", "evaluate_segmentation"]

MODES = ("whole", "slide", "multiscale", "mscale")


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _batch_confusion(scores, labels, valid, num_classes):
    pred = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return confusion_matrix_jax(pred, labels.astype(jnp.int32), num_classes, ignore_index=IGNORE_INDEX, valid=valid)


def accumulate_confusion(
    batches: Iterable[Mapping[str, np.ndarray]],
    scores_fn: Callable[[Mapping[str, np.ndarray]], jax.Array],
    *,
    num_classes: int = len(CLASS_NAMES),
    total: int | None = None,
    progress: bool = True,
    on_batch: Callable[[Mapping[str, np.ndarray], np.ndarray], None] | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Sums the confusion matrix of `argmax(scores_fn(batch))` against `batch['label']` over batches.

    Args:
      batches: dicts with 'label' int (B, H, W) and optionally 'valid' / 'decode_ok' bool (B,).
      scores_fn: batch -> scores (B, H, W, C) at the label size (logits or probabilities).
      on_batch: optional callback `(batch, predictions int (B, H, W))`, e.g. for pictures.

    Returns:
      (int64 (C, C) confusion matrix of this process, {'images': n, 'corrupt': n}).
    """
    from tqdm import tqdm

    conf = np.zeros((num_classes, num_classes), np.int64)
    counts = {"images": 0, "corrupt": 0}
    for batch in tqdm(batches, total=total, desc="evaluate", disable=not progress, unit="batch"):
        labels = np.asarray(batch["label"])
        valid = np.asarray(batch.get("valid", np.ones(labels.shape[0], bool)), bool)
        ok = np.asarray(batch.get("decode_ok", np.ones(labels.shape[0], bool)), bool)
        scores = scores_fn(batch)
        if tuple(scores.shape[:3]) != labels.shape:
            raise ValueError(f"scores {scores.shape} do not match labels {labels.shape}")
        conf += np.asarray(_batch_confusion(scores, labels, valid & ok, num_classes), np.int64)
        counts["images"] += int(valid.sum())
        counts["corrupt"] += int((valid & ~ok).sum())
        if on_batch is not None:
            on_batch(batch, np.asarray(jnp.argmax(scores, axis=-1)))
    return conf, counts


def _scores_fn(predict_fn, mode: str, *, scales, flip, window, stride):
    if mode == "whole":
        return lambda images, size: inf.whole_inference(predict_fn, images, out_size=size)
    if mode == "slide":
        return lambda images, size: inf.slide_inference(predict_fn, images, window=window or (512, 1024),
                                                        stride=stride, out_size=size)
    if mode == "multiscale":
        return lambda images, size: inf.multiscale_inference(
            predict_fn, images, scales=scales or (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=flip,
            window=window or (1024, 2048), stride=stride, out_size=size)
    if mode == "mscale":
        return lambda images, size: inf.mscale_inference(predict_fn, images, scales=scales or (0.5, 1.0, 2.0),
                                                         out_size=size)
    raise ValueError(f"mode={mode!r}; choose one of {MODES}")


def evaluate_segmentation(
    predict_fn: Callable[..., jax.Array],
    source: Sequence[dict[str, Any]] | None = None,
    *,
    mode: str = "whole",
    batch_size: int = 1,
    batches: Iterable[Mapping[str, np.ndarray]] | None = None,
    num_batches: int | None = None,
    scales: Sequence[float] | None = None,
    flip: bool = True,
    window: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    process_index: int | None = None,
    process_count: int | None = None,
    overlay_dir: str | os.PathLike | None = None,
    num_overlays: int = 4,
    jit: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluates a segmentation model on Cityscapes-style records.

    Args:
      predict_fn: images float32 (B, h, w, 3) normalised -> logits (B, h', w', C) at any resolution.
        For mode='mscale' it is called as `predict_fn(images, scales)` and must return the merged
        logits, e.g. `psa_jax.models.mscale.MscaleOCR.nscale` (NVIDIA's `nscale_forward`).
        `predict_fn` receives this process's local batch as NumPy/JAX arrays and must return the
        logits of that batch (for a model sharded over several processes, wrap it accordingly).
      source: decoded records (`seg_pipeline.cityscapes_records('validation', data_dir=...)`);
        batched per process by `seg_pipeline.seg_eval_dataset`. Or pass `batches` instead.
      mode: 'whole' | 'slide' | 'multiscale' | 'mscale' (see `seg_inference`).
      batch_size: images per batch on this process.
      batches: an iterable of eval batches (fields as `seg_pipeline.seg_eval_dataset`), instead of
        `source`; `num_batches` sizes the progress bar.
      scales: 'multiscale' default (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) (HRNet-Seg); 'mscale' default
        (0.5, 1.0, 2.0) (NVIDIA).
      flip: 'multiscale' only: also average horizontally flipped inputs.
      window, stride: 'slide' default window (512, 1024), stride 2/3 of it; 'multiscale' default
        window (1024, 2048) with stride = window, used where a scaled image is larger (HRNet-Seg).
      overlay_dir: if set, process 0 writes `num_overlays` prediction/label overlay PNGs there (a local
        or `gs://` folder, written through `etils.epath`).
      jit: compile the whole inference mode (windows, scales, resizing) into one XLA program per
        input shape. Needs a `predict_fn` that is a pure JAX function of its inputs (e.g. a
        closure over arrays, or already `jax.jit`-ed); by default the mode runs op by op around it.

    Returns:
      {'mIoU', 'pixel_accuracy', 'mean_accuracy' (fractions), 'IoU' {class: fraction or NaN},
       'confusion_matrix' int64 (C, C), 'num_images', 'num_corrupt', 'num_pixels', 'table' (text)},
      identical on every process.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; choose one of {MODES}")
    num_classes = len(class_names)
    if batches is None:
        if source is None:
            raise ValueError("give `source` (records) or `batches`")
        from psa_jax.data.pipeline import process_layout
        from psa_jax.data.seg_pipeline import seg_eval_dataset

        index, count = process_layout(process_index, process_count)
        batches = seg_eval_dataset(source, batch_size=batch_size, process_index=index, process_count=count)
        num_batches = math.ceil(math.ceil(len(source) / count) / batch_size)
    scores_of = _scores_fn(predict_fn, mode, scales=scales, flip=flip, window=window, stride=stride)

    if jit:
        scores_of = jax.jit(scores_of, static_argnums=1)

    def scores_fn(batch):
        labels = batch["label"]
        return scores_of(jnp.asarray(batch["image"], jnp.float32), tuple(labels.shape[1:3]))

    on_batch = None
    if overlay_dir is not None and num_overlays > 0 and jax.process_index() == 0:
        from psa_jax.data.seg_transforms import denormalize_image
        from psa_jax.evaluation.seg_visualize import save_overlay_png

        written = []
        overlay_root = epath.Path(overlay_dir)

        def on_batch(batch, preds):
            valid = np.asarray(batch.get("valid", np.ones(len(preds), bool)), bool)
            valid &= np.asarray(batch.get("decode_ok", np.ones(len(preds), bool)), bool)
            for i in np.flatnonzero(valid):
                if len(written) >= num_overlays:
                    return
                image_id = str(batch["image_id"][i]) if "image_id" in batch else f"image_{len(written):04d}"
                written.append(save_overlay_png(overlay_root / f"{image_id}_overlay.png",
                                                denormalize_image(batch["image"][i]), preds[i], batch["label"][i]))

    conf, counts = accumulate_confusion(batches, scores_fn, num_classes=num_classes, total=num_batches,
                                        progress=progress, on_batch=on_batch)
    conf = cross_process_sum(conf)
    totals = cross_process_sum(np.array([counts["images"], counts["corrupt"]], np.int64))
    metrics = segmentation_metrics(conf)
    if totals[1]:
        log.warning("%d evaluation image(s) could not be decoded and were left out (ids in the log above)",
                    int(totals[1]))
    result = metrics.as_dict(class_names)
    result.update(confusion_matrix=conf, num_images=int(totals[0]), num_corrupt=int(totals[1]),
                  table=format_iou_table(metrics, class_names, conf))
    return result
