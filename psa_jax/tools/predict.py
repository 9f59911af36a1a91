r"""Runs a checkpoint on any images and writes pictures plus the raw predictions.

    python -m psa_jax.tools.predict --workdir=workdirs/demo photo.jpg more_photos/
    python -m psa_jax.tools.predict --config=configs/coco_w32_256x192.py --workdir=/ckpt/w32 \
        --boxes=person_detections.json --out=/tmp/poses val2017/000000000785.jpg
    python -m psa_jax.tools.predict --config=configs/cityscapes_mscale_ocr_psa_p.py \
        --checkpoint=/ckpt/psa_p/checkpoints --out=/tmp/seg --config.eval.mode=whole \
        frankfurt_000000_000294_leftImg8bit.png

The network is the config's (`config.task`'s `build_model`); its weights are restored like eval.py does
(model weights only, onto this machine's devices) from WORKDIR/checkpoints, or from `--checkpoint`
(an orbax checkpoint directory, a workdir, or one step's directory such as `.../checkpoints/360`).
`--config.KEY=VALUE` overrides a config value as in train.py and eval.py. An IMAGES argument may be
a folder: its image files (not its sub-folders) are taken in name order. Images are read as stored,
ignoring any EXIF rotation (as the datasets' evaluation reads them, so boxes in COCO files match).

Pose (`config.task='pose'`), the evaluation's top-down path on each person box:
  box -> centre/scale with 1.25 padding -> the codec's crop warp (`PoseCodec.warp`) -> heatmaps
  (flip test when `config.eval.flip_test`) -> the codec's decoding and inverse warp -> keypoints
  in image pixels -> person score = box score x mean keypoint score above 0.2 -> per-image OKS-NMS
  (0.9; `--no_oks_nms` to keep every box). Boxes come from `--boxes`, else the whole image is one
  person (box score 1). Writes `OUT/<stem>_pose.png`: the skeletons (left limbs blue, right limbs
  orange, midline limbs green; joints scoring below `--keypoint_score_threshold` hidden) and the
  boxes with their person scores.

  `--boxes` takes a COCO-format json: a list of detections (`{"image_id", "bbox": [x, y, w, h],
  "score", "category_id"}`, the detector-results format), or a dict with "annotations" of that
  form and optionally "images" (`{"id", "file_name"}`). An entry belongs to an image when
    1. its "file_name" equals the image's file name (or a path ending in it), or
    2. its "image_id" is listed under "images" with that file name, or
    3. its "image_id" equals the image's file stem read as a number (COCO's naming:
       `000000000785.jpg` is image 785) or as text.
  Entries with a "category_id" other than 1 (person), with a score below
  `--box_score_threshold` (missing score: 1), or with a zero-size box are left out; an image with
  no box left gets no person (and a warning).

Segmentation (`config.task='seg'`): the config's inference (`config.eval.mode`: whole image by
default, or slide / multiscale / mscale, `psa_jax.evaluation.seg_inference`) on the ImageNet-normalised
RGB image -> argmax trainIds. Writes `OUT/<stem>_seg.png` (the Cityscapes palette blended over the
image, `psa_jax.evaluation.seg_visualize.overlay`) and `OUT/<stem>_trainids.png` (8-bit trainIds).

Also writes `OUT/predictions.json`: `{"task", "config", "checkpoint", "step", "images": [...],
"skipped": [...]}` with per image its "file", "width", "height" and the written files, plus
  pose: "persons": `[{"box": [x, y, w, h], "box_score", "score", "keypoints": 17 x [x, y, score]}]`
         (image pixels, highest score first);
  seg:   "label_map" (the trainIds PNG) and "class_histogram" `{class name: pixel count}`.
Two images with the same file stem get `<stem>`, `<stem>_1`, ... Unreadable images are skipped,
counted and listed at the end; the exit status is then 1 (0 when every image was written, 2 on an
error that stops the run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

__all__ = [
    "DEFAULT_BOX_SCORE_THRESHOLD",
    "DEFAULT_KEYPOINT_SCORE_THRESHOLD",
    "IMAGE_EXTENSIONS",
    "PredictError",
    "expand_images",
    "load_boxes",
    "main",
    "predict_poses",
    "predict_segmentation",
    "read_image",
    "restore_predictor",
    "run",
    "whole_image_box",
]

logger = logging.getLogger("psa_jax.predict")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "pose_synthetic_demo.py")
# Pictures show confident detections only; evaluation keeps every box (HRNet TEST.IMAGE_THRE 0.0).
DEFAULT_BOX_SCORE_THRESHOLD = 0.5
# Joints drawn from this score up (mmpose's demo default `kpt_thr`); the JSON keeps every joint.
DEFAULT_KEYPOINT_SCORE_THRESHOLD = 0.3
PREDICT_TASKS = ("pose", "seg")
PERSON_CATEGORY_ID = 1


class PredictError(ValueError):
    """Bad input to the prediction tool; the message names it and what to do."""


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def expand_images(paths: Sequence[str | os.PathLike]) -> list[pathlib.Path]:
    """IMAGES arguments -> image files: files as given, folders -> their image files by name.

    Raises PredictError naming the first path that does not exist, or a folder without images.
    """
    if not paths:
        raise PredictError("no images given: pass image files or folders after the options")
    out: list[pathlib.Path] = []
    for p in paths:
        path = pathlib.Path(p)
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise PredictError(f"folder {path} holds no image file ({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise PredictError(f"image not found: {path} (check the path; folders are expanded to their images)")
    return out


def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """uint8 `(H, W, 3)` BGR pixels as stored (EXIF rotation ignored), or None if unreadable."""
    try:
        data = np.fromfile(os.fspath(path), np.uint8)
    except OSError:
        return None
    if not data.size:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)


def _numeric_stem(stem: str) -> int | None:
    return int(stem) if stem.isdigit() else None


def load_boxes(path: str | os.PathLike, images: Sequence[pathlib.Path], *,
               score_threshold: float = DEFAULT_BOX_SCORE_THRESHOLD) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Person boxes of each image from a COCO-format json (matching rule in the module docstring).

    Returns:
      `{index into images: (boxes (N, 4) float64 [x, y, w, h], scores (N,) float64)}` for every
      image (N may be 0), boxes in file order.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise PredictError(f"boxes file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PredictError(f"boxes file {path} is not valid JSON: {err}") from None
    id_to_name: dict[Any, str] = {}
    if isinstance(data, Mapping):
        if "annotations" not in data:
            raise PredictError(f"boxes file {path}: a dict needs an 'annotations' list (COCO format); "
                               "or give a list of detections [{image_id, bbox, score}, ...]")
        for im in data.get("images", []):
            if "id" in im and "file_name" in im:
                id_to_name[im["id"]] = os.path.basename(str(im["file_name"]))
        entries = data["annotations"]
    else:
        entries = data
    if not isinstance(entries, list):
        raise PredictError(f"boxes file {path}: expected a list of detections, got {type(entries).__name__}")

    by_name: dict[str, list[int]] = {}
    for i, image in enumerate(images):
        by_name.setdefault(image.name, []).append(i)
    by_id: dict[Any, list[int]] = {}
    for i, image in enumerate(images):
        number = _numeric_stem(image.stem)
        if number is not None:
            by_id.setdefault(number, []).append(i)
        by_id.setdefault(image.stem, []).append(i)

    boxes: dict[int, tuple[list, list]] = {i: ([], []) for i in range(len(images))}
    dropped = {"category": 0, "score": 0, "empty_box": 0}
    for n, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "bbox" not in entry or not ("image_id" in entry or "file_name" in entry):
            raise PredictError(f"boxes file {path}, entry {n}: needs 'bbox' [x, y, w, h] and 'image_id' or "
                               f"'file_name', got {entry!r}")
        try:
            box = np.asarray(entry["bbox"], np.float64).reshape(4)
            score = float(entry.get("score", 1.0))
        except (TypeError, ValueError):
            raise PredictError(f"boxes file {path}, entry {n}: 'bbox' must be 4 numbers [x, y, w, h] and "
                               f"'score' a number, got {entry!r}") from None
        if int(entry.get("category_id", PERSON_CATEGORY_ID)) != PERSON_CATEGORY_ID:
            dropped["category"] += 1
            continue
        if score < score_threshold:
            dropped["score"] += 1
            continue
        if not (np.all(np.isfinite(box)) and box[2] > 0 and box[3] > 0):
            dropped["empty_box"] += 1
            continue
        targets: set[int] = set()
        if "file_name" in entry:
            name = os.path.basename(str(entry["file_name"]))
            targets.update(by_name.get(name, []))
        if "image_id" in entry:
            image_id = entry["image_id"]
            if image_id in id_to_name:
                targets.update(by_name.get(id_to_name[image_id], []))
            else:
                targets.update(by_id.get(image_id, []))
                targets.update(by_id.get(str(image_id), []))
        for i in targets:
            boxes[i][0].append(box)
            boxes[i][1].append(score)
    logger.info("boxes from %s: %d entries; left out: %d other categories, %d below score %.2f, %d empty boxes",
                path, len(entries), dropped["category"], dropped["score"], score_threshold, dropped["empty_box"])
    return {i: (np.asarray(b, np.float64).reshape(-1, 4), np.asarray(s, np.float64)) for i, (b, s) in boxes.items()}


def whole_image_box(width: int, height: int) -> np.ndarray:
    """The box of a whole image, `[0, 0, W - 1, H - 1]` (pixel centres; HRNet's `clean_box` of it)."""
    from psa_jax.data.pose_transforms import clean_box
    return clean_box([0.0, 0.0, float(width), float(height)], width, height)


# ----------------------------------------------------------------------------------------------
# Pose
# ----------------------------------------------------------------------------------------------
def _predict_padded(predict_fn: Callable[[np.ndarray], np.ndarray], crops: np.ndarray, batch_size: int) -> np.ndarray:
    """`predict_fn` on `crops` padded (repeating the last crop) to the next power of two, at most
    `batch_size`, so that images with different person counts reuse a few compiled programs."""
    n = len(crops)
    size = min(max(1, int(batch_size)), 1 << max(0, (n - 1).bit_length()))
    size = max(size, n)
    padded = np.concatenate([crops, np.repeat(crops[-1:], size - n, axis=0)]) if size > n else crops
    return np.asarray(predict_fn(padded), np.float32)[:n]


def predict_poses(predict_fn: Callable[[np.ndarray], np.ndarray], image_bgr: np.ndarray, boxes: np.ndarray,
                  box_scores: np.ndarray, codec, *, flip_test: bool, batch_size: int = 32,
                  oks_nms_threshold: float | None = None, num_keypoints: int = 17) -> dict[str, np.ndarray]:
    """Top-down keypoints of the persons in `boxes`, in image pixels (the evaluation's path).

    Crops each box with `pose_pipeline.EvalTransform` (centre/scale with 1.25 padding, the
    codec's warp, ImageNet normalisation), runs `predict_fn` (and, with `flip_test`, on the
    mirrored crops, averaged with `flip_averaging.average_with_flipped` in the codec's layout and
    with its default shift), decodes with `keypoint_decoding.keypoints_from_heatmaps` and rescores
    (`coco_eval.rescore`); then OKS-NMS over the image's poses when `oks_nms_threshold` is set.
    Crops go through the network `batch_size` at a time, each call padded to a power of two.

    Args:
      predict_fn: `(B, H, W, 3)` float32 normalised RGB crops -> `(B, h, w, K)` heatmaps (`3K`
        classification and offset maps for the codec 'udp_combined').
      image_bgr: uint8 `(H, W, 3)`; boxes: `(N, 4)` `[x, y, w, h]`; box_scores: `(N,)`.
      codec: the config's `PoseCodec`; num_keypoints: K of the empty result when there is no box.

    Returns:
      `{'keypoints': (M, K, 3) x, y, score, 'boxes': (M, 4), 'box_scores': (M,), 'scores': (M,)}`,
      highest person score first (M = N without OKS-NMS).
    """
    from psa_jax.data.pose_pipeline import EvalTransform
    from psa_jax.evaluation.coco_eval import KEYPOINT_SCORE_THRESHOLD, rescore
    from psa_jax.evaluation.flip_averaging import (
        average_with_flipped,
        default_shift_heatmap,
        flip_images,
    )
    from psa_jax.evaluation.keypoint_decoding import keypoints_from_heatmaps
    from psa_jax.evaluation.oks_nms import oks_nms

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    box_scores = np.asarray(box_scores, np.float64).reshape(-1)
    transform = EvalTransform(codec)
    keypoints, areas = [], []
    for start in range(0, len(boxes), max(1, int(batch_size))):
        items = [transform({"image": image_bgr, "box": box, "score": 1.0, "image_id": 0,
                            "joints": np.zeros((1, 3), np.float32)}) for box in boxes[start:start + batch_size]]
        crops = np.stack([it["image"] for it in items]).astype(np.float32)
        center = np.stack([it["center"] for it in items]).astype(np.float64)
        scale = np.stack([it["scale"] for it in items]).astype(np.float64)
        heatmaps = _predict_padded(predict_fn, crops, batch_size)
        if heatmaps.shape[:3] != (len(crops), *codec.heatmap_size):
            raise ValueError(f"the model returned heatmaps of shape {heatmaps.shape}; expected "
                             f"{(len(crops), *codec.heatmap_size, 'K')} for input {codec.input_size}: "
                             "does config.data.input_size match the checkpoint's training?")
        if flip_test:
            flipped = _predict_padded(predict_fn, flip_images(crops), batch_size)
            heatmaps = average_with_flipped(heatmaps, flipped, shift_heatmap=default_shift_heatmap(codec.name),
                                            codec=codec.name)
        keypoints.append(keypoints_from_heatmaps(heatmaps, center, scale, codec))
        areas.append(scale[:, 0] * scale[:, 1])
    if not keypoints:
        return {"keypoints": np.zeros((0, num_keypoints, 3)), "boxes": np.zeros((0, 4)), "box_scores": np.zeros(0),
                "scores": np.zeros(0)}
    kps = np.concatenate(keypoints)
    area = np.concatenate(areas)
    scores = rescore(kps[..., 2], box_scores, KEYPOINT_SCORE_THRESHOLD)
    if oks_nms_threshold is not None:
        order = oks_nms(kps, scores, area, oks_nms_threshold)
    else:
        order = np.argsort(-scores, kind="stable")
    return {"keypoints": kps[order], "boxes": boxes[order], "box_scores": box_scores[order], "scores": scores[order]}


# ----------------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------------
def predict_segmentation(predict_fn: Callable[[Any], Any], image_rgb: np.ndarray, *, mode: str = "whole",
                         scales: Sequence[float] = (), flip: bool = False,
                         window: Sequence[int] | None = None, stride: Sequence[int] | None = None) -> np.ndarray:
    """trainIds `(H, W)` int32 of one uint8 RGB image with a `seg_inference` mode.

    Args:
      predict_fn: `(B, h, w, 3)` normalised images -> logits `(B, h', w', C)` (for 'mscale' the
        network's merged multi-scale logits, as `SegTask.forward` returns them).
      mode, scales, flip, window, stride: as `config.eval` (empty/zero: the mode's default).
    """
    import jax.numpy as jnp

    from psa_jax.data.seg_transforms import normalize_image
    from psa_jax.evaluation import seg_inference as inf

    images = jnp.asarray(normalize_image(np.asarray(image_rgb, np.uint8))[None])
    window = tuple(int(v) for v in window) if window else None
    stride = tuple(int(v) for v in stride) if stride and any(stride) else None
    scales = tuple(float(s) for s in scales)
    if mode == "whole":
        scores = inf.whole_inference(predict_fn, images)
    elif mode == "slide":
        scores = inf.slide_inference(predict_fn, images, window=window or (512, 1024), stride=stride)
    elif mode == "multiscale":
        scores = inf.multiscale_inference(predict_fn, images, scales=scales or (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
                                          flip=flip, window=window or (1024, 2048), stride=stride)
    elif mode == "mscale":
        scores = inf.mscale_inference(lambda x, s: predict_fn(x), images, scales=scales or (0.5, 1.0, 2.0))
    else:
        raise PredictError(f"config.eval.mode={mode!r} is not one of 'whole', 'slide', 'multiscale', 'mscale'")
    return np.asarray(jnp.argmax(scores[0], axis=-1), np.int32)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
def _checkpoint_location(config, workdir: str | None, checkpoint: str | None) -> tuple[str, int | None]:
    """(orbax checkpoint directory, step named by a step directory or None)."""
    from etils import epath

    if checkpoint:
        path = epath.Path(checkpoint)
        if path.name.isdigit() and (path / "model").exists():
            return os.fspath(path.parent), int(path.name)
        if (path / "checkpoints").is_dir():
            return os.fspath(path / "checkpoints"), None
        return os.fspath(path), None
    configured = config.checkpoint.get("directory", "") if "checkpoint" in config else ""
    if configured:
        return configured, None
    if not workdir:
        raise PredictError("give --workdir (checkpoints in WORKDIR/checkpoints) or --checkpoint DIR")
    return os.path.join(workdir, "checkpoints"), None


def restore_predictor(config, *, workdir: str | None, checkpoint: str | None = None,
                      step: str | int | None = None) -> tuple[Callable[[np.ndarray], Any], dict[str, Any]]:
    """The config's network with restored weights as a host function `images -> outputs (NumPy)`.

    Restores with `psa_jax.training.evaluate.restore_predictor`, as eval.py does: `step` ('best'
    (default), 'latest' or a number) is found before anything is built, the network is built for
    this machine's mesh and restored onto it (the EMA weights when the config keeps them).

    Returns:
      (predict function (`train_step.host_predict_fn` of the task's eval-mode `forward`),
      `{'directory', 'step', 'meta'}`).
    """
    from etils import epath

    from psa_jax.tasks.registry import get_task
    from psa_jax.training.evaluate import restore_predictor

    directory, step_of_dir = _checkpoint_location(config, workdir, checkpoint)
    if step_of_dir is not None:
        if step not in (None, step_of_dir, str(step_of_dir)):
            raise PredictError(f"--checkpoint names step {step_of_dir} ({checkpoint}) but --step={step}: give one")
        step = step_of_dir
    step = "best" if step is None else step
    if not epath.Path(directory).is_dir():
        raise PredictError(f"no checkpoint directory {directory}: train one with `python train.py --config=CONFIG "
                           "--workdir=WORKDIR`, or convert a PyTorch checkpoint with `python -m psa_jax.tools.convert "
                           "SRC.pth WORKDIR --config=CONFIG`; or pass --checkpoint=DIR")
    task = get_task(config, workdir or directory)  # reads nothing, writes nothing
    predict, restored = restore_predictor(config, task, directory, step)
    written_task = (restored["meta"].get("config") or {}).get("task")
    if written_task and written_task != config.task:
        raise PredictError(f"checkpoint step {restored['step']} in {directory} was trained for task "
                           f"{written_task!r} but --config is a {config.task!r} config: pass the config it was "
                           "trained with")
    return predict, {"directory": directory, "step": int(restored["step"]), "meta": restored["meta"]}


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def _unique_stem(stem: str, used: set[str]) -> str:
    name, n = stem, 0
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def _write_png(path: pathlib.Path, image: np.ndarray) -> None:
    if not cv2.imwrite(os.fspath(path), image):
        raise PredictError(f"could not write {path}: check that the folder is writable")


def _class_names(num_classes: int) -> list[str]:
    from psa_jax.data.cityscapes import CLASS_NAMES
    return list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else [f"class_{i}" for i in range(num_classes)]


def run(config, images: Sequence[str | os.PathLike], *, out: str | os.PathLike, workdir: str | None = None,
        checkpoint: str | None = None, step: str | int | None = None, boxes: str | None = None,
        box_score_threshold: float = DEFAULT_BOX_SCORE_THRESHOLD,
        keypoint_score_threshold: float = DEFAULT_KEYPOINT_SCORE_THRESHOLD,
        oks_nms_threshold: float | None = None, config_path: str = "", progress: bool = True) -> dict[str, Any]:
    """Predicts on `images`, writes the pictures and OUT/predictions.json; returns that JSON's dict.

    Args:
      config: a loaded config (`config_schema.load_config`) whose `task` is 'pose' or 'seg'.
      images: image files or folders (see `expand_images`).
      out: output folder (created).
      workdir, checkpoint, step: where the weights are (see `restore_predictor`).
      boxes: pose: COCO-format person boxes json (None: the whole image is one person).
      box_score_threshold, keypoint_score_threshold: pose: boxes kept / joints drawn from these scores.
      oks_nms_threshold: pose: OKS-NMS threshold (None: no NMS).
    """
    from tqdm.auto import tqdm

    if config.task not in PREDICT_TASKS:
        raise PredictError(f"config.task={config.task!r}: predict draws {' and '.join(PREDICT_TASKS)} "
                           "predictions only; pass a pose or segmentation config")
    if boxes and config.task != "pose":
        raise PredictError(f"--boxes is for pose configs; this config's task is {config.task!r}")
    paths = expand_images(images)
    image_boxes = load_boxes(boxes, paths, score_threshold=box_score_threshold) if boxes else None
    predict, restored = restore_predictor(config, workdir=workdir, checkpoint=checkpoint, step=step)
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    if config.task == "pose":
        from psa_jax.data.pose_targets import PoseCodec
        from psa_jax.evaluation.pose_visualize import (
            default_line_width,
            draw_box,
            draw_pose,
        )

        data = config.data
        codec = PoseCodec(data.codec, tuple(data.input_size), data.sigma or None)
    else:
        from psa_jax.evaluation.seg_visualize import overlay
        class_names = _class_names(int(config.model.num_classes))

    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    used: set[str] = set()
    for i, path in enumerate(tqdm(paths, desc=f"predict ({config.task})", unit="image", disable=not progress)):
        image = read_image(path)
        if image is None:
            logger.warning("skipping %s: not a readable image", path)
            skipped.append({"file": os.fspath(path), "reason": "unreadable image"})
            continue
        h, w = image.shape[:2]
        stem = _unique_stem(path.stem, used)
        record: dict[str, Any] = {"file": os.fspath(path), "width": int(w), "height": int(h)}
        if config.task == "pose":
            if image_boxes is None:
                person_boxes, box_scores, whole = whole_image_box(w, h)[None], np.ones(1), True
            else:
                (person_boxes, box_scores), whole = image_boxes[i], False
                if not len(person_boxes):
                    logger.warning("%s: no person box in %s (above score %.2f)", path, boxes, box_score_threshold)
            poses = predict_poses(predict, image, person_boxes, box_scores, codec,
                                  flip_test=bool(config.eval.flip_test), batch_size=int(config.eval.batch_size),
                                  oks_nms_threshold=oks_nms_threshold,
                                  num_keypoints=int(config.model.num_keypoints))
            picture = draw_pose(image, poses["keypoints"], score_threshold=keypoint_score_threshold)
            if not whole:
                for box, score in zip(poses["boxes"], poses["scores"]):
                    draw_box(picture, box, thickness=max(1, default_line_width(h, w) // 2), label=f"{score:.2f}")
            record["output"] = os.fspath(out_dir / f"{stem}_pose.png")
            _write_png(pathlib.Path(record["output"]), picture)
            record["persons"] = [
                {"box": [float(v) for v in box], "box_score": float(bs), "score": float(s),
                 "keypoints": [[float(v) for v in kp] for kp in kps]}
                for box, bs, s, kps in zip(poses["boxes"], poses["box_scores"], poses["scores"], poses["keypoints"])]
        else:
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            ev = config.eval
            train_ids = predict_segmentation(predict, rgb, mode=ev.mode, scales=tuple(ev.scales), flip=bool(ev.flip),
                                             window=tuple(ev.window), stride=tuple(ev.stride))
            record["output"] = os.fspath(out_dir / f"{stem}_seg.png")
            _write_png(pathlib.Path(record["output"]), cv2.cvtColor(overlay(rgb, train_ids), cv2.COLOR_RGB2BGR))
            record["label_map"] = os.fspath(out_dir / f"{stem}_trainids.png")
            _write_png(pathlib.Path(record["label_map"]), train_ids.astype(np.uint8))
            counts = np.bincount(train_ids.ravel(), minlength=len(class_names))
            record["class_histogram"] = {class_names[c]: int(n) for c, n in enumerate(counts) if n}
        records.append(record)

    result = {"task": config.task, "config": config_path, "checkpoint": restored["directory"],
              "step": restored["step"], "images": records, "skipped": skipped}
    with open(out_dir / "predictions.json", "w") as f:
        json.dump(result, f, indent=1)
    return result


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _step(text: str) -> str | int:
    if text in ("best", "latest"):
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"--step must be 'best', 'latest' or a step number, got {text!r}")


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a score threshold lies in [0, 1], got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """(options, `KEY=VALUE` config overrides taken from `--config.KEY=VALUE` arguments)."""
    from psa_jax.evaluation.oks_nms import OKS_NMS_THRESHOLD

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise PredictError(f"config overrides are written --config.KEY=VALUE; got --config.{bad[0]}")
    rest = [a for a in argv if not a.startswith("--config.")]
    p = argparse.ArgumentParser(prog="python -m psa_jax.tools.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", metavar="IMAGES", help="image files or folders of images")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config the checkpoint was trained with "
                   "(default: the demo's configs/pose_synthetic_demo.py)")
    p.add_argument("--workdir", default=None, help="run directory holding checkpoints/ (train.py, tools.convert)")
    p.add_argument("--checkpoint", default=None,
                   help="an orbax checkpoint directory instead (or one step's directory, e.g. .../checkpoints/360)")
    p.add_argument("--step", type=_step, default=None, help="'best' (default), 'latest' or a step number")
    p.add_argument("--out", default=None, help="output folder (default: WORKDIR/predictions)")
    p.add_argument("--boxes", default=None, help="pose: COCO-format person boxes json (default: whole image)")
    p.add_argument("--box_score_threshold", type=_threshold, default=DEFAULT_BOX_SCORE_THRESHOLD,
                   help="pose: keep boxes scoring at least this")
    p.add_argument("--keypoint_score_threshold", type=_threshold, default=DEFAULT_KEYPOINT_SCORE_THRESHOLD,
                   help="pose: draw joints scoring at least this (the JSON keeps all)")
    p.add_argument("--oks_nms_threshold", type=_threshold, default=OKS_NMS_THRESHOLD,
                   help="pose: OKS-NMS threshold over an image's poses (as the evaluation)")
    p.add_argument("--no_oks_nms", action="store_true", help="pose: keep one pose per box")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p.parse_args(rest), overrides


def _load_config(path: str, overrides: Sequence[str]):
    """`config_schema.load_config(path, overrides)`, with a missing file, an unknown key (named with
    the closest valid ones, `preflight.check_overrides`) or a bad value as a PredictError."""
    from absl import flags

    from psa_jax.training.config_schema import load_config
    from psa_jax.training.preflight import ConfigKeyError, check_overrides

    if not os.path.isfile(path.split(":")[0]):
        raise PredictError(f"config file not found: {path}")
    try:
        check_overrides(load_config(path), overrides)
        return load_config(path, overrides)
    except ConfigKeyError as err:
        raise PredictError(str(err)) from None
    except flags.Error as err:
        raise PredictError(f"--config overrides {list(overrides)}: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 all written, 1 some images skipped, 2 error)."""
    from psa_jax.training.checkpointing import CheckpointError
    from psa_jax.training.preflight import LayoutError

    try:
        args, overrides = parse_args(argv)
        if not args.images:
            raise PredictError("no images given: pass image files or folders after the options")
        expand_images(args.images)  # name a missing image before anything slow starts
        config = _load_config(args.config, overrides)
        out = args.out or (os.path.join(args.workdir, "predictions") if args.workdir else None)
        if out is None:
            raise PredictError("give --out DIR (or --workdir, whose predictions/ folder is the default)")
        result = run(config, args.images, out=out, workdir=args.workdir, checkpoint=args.checkpoint, step=args.step,
                     boxes=args.boxes, box_score_threshold=args.box_score_threshold,
                     keypoint_score_threshold=args.keypoint_score_threshold,
                     oks_nms_threshold=None if args.no_oks_nms else args.oks_nms_threshold,
                     config_path=args.config, progress=not args.no_progress)
    except (PredictError, CheckpointError, LayoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n, skipped = len(result["images"]), result["skipped"]
    print(f"wrote {n} picture(s) and {os.path.join(out, 'predictions.json')} "
          f"(checkpoint step {result['step']} of {result['checkpoint']})")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s): " + ", ".join(s["file"] for s in skipped), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from psa_jax.runtime.entry_point import start_process

    start_process()
    sys.exit(main())
