"""COCO top-down keypoint evaluation of a heatmap model (or of ground-truth heatmaps).

Pipeline (HRNet `lib/core/function.py::validate` + `lib/dataset/coco.py::evaluate`):

  instances (GT or detector boxes) -> eval crops (`pose_pipeline.EvalTransform`)
  -> heatmaps (model, optionally flip test) -> decoding (msra / dark / udp / udp_combined)
  -> inverse warp to image pixels -> rescoring -> per-image OKS-NMS 0.9
  -> results json -> pycocotools COCOeval keypoint AP/AR.

Multi-host: every JAX process evaluates its slice of the instances (`pipeline.eval_dataset`,
equal batch counts, padding masked by `valid`); the decoded poses are gathered with
`jax.experimental.multihost_utils.process_allgather` when `jax.process_count() > 1`, and every
process computes the same COCO stats (process 0 writes the results json).

`evaluate_ground_truth` replaces the model by heatmaps rendered from the ground-truth joints
with the codec's own target encoder (and, for the flip test, from the mirrored joints): a
data/codec check that should give AP close to 1 (see `psa_jax.tools.check_keypoints`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from psa_jax.data import pipeline
from psa_jax.data.pose_pipeline import PoseEvalData, flip_joints_in_crop, make_eval_data
from psa_jax.data.pose_transforms import COCO_FLIP_PAIRS
from psa_jax.evaluation.coco_eval import coco_keypoint_eval, keypoint_results, write_results_json
from psa_jax.evaluation.flip_averaging import average_with_flipped, default_shift_heatmap, flip_images
from psa_jax.evaluation.keypoint_decoding import keypoints_from_heatmaps
from psa_jax.evaluation.oks_nms import OKS_NMS_THRESHOLD

PredictFn = Callable[[np.ndarray], np.ndarray]
HeatmapFn = Callable[[dict[str, np.ndarray], bool], np.ndarray]

__all__ = ["evaluate_keypoints", "evaluate_ground_truth", "predict_keypoints", "ground_truth_heatmaps"]

_FIELDS = ("keypoints", "center", "scale", "area", "bbox_score", "image_id")


def ground_truth_heatmaps(data: PoseEvalData) -> HeatmapFn:
    """A heatmap function that renders each crop's ground-truth joints with the codec's encoder."""
    codec = data.codec

    def fn(batch: dict[str, np.ndarray], flipped: bool) -> np.ndarray:
        joints = batch["joints"]
        if flipped:
            joints = flip_joints_in_crop(joints, codec.input_wh[0])
        return np.stack([codec.encode(j[:, :2], j[:, 2])[0] for j in joints])

    return fn


def _model_heatmaps(predict_fn: PredictFn) -> HeatmapFn:
    def fn(batch: dict[str, np.ndarray], flipped: bool) -> np.ndarray:
        images = np.asarray(batch["image"], np.float32)
        return np.asarray(predict_fn(flip_images(images) if flipped else images), np.float32)

    return fn


def predict_keypoints(
    heatmap_fn: HeatmapFn,
    data: PoseEvalData,
    *,
    batch_size: int = 32,
    flip_test: bool = True,
    shift_heatmap: bool | None = None,
    blur_kernel: int | None = None,
    flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS,
    progress: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> dict[str, np.ndarray]:
    """Runs this process's share of the instances; returns its decoded poses (valid rows only).

    Returns:
      `{'keypoints': (N, K, 3) image x, y, score, 'center', 'scale': (N, 2), 'area', 'bbox_score':
      (N,), 'image_id': (N,)}` for the N instances of this process.
    """
    codec = data.codec
    shift = default_shift_heatmap(codec.name) if shift_heatmap is None else shift_heatmap
    ds = pipeline.eval_dataset(data.source, data.transform, batch_size=batch_size,
                               process_index=process_index, process_count=process_count)
    index, count = pipeline.process_layout(process_index, process_count)
    per_process = -(-len(data.source) // count)  # ceil
    num_batches = -(-per_process // batch_size)
    out: dict[str, list] = {k: [] for k in _FIELDS}
    for batch in tqdm(ds, total=num_batches, desc=f"pose eval ({data.boxes} boxes, {codec.name})",
                      disable=not progress or index != 0, unit="batch"):
        heatmaps = np.asarray(heatmap_fn(batch, False), np.float32)
        expected = (len(batch["image"]), *codec.heatmap_size)
        if heatmaps.shape[:3] != expected:
            raise ValueError(f"the model returned heatmaps of shape {heatmaps.shape}; expected NHWC "
                             f"{expected + ('K',)} for input {codec.input_size}")
        if flip_test:
            flipped = np.asarray(heatmap_fn(batch, True), np.float32)
            heatmaps = average_with_flipped(heatmaps, flipped, shift_heatmap=shift, flip_pairs=flip_pairs,
                                            codec=codec.name)
        kps = keypoints_from_heatmaps(heatmaps, batch["center"], batch["scale"], codec, blur_kernel=blur_kernel)
        valid = np.asarray(batch["valid"], bool)
        out["keypoints"].append(kps[valid])
        for key in _FIELDS[1:]:
            out[key].append(np.asarray(batch[key])[valid])
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}


def _gather_across_processes(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenates every process's rows (only when running multi-process)."""
    import jax

    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    n = np.asarray([len(local["image_id"])])
    counts = np.asarray(multihost_utils.process_allgather(n)).reshape(-1)
    most = int(counts.max())
    gathered = {}
    for key, v in local.items():
        padded = np.zeros((most, *v.shape[1:]), v.dtype)
        padded[:len(v)] = v
        allv = np.asarray(multihost_utils.process_allgather(padded))  # (P, most, ...)
        gathered[key] = np.concatenate([allv[p, :counts[p]] for p in range(len(counts))])
    return gathered


def _evaluate(heatmap_fn: HeatmapFn, data: PoseEvalData, *, results_path, progress: bool,
              oks_nms_threshold: float | None, sigmas, **kw) -> dict[str, Any]:
    import jax

    local = predict_keypoints(heatmap_fn, data, progress=progress, **kw)
    preds = _gather_across_processes(local)
    results = keypoint_results(preds["image_id"], preds["keypoints"], preds["bbox_score"], preds["area"],
                               centers=preds["center"], scales=preds["scale"], nms_threshold=oks_nms_threshold,
                               sigmas=sigmas)
    if results_path is not None and jax.process_index() == 0:
        write_results_json(results, results_path)
    stats: dict[str, Any] = coco_keypoint_eval(data.coco_gt, results, sigmas=sigmas, print_summary=progress)
    stats["num_instances"] = int(len(preds["image_id"]))
    stats["num_results"] = len(results)
    return stats


def _eval_data(data: PoseEvalData | str | os.PathLike, boxes, codec, input_size, sigma, det_score_threshold,
               split, progress) -> PoseEvalData:
    if isinstance(data, PoseEvalData):
        return data
    return make_eval_data(data, split=split, boxes=boxes, codec=codec, input_size=input_size, sigma=sigma,
                          det_score_threshold=det_score_threshold, progress=progress)


def evaluate_keypoints(
    predict_fn: PredictFn,
    data: PoseEvalData | str | os.PathLike,
    *,
    boxes: str = "gt",
    codec: str = "udp",
    input_size: Sequence[int] = (256, 192),
    sigma: float | None = None,
    split: str = "validation",
    det_score_threshold: float = 0.0,
    flip_test: bool = True,
    shift_heatmap: bool | None = None,
    blur_kernel: int | None = None,
    batch_size: int = 32,
    results_path: str | os.PathLike | None = None,
    oks_nms_threshold: float | None = OKS_NMS_THRESHOLD,
    sigmas: np.ndarray | None = None,
    progress: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> dict[str, Any]:
    """COCO keypoint AP/AR of a heatmap model.

    Args:
      predict_fn: `(B, H, W, 3)` float32 normalised RGB crops -> `(B, h, w, K)` heatmaps (NumPy in,
        array-like out); called twice per batch with `flip_test`.
      data: a `PoseEvalData` (reuse it across evaluations) or a tfds data dir with the built
        `coco_keypoints`, in which case `boxes`, `codec`, `input_size`, `sigma`, `split` and
        `det_score_threshold` select it (see `pose_pipeline.make_eval_data`).
      flip_test: average with the mirrored crop (shift per `flip_test.default_shift_heatmap` unless
        `shift_heatmap` is given).
      blur_kernel: override the DARK/UDP decoding blur (default 11 / 7).
      batch_size: crops per `predict_fn` call on this process.
      results_path: write the COCO results json there (process 0).
      oks_nms_threshold: None disables OKS-NMS; sigmas: OKS sigmas (default COCO's 17).

    Returns:
      `{'AP', 'AP50', 'AP75', 'APm', 'APl', 'AR', 'AR50', 'AR75', 'ARm', 'ARl', 'num_instances',
      'num_results'}`.
    """
    data = _eval_data(data, boxes, codec, input_size, sigma, det_score_threshold, split, progress)
    return _evaluate(_model_heatmaps(predict_fn), data, results_path=results_path, progress=progress,
                     oks_nms_threshold=oks_nms_threshold, sigmas=sigmas, batch_size=batch_size,
                     flip_test=flip_test, shift_heatmap=shift_heatmap, blur_kernel=blur_kernel,
                     process_index=process_index, process_count=process_count)


def evaluate_ground_truth(
    data: PoseEvalData | str | os.PathLike,
    *,
    boxes: str = "gt",
    codec: str = "udp",
    input_size: Sequence[int] = (256, 192),
    sigma: float | None = None,
    split: str = "validation",
    det_score_threshold: float = 0.0,
    flip_test: bool = False,
    shift_heatmap: bool | None = None,
    blur_kernel: int | None = None,
    batch_size: int = 32,
    results_path: str | os.PathLike | None = None,
    oks_nms_threshold: float | None = OKS_NMS_THRESHOLD,
    progress: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> dict[str, Any]:
    """`evaluate_keypoints` with heatmaps rendered from the ground truth instead of a model.

    The same crops, targets, flip test, decoding, rescoring, NMS and COCOeval as a real
    evaluation; with detector boxes each box renders the annotated person it overlaps most
    (IoU >= 0.5) or nothing.
    """
    data = _eval_data(data, boxes, codec, input_size, sigma, det_score_threshold, split, progress)
    return _evaluate(ground_truth_heatmaps(data), data, results_path=results_path, progress=progress,
                     oks_nms_threshold=oks_nms_threshold, sigmas=None, batch_size=batch_size,
                     flip_test=flip_test, shift_heatmap=shift_heatmap, blur_kernel=blur_kernel,
                     process_index=process_index, process_count=process_count)
