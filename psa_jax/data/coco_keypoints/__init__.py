"""The `coco_keypoints` tfds builder (COCO person keypoints, array_record, TensorFlow-free)."""

from psa_jax.data.coco_keypoints.coco_keypoints import CocoKeypoints, CocoKeypointsConfig, coco_person_category

__all__ = ["CocoKeypoints", "CocoKeypointsConfig", "coco_person_category"]
