"""Datasets (tfds builders), transforms and grain pipelines for COCO keypoints and Cityscapes."""
