"""Evaluation: keypoint decoding, flip test, OKS-NMS and COCO AP; segmentation inference and mIoU."""
