"""Cityscapes semantic segmentation: data, model, loss and evaluation for train.py / eval.py.

Two recipes (see the configs): HRNet-Seg (HRNetV2 / HRNetV2-OCR, weighted cross entropy, optional
OHEM, aux 0.4) and NVIDIA / official PSA (MscaleOCR two-scale training, 0.5 BCE + 0.5 RMI, aux
0.4, per-scale 0.05). Data come from tfds's stock `cityscapes` builder
(`psa_jax.data.cityscapes`), optionally through the faster training cache.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from psa_jax.data import pipeline
from psa_jax.data.cityscapes import (CityscapesRecords, build_training_cache, cityscapes_data_source,
                                     prepare_cityscapes)
from psa_jax.data.seg_pipeline import AUGMENT_PRESETS, cityscapes_records, seg_train_dataset
from psa_jax.evaluation.seg_evaluator import evaluate_segmentation
from psa_jax.models import mscale_ocr, seg_hrnet
from psa_jax.tasks.seg_losses import CITYSCAPES_CLASS_WEIGHTS, hrnet_seg_loss, nvidia_mscale_loss
from psa_jax.tasks.common import compute_dtype, model_program, resolve_data_dir, run_on_process_zero

__all__ = ["SegTask"]

logger = logging.getLogger(__name__)
_ALIGN = {"auto": None, "true": True, "false": False}


class SegTask:
    """Cityscapes 19-class semantic segmentation."""

    name = "seg"
    train_fields = ("image", "label")
    metric = "mIoU"
    metric_mode = "max"

    def __init__(self, config: Any, workdir: str | os.PathLike):
        self.config = config
        self.workdir = os.fspath(workdir)
        self.data_dir = resolve_data_dir(config, workdir)
        self._val_records = None

    # ------------------------------------------------------------------ data
    @property
    def manual_dir(self) -> str:
        data = self.config.data
        if data.synthetic.enabled:
            return os.path.join(self.data_dir, "fake_cityscapes_zips")
        if not data.manual_dir:
            raise ValueError("config.data.manual_dir is empty: point it at the folder holding "
                             "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, or set "
                             "config.data.synthetic.enabled=True for the synthetic demo data")
        return data.manual_dir

    @property
    def cache_dir(self) -> str | None:
        c = self.config.data.cache_dir
        if not c:
            return None
        return os.path.join(self.data_dir, "cityscapes_cache") if c == "auto" else c

    def prepare_data(self) -> None:
        data = self.config.data

        def build():
            if data.synthetic.enabled:
                marker = epath.Path(self.manual_dir) / "gtFine_trainvaltest.zip"
                if not marker.exists():
                    from psa_jax.data.fake_cityscapes import write_fake_cityscapes
                    s = data.synthetic
                    logger.info("writing synthetic Cityscapes zips to %s", self.manual_dir)
                    write_fake_cityscapes(self.manual_dir, num_images={"train": s.num_train, "val": s.num_val, "test": 1},
                                          height=s.height, width=s.width, seed=s.seed)
            prepare_cityscapes(self.manual_dir, self.data_dir)
            if self.cache_dir and not (epath.Path(self.cache_dir) / "train.json").exists():
                build_training_cache(CityscapesRecords(cityscapes_data_source("train", self.data_dir)),
                                     self.cache_dir, "train", image_format=data.image_format)

        run_on_process_zero(build, "cityscapes_prepared")

    def train_dataset(self, start_step: int = 0):
        data = self.config.data
        if data.augment not in AUGMENT_PRESETS:
            raise ValueError(f"config.data.augment={data.augment!r} is not one of {sorted(AUGMENT_PRESETS)}")
        augment = dataclasses.replace(AUGMENT_PRESETS[data.augment], crop_hw=tuple(data.crop_size))
        records = cityscapes_records("train", data_dir=self.data_dir, cache_dir=self.cache_dir)
        ds = seg_train_dataset(records, augment, global_batch_size=self.config.batch_size, seed=self.config.seed,
                               read_options=pipeline.default_read_options(data.read_threads, data.prefetch),
                               worker_count=data.worker_count, start_step=start_step)
        return ds, len(records)

    def check_evaluation_inputs(self) -> None:
        """The validation split exists (before training starts, not at the first evaluation)."""
        ev = self.config.eval
        try:
            records = cityscapes_records(ev.split, data_dir=self.data_dir)
        except Exception as err:  # tfds raises several types for a missing split
            raise ValueError(f"the evaluation split config.eval.split={ev.split!r} cannot be read from the prepared "
                             f"Cityscapes dataset in {self.data_dir} ({type(err).__name__}: {err}); prepare it "
                             "(python -m psa_jax.tools.check_cityscapes) or set --config.eval.split") from err
        if len(records) == 0:
            raise ValueError(f"the evaluation split config.eval.split={ev.split!r} in {self.data_dir} is empty")
        self._val_records = records

    # ------------------------------------------------------------------ model and loss
    def build_model(self, rngs: nnx.Rngs, *, platform: str | None = None) -> nnx.Module:
        m = self.config.model
        dtype = compute_dtype(m.dtype)
        program = model_program(m.program, platform)
        if m.align_corners not in _ALIGN:
            raise ValueError(f"config.model.align_corners={m.align_corners!r} is not one of {sorted(_ALIGN)}")
        if m.name == "seg_hrnet":
            return seg_hrnet(m.width, num_classes=m.num_classes, ocr=m.ocr, attention=m.attention,
                             placement=m.placement, align_corners=_ALIGN[m.align_corners], dtype=dtype,
                             program=program, rngs=rngs)
        if m.name == "mscale_ocr":
            return mscale_ocr(m.width, num_classes=m.num_classes, attention=m.attention, placement=m.placement,
                              eval_scales=tuple(m.eval_scales), dtype=dtype, program=program, rngs=rngs)
        raise ValueError(f"config.model.name={m.name!r} is not one of 'seg_hrnet', 'mscale_ocr'")

    def preprocess(self, images: jax.Array) -> jax.Array:
        """Segmentation batches arrive normalised (float32) from the host pipeline."""
        return images

    def loss_fn(self, outputs: Any, batch: Mapping[str, jax.Array]):
        loss = self.config.loss
        f32 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)  # noqa: E731
        if loss.recipe == "hrnet_seg":
            return hrnet_seg_loss(f32(outputs), batch["label"],
                                  class_weights=CITYSCAPES_CLASS_WEIGHTS if loss.class_weights else None,
                                  aux_weight=loss.aux_weight, use_ohem=loss.use_ohem, ohem_thresh=loss.ohem_thresh,
                                  ohem_min_kept=loss.ohem_min_kept)
        if loss.recipe == "nvidia_mscale":
            if not isinstance(outputs, Mapping):
                raise ValueError("loss.recipe='nvidia_mscale' needs model.name='mscale_ocr' (two-scale outputs)")
            return nvidia_mscale_loss(f32(outputs), batch["label"], aux_weight=loss.aux_weight)
        raise ValueError(f"config.loss.recipe={loss.recipe!r} is not one of 'hrnet_seg', 'nvidia_mscale'")

    def forward(self, model: nnx.Module, images: jax.Array) -> jax.Array:
        if self.config.eval.mode == "mscale":
            if self.config.model.name != "mscale_ocr":
                raise ValueError("eval.mode='mscale' needs model.name='mscale_ocr'")
            return model.nscale(images, tuple(self.config.eval.scales)).astype(jnp.float32)
        out = model(images)
        return out.astype(jnp.float32)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, predict: Callable[[np.ndarray], np.ndarray], *, step: int, final: bool,
                 periodic: bool = True) -> dict[str, Any]:
        """mIoU (and per-class IoU) of `predict` on `eval.split`; `final` also writes overlays.
        Segmentation has no final-only evaluation: `periodic=False` returns {}."""
        if not periodic:
            return {}
        ev = self.config.eval
        if self._val_records is None:
            self._val_records = cityscapes_records(ev.split, data_dir=self.data_dir)
        predict_fn = (lambda images, scales: predict(images)) if ev.mode == "mscale" else predict
        overlay_dir = os.path.join(self.workdir, "overlays", f"step{step}") if final else None
        res = evaluate_segmentation(
            predict_fn, self._val_records, mode=ev.mode, batch_size=ev.batch_size,
            scales=tuple(ev.scales) or None, flip=ev.flip, window=tuple(ev.window) if ev.window else None,
            stride=tuple(ev.stride) if any(ev.stride) else None, overlay_dir=overlay_dir)
        if jax.process_index() == 0 and "table" in res:
            logger.info("step %d per-class IoU:\n%s", step, res["table"])
        return {k: float(v) for k, v in res.items() if np.isscalar(v) and not isinstance(v, str)}
