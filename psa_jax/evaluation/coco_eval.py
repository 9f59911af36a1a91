"""COCO keypoint results: rescoring, per-image OKS-NMS, results json and pycocotools AP/AR.

HRNet `lib/dataset/coco.py::evaluate`, `_write_coco_keypoint_results` and
`_do_python_keypoint_eval`:

1. Rescoring: instance score = box score x mean of the keypoint scores above 0.2
   (`TEST.IN_VIS_THRE`; 0 when none is above), box score 1 for ground-truth boxes.
2. Per image, greedy OKS-NMS at 0.9 (`oks_nms.py`) with the padded box areas.
3. Results json: one entry per kept pose `{image_id, category_id: 1, keypoints: [x, y, s] * K,
   score}` (plus HRNet's informational `center`, `scale`).
4. `COCOeval(gt, dt, 'keypoints')` with `params.useSegm = None`; its 10 stats.

Works with any COCO-format person keypoint ground truth (a `pycocotools.coco.COCO`, a dict or a
json path); the keypoint count and sigmas follow the data (COCO's 17 sigmas by default).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from psa_jax.evaluation.oks_nms import COCO_KEYPOINT_SIGMAS, OKS_NMS_THRESHOLD, oks_nms

KEYPOINT_SCORE_THRESHOLD = 0.2  # HRNet TEST.IN_VIS_THRE
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

__all__ = ["KEYPOINT_SCORE_THRESHOLD", "STAT_NAMES", "rescore", "nms_per_image", "keypoint_results",
           "write_results_json", "load_coco", "coco_keypoint_eval"]


def rescore(keypoint_scores: np.ndarray, box_scores: np.ndarray,
            threshold: float = KEYPOINT_SCORE_THRESHOLD) -> np.ndarray:
    """Instance score = box score x mean of keypoint scores > threshold (0 if none).

    Args:
      keypoint_scores: `(N, K)`; box_scores: `(N,)`.

    Returns:
      `(N,)` float64.
    """
    s = np.asarray(keypoint_scores, np.float64)
    confident = s > threshold
    count = confident.sum(axis=1)
    mean = np.divide((s * confident).sum(axis=1), count, out=np.zeros(len(s)), where=count > 0)
    return mean * np.asarray(box_scores, np.float64)


def nms_per_image(image_ids: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray,
                  threshold: float = OKS_NMS_THRESHOLD, sigmas: np.ndarray | None = None) -> np.ndarray:
    """Indices kept by OKS-NMS run separately on each image's poses (sorted by image, then score)."""
    by_image: dict[int, list[int]] = defaultdict(list)
    for i, image_id in enumerate(np.asarray(image_ids).tolist()):
        by_image[int(image_id)].append(i)
    kept = []
    for image_id in sorted(by_image):
        idx = np.asarray(by_image[image_id])
        keep = oks_nms(keypoints[idx], scores[idx], areas[idx], threshold, sigmas)
        kept.extend(idx[keep].tolist())
    return np.asarray(kept, np.int64)


def keypoint_results(
    image_ids: np.ndarray,
    keypoints: np.ndarray,
    box_scores: np.ndarray,
    areas: np.ndarray,
    *,
    centers: np.ndarray | None = None,
    scales: np.ndarray | None = None,
    category_id: int = 1,
    keypoint_score_threshold: float = KEYPOINT_SCORE_THRESHOLD,
    nms_threshold: float | None = OKS_NMS_THRESHOLD,
    sigmas: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Rescoring + per-image OKS-NMS -> COCO results entries (HRNet `coco.py::evaluate`).

    Args:
      image_ids: `(N,)`; keypoints: `(N, K, 3)` image (x, y, score); box_scores: `(N,)`;
      areas: `(N,)` padded box areas (`prod(scale)`), used by OKS-NMS.
      centers, scales: optional `(N, 2)`, copied into the entries (informational, as HRNet).
      nms_threshold: None disables OKS-NMS.

    Returns:
      list of dicts `{image_id, category_id, keypoints (flat), score[, center, scale]}`.
    """
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"keypoints must be (N, K, 3), got {keypoints.shape}")
    if not np.all(np.isfinite(keypoints)):
        raise ValueError("predicted keypoints contain NaN or inf")
    scores = rescore(keypoints[..., 2], box_scores, keypoint_score_threshold)
    areas = np.asarray(areas, np.float64)
    if nms_threshold is None:
        kept = np.arange(len(keypoints))
    else:
        kept = nms_per_image(image_ids, keypoints, scores, areas, nms_threshold, sigmas)
    results = []
    for i in kept.tolist():
        entry = {
            "image_id": int(image_ids[i]),
            "category_id": int(category_id),
            "keypoints": [round(float(v), 4) for v in keypoints[i].reshape(-1)],
            "score": float(scores[i]),
        }
        if centers is not None:
            entry["center"] = [float(v) for v in centers[i]]
        if scales is not None:
            entry["scale"] = [float(v) for v in scales[i]]
        results.append(entry)
    return results


def write_results_json(results: Sequence[Mapping[str, Any]], path: str | epath.PathLike) -> epath.Path:
    """Writes COCO keypoint results (a json list) to `path`, creating its folder."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(results)))
    return path


def load_coco(gt: COCO | Mapping[str, Any] | str | epath.PathLike) -> COCO:
    """A `pycocotools.coco.COCO` from a COCO object, a COCO-format dict or a json path (quietly)."""
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, Mapping):
        dataset = dict(gt)
    else:
        path = epath.Path(gt)
        if not path.exists():
            raise FileNotFoundError(f"COCO annotation file not found: {path}")
        dataset = json.loads(path.read_text())
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_keypoint_eval(
    gt: COCO | Mapping[str, Any] | str | epath.PathLike,
    results: Sequence[Mapping[str, Any]] | str | epath.PathLike,
    *,
    sigmas: np.ndarray | None = None,
    print_summary: bool = True,
) -> dict[str, float]:
    """pycocotools keypoint AP/AR (HRNet `_do_python_keypoint_eval`).

    Args:
      gt: ground truth (COCO object, dict or json path).
      results: results entries or a results json path.
      sigmas: per-keypoint sigmas; default COCO's 17 (required for other keypoint counts).
      print_summary: print pycocotools' table to stdout.

    Returns:
      `{'AP', 'AP50', 'AP75', 'APm', 'APl', 'AR', 'AR50', 'AR75', 'ARm', 'ARl'}` floats; all
      zero when there are no results (pycocotools cannot load an empty list).
    """
    coco_gt = load_coco(gt)
    if not isinstance(results, (list, tuple)):
        results = json.loads(epath.Path(results).read_text())
    if len(results) == 0:
        if print_summary:
            print("no keypoint results to evaluate: AP and AR are 0")
        return {name: 0.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(list(results))
    coco_eval = COCOeval(coco_gt, coco_dt, "keypoints")
    coco_eval.params.useSegm = None
    num_kp = len(results[0]["keypoints"]) // 3
    if sigmas is not None:
        coco_eval.params.kpt_oks_sigmas = np.asarray(sigmas, np.float64)
    elif num_kp != len(COCO_KEYPOINT_SIGMAS):
        raise ValueError(f"{num_kp} keypoints per pose: pass their OKS sigmas (COCO's are for 17)")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        coco_eval.summarize()
    if print_summary:
        print(table.getvalue(), end="")
    return {name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats)}
