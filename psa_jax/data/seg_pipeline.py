"""Cityscapes training/evaluation input pipelines on top of the shared grain machinery.

Sources -> transforms -> `psa_jax.data.pipeline.{train_dataset, eval_dataset}`.

Batch contract (what the trainer and the evaluator receive):

  training   'image' float32 (B, H, W, 3) RGB, ImageNet mean/std normalised
             'label' int32 (B, H, W) trainIds 0..18, 255 = ignore (padding and corrupt records too)
  evaluation 'image' float32 (B, H, W, 3) as above, whole image (no resizing)
             'label' int32 (B, H, W)
             'image_id' str (B,)
             'decode_ok' bool (B,)   False for a record whose files failed to decode
             'valid' bool (B,)       added by `eval_dataset`; False on padding copies

Two recipes (`AUGMENT_PRESETS`):

  'hrnet_seg'  HRNet-Semantic-Segmentation `lib/datasets/base_dataset.py::gen_sample` with
               `experiments/cityscapes/seg_hrnet_ocr_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml`:
               scale {0.5, 0.6, ..., 2.1} of the 2048 long side, bilinear image / nearest label,
               crop 512x1024 padded bottom/right with 0 / 255, flip 0.5, no colour jitter.
  'nvidia'     NVIDIA/semantic-segmentation `transforms/joint_transforms.py::RandomSizeAndCrop`
               (`scripts/train_cityscapes.yml`, the recipe of DeLightCMU/PSA): scale uniform in
               [0.5, 2.0], bicubic image, crop 1024x2048 padded around, flip 0.5,
               ColorJitter(0.25, 0.25, 0.25, 0.25). NVIDIA's class-uniform crop sampling
               (`class_uniform_pct 0.5`) is not implemented: crops are uniform.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import cv2
import grain
import numpy as np

from psa_jax.data import pipeline
from psa_jax.data import seg_transforms as T
from psa_jax.data.cityscapes import (CachedCityscapesRecords, CityscapesRecords, IGNORE_INDEX,
                                     cityscapes_data_source)

__all__ = [
    "SegAugmentConfig", "AUGMENT_PRESETS", "SegTrainTransform", "SegEvalTransform",
    "cityscapes_records", "seg_train_dataset", "seg_eval_dataset",
]


@dataclasses.dataclass(frozen=True)
class SegAugmentConfig:
    """Training augmentation. See `seg_transforms.random_scale_crop` for the fields' meaning."""
    crop_hw: tuple[int, int] = (512, 1024)
    scale_range: tuple[float, float] = (0.5, 2.1)
    scale_step: float | None = 0.1
    rounding: str = "round"
    pad_mode: str = "bottom_right"
    image_interpolation: str = "linear"   # 'linear' | 'cubic'
    flip_prob: float = 0.5
    color_jitter: float = 0.0             # 0 disables; NVIDIA: 0.25 for all four factors

    def __post_init__(self):
        if self.image_interpolation not in ("linear", "cubic"):
            raise ValueError(f"image_interpolation={self.image_interpolation!r}; use 'linear' or 'cubic'")
        if min(self.crop_hw) < 1:
            raise ValueError(f"crop_hw={self.crop_hw} must be positive")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range={self.scale_range} must satisfy 0 < lo <= hi")


AUGMENT_PRESETS: dict[str, SegAugmentConfig] = {
    "hrnet_seg": SegAugmentConfig(),
    "nvidia": SegAugmentConfig(crop_hw=(1024, 2048), scale_range=(0.5, 2.0), scale_step=None,
                               rounding="floor", pad_mode="centre", image_interpolation="cubic",
                               color_jitter=0.25),
}


class SegTrainTransform:
    """`(record, rng) -> {'image': float32 (h, w, 3), 'label': int32 (h, w)}` for `train_dataset`.

    Order: random scale + crop (one warp), flip, optional colour jitter, normalisation.
    """

    def __init__(self, config: SegAugmentConfig = SegAugmentConfig()):
        self.config = config
        self._interp = cv2.INTER_CUBIC if config.image_interpolation == "cubic" else cv2.INTER_LINEAR

    def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.config
        image, label = T.random_scale_crop(
            record["image"], record["label"], rng, crop_hw=tuple(c.crop_hw), scale_range=tuple(c.scale_range),
            scale_step=c.scale_step, rounding=c.rounding, pad_mode=c.pad_mode,
            image_interpolation=self._interp, image_pad=0, label_pad=IGNORE_INDEX)
        if c.flip_prob > 0 and rng.random() < c.flip_prob:
            image, label = T.hflip(image, label)
        if c.color_jitter > 0:
            v = c.color_jitter
            image = T.color_jitter(image, rng, brightness=v, contrast=v, saturation=v, hue=v)
        return {"image": T.normalize_image(image), "label": label.astype(np.int32)}


class SegEvalTransform:
    """`record -> {'image', 'label', 'image_id', 'decode_ok'}` (whole image, normalised)."""

    def __call__(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"image": T.normalize_image(record["image"]),
                "label": record["label"].astype(np.int32),
                "image_id": np.asarray(record["image_id"]),
                "decode_ok": np.asarray(bool(record.get("decode_ok", True)))}


def cityscapes_records(split: str, *, data_dir: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None) -> Sequence[dict[str, Any]]:
    """Decoded Cityscapes records for `split`.

    With `cache_dir` the training cache (`cityscapes.build_training_cache`) is read, else the
    stock tfds dataset in `data_dir` (lossless PNGs; use this for evaluation).
    """
    if cache_dir is not None:
        return CachedCityscapesRecords(cache_dir, split)
    if data_dir is None:
        raise ValueError("give data_dir (the prepared tfds dataset) or cache_dir (the training cache)")
    return CityscapesRecords(cityscapes_data_source(split, data_dir))


def seg_train_dataset(
    records: Sequence[dict[str, Any]],
    augment: SegAugmentConfig | str = "hrnet_seg",
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
    worker_count: int = 0,
    start_step: int = 0,
) -> grain.IterDataset:
    """Infinite shuffled training batches (see the module docstring for the fields), from global
    batch `start_step` on.

    Deterministic per (seed, position); `iter(ds)` supports `get_state()` / `set_state()`.
    """
    if isinstance(augment, str):
        if augment not in AUGMENT_PRESETS:
            raise ValueError(f"unknown augmentation preset {augment!r}; choose from {sorted(AUGMENT_PRESETS)}")
        augment = AUGMENT_PRESETS[augment]
    return pipeline.train_dataset(records, SegTrainTransform(augment), global_batch_size=global_batch_size,
                                  seed=seed, process_index=process_index, process_count=process_count,
                                  read_options=read_options, worker_count=worker_count, start_step=start_step)


def seg_eval_dataset(
    records: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
    """One ordered, padded pass over this process's shard (every process gets as many batches)."""
    return pipeline.eval_dataset(records, SegEvalTransform(), batch_size=batch_size,
                                 process_index=process_index, process_count=process_count,
                                 read_options=read_options)
