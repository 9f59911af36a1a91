"""Object keypoint similarity (OKS) and greedy OKS-NMS (NumPy).

HRNet `lib/nms/nms.py::oks_iou` and `oks_nms` (used by `lib/dataset/coco.py::evaluate` with
`TEST.OKS_THRE: 0.9`): candidates are visited in decreasing score; each kept candidate removes
the remaining ones whose OKS with it exceeds the threshold (`keep` those with `oks <= thr`).
OKS between poses g and d with areas a_g, a_d:

    OKS = mean_k exp(-d_k^2 / (2 * ((a_g + a_d) / 2 + eps) * (2 sigma_k)^2))

over all K joints (HRNet passes no visibility threshold), with COCO's per-joint sigmas and, as
the area, the *padded* box area `prod(scale)` of each candidate (HRNet `all_boxes[:, 4]`), not
the ground-truth segment area. If a visibility threshold is given, only joints whose score
exceeds it in both poses count (HRNet's version of this branch, `list(a) and list(b)`, keeps only
the second condition; the option is unused by the reference and implemented as documented).
"""

from __future__ import annotations

import numpy as np

# COCO keypoint sigmas (pycocotools `COCOeval.Params.setKpParams`, HRNet `oks_iou`).
COCO_KEYPOINT_SIGMAS = np.array(
    [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
OKS_NMS_THRESHOLD = 0.9  # HRNet TEST.OKS_THRE

__all__ = ["COCO_KEYPOINT_SIGMAS", "OKS_NMS_THRESHOLD", "oks_iou", "oks_nms"]


def oks_iou(g: np.ndarray, d: np.ndarray, area_g: float, area_d: np.ndarray,
            sigmas: np.ndarray | None = None, vis_threshold: float | None = None) -> np.ndarray:
    """OKS of one pose against many.

    Args:
      g: `(K, 3)` pose (x, y, score); d: `(N, K, 3)` poses.
      area_g: area of g; area_d: `(N,)` areas of d.
      sigmas: `(K,)` per-joint sigmas (default COCO).
      vis_threshold: optional score threshold (see module doc).

    Returns:
      `(N,)` OKS in [0, 1].
    """
    g = np.asarray(g, np.float64)
    d = np.asarray(d, np.float64).reshape(-1, *g.shape)
    sigmas = COCO_KEYPOINT_SIGMAS if sigmas is None else np.asarray(sigmas, np.float64)
    if len(sigmas) != g.shape[0]:
        raise ValueError(f"{len(sigmas)} sigmas for {g.shape[0]} keypoints")
    variances = (sigmas * 2) ** 2
    sq = (d[..., 0] - g[None, :, 0]) ** 2 + (d[..., 1] - g[None, :, 1]) ** 2  # (N, K)
    mean_area = (area_g + np.asarray(area_d, np.float64)) / 2 + np.spacing(1)
    e = sq / variances[None, :] / mean_area[:, None] / 2
    if vis_threshold is None:
        return np.exp(-e).mean(axis=1) if e.shape[1] else np.zeros(len(d))
    mask = (g[None, :, 2] > vis_threshold) & (d[..., 2] > vis_threshold)
    count = mask.sum(axis=1)
    total = (np.exp(-e) * mask).sum(axis=1)
    return np.divide(total, count, out=np.zeros(len(d)), where=count > 0)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float = OKS_NMS_THRESHOLD,
            sigmas: np.ndarray | None = None, vis_threshold: float | None = None) -> np.ndarray:
    """Greedy OKS-NMS over the poses of one image (HRNet `oks_nms`).

    Args:
      keypoints: `(N, K, 3)` poses (x, y, score); scores: `(N,)`; areas: `(N,)`.
      threshold: suppress candidates with OKS > threshold to a kept pose.

    Returns:
      indices of the kept poses, in decreasing score, int64 `(M,)`.
    """
    keypoints = np.asarray(keypoints, np.float64)
    scores = np.asarray(scores, np.float64)
    areas = np.asarray(areas, np.float64)
    if not (len(keypoints) == len(scores) == len(areas)):
        raise ValueError(f"lengths differ: keypoints {len(keypoints)}, scores {len(scores)}, areas {len(areas)}")
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        ovr = oks_iou(keypoints[i], keypoints[rest], areas[i], areas[rest], sigmas, vis_threshold)
        order = rest[ovr <= threshold]
    return np.asarray(keep, np.int64)
