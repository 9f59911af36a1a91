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
from psa_jax.data.coco_keypoints import CocoKeypointsConfig
from psa_jax.data.pose_pipeline import (PoseAugmentConfig, build_coco_keypoints, make_eval_data, make_train_data,
                                        normalize_on_device)
from psa_jax.data.pose_targets import channels_per_joint
from psa_jax.evaluation.pose_evaluator import evaluate_keypoints
from psa_jax.models import pose_hrnet, pose_resnet
from psa_jax.tasks.pose_losses import combined_target_mse_loss, joints_mse_loss
from psa_jax.tasks.common import compute_dtype, model_program, resolve_data_dir, run_on_process_zero

__all__ = ["PoseTask"]

# Where the builder looks for the validation detections json, relative to the manual dir.
DETECTION_FILES: tuple[str, ...] = CocoKeypointsConfig.detections

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

    def train_dataset(self, start_step: int = 0):
        data = self.config.data
        aug = PoseAugmentConfig(**data.augment.to_dict())
        source, transform = make_train_data(self.data_dir, split="train", augment=aug,
                                            image_dtype=data.train_image_dtype, **self._codec_args)
        ds = pipeline.train_dataset(
            source, transform, global_batch_size=self.config.batch_size, seed=self.config.seed,
            read_options=pipeline.default_read_options(data.read_threads, data.prefetch),
            worker_count=data.worker_count, start_step=start_step)
        return ds, len(source)

    def preprocess(self, images: jax.Array) -> jax.Array:
        """Training images on device -> network input: uint8 batches are normalised here."""
        return normalize_on_device(images) if images.dtype == jnp.uint8 else images

    # ------------------------------------------------------------------ model and loss
    def build_model(self, rngs: nnx.Rngs, *, platform: str | None = None) -> nnx.Module:
        m = self.config.model
        dtype = compute_dtype(m.dtype)
        program = model_program(m.program, platform)
        # output channels: K heatmaps, or 3K maps (classification, x/y offsets) for codec 'udp_combined'
        channels = channels_per_joint(self.config.data.codec) * m.num_keypoints
        if m.name == "pose_hrnet":
            return pose_hrnet(m.width, num_keypoints=channels, attention=m.attention, placement=m.placement,
                              dtype=dtype, program=program, rngs=rngs)
        if m.name == "pose_resnet":
            return pose_resnet(m.depth, num_keypoints=channels, attention=m.attention, dtype=dtype,
                               program=program, rngs=rngs)
        raise ValueError(f"config.model.name={m.name!r} is not one of 'pose_hrnet', 'pose_resnet'")

    def loss_fn(self, outputs: jax.Array, batch: Mapping[str, jax.Array]):
        """HRNet's JointsMSELoss, or mmpose's CombinedTargetMSELoss for codec 'udp_combined'."""
        criterion = combined_target_mse_loss if self.config.data.codec == "udp_combined" else joints_mse_loss
        loss = criterion(outputs.astype(jnp.float32), batch["target"], batch["target_weight"])
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

    def _box_kinds(self, final: bool) -> list[str]:
        ev = self.config.eval
        return [ev.boxes] + ([ev.final_boxes] if final and ev.final_boxes and ev.final_boxes != ev.boxes else [])

    def check_evaluation_inputs(self) -> None:
        """Everything the periodic and the final evaluations read exists (the detector boxes of
        'det'), so that a missing file stops the run before its first step, not after the last."""
        for boxes in self._box_kinds(final=True):
            try:
                self._data(boxes)
            except ValueError as err:
                if boxes != "det":
                    raise
                key = "boxes" if self.config.eval.boxes == "det" else "final_boxes"
                raise ValueError(
                    f"config.eval.{key}='det' evaluates with detector boxes, but the prepared "
                    f"{self.config.eval.split!r} split has none ({err}). Put the person detections json in the manual "
                    f"dir as one of {', '.join(DETECTION_FILES)} (HRNet publishes "
                    "COCO_val2017_detections_AP_H_56_person.json with its pose code) and prepare the dataset again "
                    f"(delete {self.data_dir}/coco_keypoints), or evaluate with ground-truth boxes: "
                    f"--config.eval.{key}=gt") from None

    def evaluate(self, predict: Callable[[np.ndarray], np.ndarray], *, step: int, final: bool,
                 periodic: bool = True) -> dict[str, Any]:
        """COCO keypoint AP with `eval.boxes` during training; also `eval.final_boxes` at the end.

        `periodic=False` (with `final=True`) computes only the final-only evaluations: the loop
        saves the last checkpoint between the two parts."""
        ev = self.config.eval
        results: dict[str, Any] = {}
        box_kinds = self._box_kinds(final)
        for i, boxes in enumerate(box_kinds):
            if i == 0 and not periodic:
                continue
            path = os.path.join(self.workdir, "results", f"keypoints_{boxes}_step{step}.json")
            stats = evaluate_keypoints(predict, self._data(boxes), flip_test=ev.flip_test,
                                       batch_size=ev.batch_size, results_path=path)
            prefix = "" if i == 0 else f"{boxes}/"
            results.update({prefix + k: v for k, v in stats.items() if np.isscalar(v)})
        return results
