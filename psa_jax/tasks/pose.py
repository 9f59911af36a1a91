"""COCO top-down pose: data, model, loss and evaluation for train.py / eval.py.

Recipe facts (HRNet-pose, UDP-Pose) live in the configs; this file wires the pieces:
`psa_jax.data.pose_pipeline` (builder, instance sources, transforms), `psa_jax.models`,
`psa_jax.tasks.pose_losses.joints_mse_loss` and `psa_jax.evaluation.pose_evaluator`.
"""

from __future__ import annotations

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
from psa_jax.data.pose_pipeline import (PoseAugmentConfig, build_coco_keypoints, make_eval_data, make_train_data,
                                        normalize_on_device)
from psa_jax.evaluation.pose_evaluator import evaluate_keypoints
from psa_jax.models import pose_hrnet, pose_resnet
from psa_jax.tasks.pose_losses import joints_mse_loss
from psa_jax.tasks.common import compute_dtype, model_program, resolve_data_dir, run_on_process_zero

__all__ = ["PoseTask"]

logger = logging.getLogger(__name__)



class PoseTask:
    """COCO person keypoints, top-down, heatmap regression."""

    name = "pose"
    train_fields = ("image", "target", "target_weight")
    metric = "AP"
    metric_mode = "max"

    def __init__(self, config: Any, workdir: str | os.PathLike):
        self.config = config
        self.workdir = os.fspath(workdir)
        self.data_dir = resolve_data_dir(config, workdir)
        self._eval_data: dict[str, Any] = {}

    # ------------------------------------------------------------------ data
    @property
    def manual_dir(self) -> str:
        data = self.config.data
        if data.synthetic.enabled:
            return os.path.join(self.data_dir, "synthetic_coco")
        if not data.manual_dir:
            raise ValueError("config.data.manual_dir is empty: point it at a COCO-layout folder "
                             "(annotations/person_keypoints_{train,val}2017.json, train2017/, val2017/), "
                             "or set config.data.synthetic.enabled=True for the synthetic demo data")
        return data.manual_dir

    def prepare_data(self) -> None:
        data = self.config.data

        def build():
            if data.synthetic.enabled:
                marker = epath.Path(self.manual_dir) / "annotations" / "person_keypoints_val2017.json"
                if not marker.exists():
                    from psa_jax.data.synthetic_coco import write_synthetic_coco
                    logger.info("writing synthetic COCO scenes to %s", self.manual_dir)
                    write_synthetic_coco(self.manual_dir, num_train=data.synthetic.num_train,
                                         num_val=data.synthetic.num_val, image_size=tuple(data.synthetic.image_size),
                                         seed=data.synthetic.seed)
            build_coco_keypoints(self.manual_dir, self.data_dir)

        run_on_process_zero(build, "coco_keypoints_prepared")

    @property
    def _codec_args(self) -> dict[str, Any]:
        data = self.config.data
        return dict(codec=data.codec, input_size=tuple(data.input_size), sigma=data.sigma or None)

    def train_dataset(self):
        data = self.config.data
        aug = PoseAugmentConfig(**data.augment.to_dict())
        source, transform = make_train_data(self.data_dir, split="train", augment=aug,
                                            image_dtype=data.train_image_dtype, **self._codec_args)
        ds = pipeline.train_dataset(
            source, transform, global_batch_size=self.config.batch_size, seed=self.config.seed,
            read_options=pipeline.default_read_options(data.read_threads, data.prefetch),
            worker_count=data.worker_count)
        return ds, len(source)

    def preprocess(self, images: jax.Array) -> jax.Array:
        """Training images on device -> network input: uint8 batches are normalised here."""
        return normalize_on_device(images) if images.dtype == jnp.uint8 else images

    # ------------------------------------------------------------------ model and loss
    def build_model(self, rngs: nnx.Rngs, *, platform: str | None = None) -> nnx.Module:
        m = self.config.model
        dtype = compute_dtype(m.dtype)
        program = model_program(m.program, platform)
        if m.name == "pose_hrnet":
            return pose_hrnet(m.width, num_keypoints=m.num_keypoints, attention=m.attention, placement=m.placement,
                              dtype=dtype, program=program, rngs=rngs)
        if m.name == "pose_resnet":
            return pose_resnet(m.depth, num_keypoints=m.num_keypoints, attention=m.attention, dtype=dtype,
                               program=program, rngs=rngs)
        raise ValueError(f"config.model.name={m.name!r} is not one of 'pose_hrnet', 'pose_resnet'")

    def loss_fn(self, outputs: jax.Array, batch: Mapping[str, jax.Array]):
        loss = joints_mse_loss(outputs.astype(jnp.float32), batch["target"], batch["target_weight"])
        return loss, {}

    def forward(self, model: nnx.Module, images: jax.Array) -> jax.Array:
        return model(images).astype(jnp.float32)

    # ------------------------------------------------------------------ evaluation
    def _data(self, boxes: str):
        if boxes not in self._eval_data:
            ev = self.config.eval
            self._eval_data[boxes] = make_eval_data(self.data_dir, split=ev.split, boxes=boxes,
                                                    det_score_threshold=ev.det_score_threshold, **self._codec_args)
        return self._eval_data[boxes]

    def evaluate(self, predict: Callable[[np.ndarray], np.ndarray], *, step: int, final: bool) -> dict[str, Any]:
        """COCO keypoint AP with `eval.boxes` during training; also `eval.final_boxes` at the end."""
        ev = self.config.eval
        results: dict[str, Any] = {}
        box_kinds = [ev.boxes] + ([ev.final_boxes] if final and ev.final_boxes and ev.final_boxes != ev.boxes else [])
        for i, boxes in enumerate(box_kinds):
            path = os.path.join(self.workdir, "results", f"keypoints_{boxes}_step{step}.json")
            stats = evaluate_keypoints(predict, self._data(boxes), flip_test=ev.flip_test,
                                       batch_size=ev.batch_size, results_path=path)
            prefix = "" if i == 0 else f"{boxes}/"
            results.update({prefix + k: v for k, v in stats.items() if np.isscalar(v)})
        return results
