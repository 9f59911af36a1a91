"""Top-down COCO pose data: person instances over the `coco_keypoints` records, and their transforms.

Layers (each usable alone):

1. `build_coco_keypoints` / `load_split_annotations`: build the tfds dataset from a COCO-layout
   manual dir; read every record of a split once *without decoding images* into flat NumPy
   arrays (`SplitAnnotations`), cached as `psa_jax_annotations_<split>.npz` next to the prepared
   data (in the tfds version folder), so later runs start immediately.
2. `gt_instances` / `det_instances`: the per-person instance tables. Ground-truth instances follow
   HRNet's selection (`pose_transforms.select_training_instances`: no crowd, area > 0, a box in
   the image, some labelled keypoint) with HRNet's clean boxes; detector instances are every
   person box of the detections json with score >= `det_score_threshold` (HRNet
   `TEST.IMAGE_THRE: 0.0`), raw boxes (HRNet does not clip them).
3. `PoseInstanceSource`: a random-access sequence over an instance table; item i decodes its
   image (OpenCV, BGR, EXIF orientation ignored as HRNet's `cv2.imread` flags) and returns the
   instance's box, joints and ids. This is the `source` of `psa_jax.data.pipeline`.
4. `TrainTransform` / `EvalTransform`: the per-instance sample transforms (HRNet's order:
   half-body -> scale/rotation -> flip -> warp -> targets), producing the batch fields below.
5. `make_train_data` / `make_eval_data`: one call each for the trainer and the evaluator.

Batch fields (per example; batches add a leading B):

=================  ==============  =====================================================
field              dtype, shape    meaning
=================  ==============  =====================================================
image              float32 H,W,3   RGB crop, (x / 255 - ImageNet mean) / std
target             float32 h,w,C   heatmaps (train only), h = H / 4; C = K, or 3K for codec
                                   'udp_combined' (classification, x offset, y offset per joint)
target_weight      float32 K       1 for a labelled joint whose Gaussian touches the map
                                   ('udp_combined': 1 for every labelled joint)
center, scale      float32 2       box centre and padded size in image pixels (eval)
area               float32         prod(scale), the OKS-NMS area (eval)
bbox_score         float32         detector score, 1 for ground-truth boxes (eval)
image_id           int64           COCO image id (eval)
joints             float32 K,3     ground-truth joints in crop pixels + visibility, for the
                                   ground-truth-heatmap check (eval; zeros for detections that
                                   match no annotated person)
valid              bool            False on padding (added by `pipeline.eval_dataset`)
=================  ==============  =====================================================

Only `image` needs to go to the accelerator; the rest is read on the host by the evaluator.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.proto import tf_example_pb2
from tqdm.auto import tqdm

from psa_jax.data.pose_targets import PoseCodec
from psa_jax.data.pose_transforms import (
    BOX_PADDING, COCO_FLIP_PAIRS, COCO_UPPER_BODY_IDS, affine_points, box_to_center_scale, flip_matrix,
    flip_permutation, fliplr_joints, half_body_center_scale, select_training_instances, warp_image,
)

cv2.setNumThreads(1)  # pipelines parallelise over examples; OpenCV's own threads only contend
logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DET_MATCH_IOU = 0.5  # detections -> annotated person for the ground-truth-heatmap check only
_CACHE_VERSION = 1

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "PoseAugmentConfig", "SplitAnnotations", "InstanceTable",
    "build_coco_keypoints", "load_builder", "load_split_annotations", "gt_instances", "det_instances",
    "coco_ground_truth", "PoseInstanceSource", "TrainTransform", "EvalTransform", "normalize_image",
    "normalize_on_device",
    "make_train_data", "make_eval_data", "PoseEvalData", "flip_joints_in_crop", "visualize_sample",
]


# ----------------------------------------------------------------------------------------------
# Building and reading the tfds dataset
# ----------------------------------------------------------------------------------------------
def build_coco_keypoints(manual_dir: str | os.PathLike, data_dir: str | os.PathLike, *, config: Any = "2017"):
    """Builds (or reuses) `coco_keypoints` from a COCO-layout `manual_dir` into `data_dir`.

    Args:
      manual_dir: folder with `annotations/person_keypoints_{train,val}2017.json` and images.
      data_dir: tfds data dir to write to.
      config: builder config name or a `CocoKeypointsConfig` (other COCO-format datasets).

    Returns:
      the prepared `CocoKeypoints` builder.
    """
    from psa_jax.data.coco_keypoints import CocoKeypoints  # registers the builder

    manual_dir = epath.Path(manual_dir)
    if not manual_dir.is_dir():
        raise FileNotFoundError(
            f"manual_dir {manual_dir} does not exist; it must hold COCO's layout "
            "(annotations/person_keypoints_val2017.json, val2017/*.jpg, ...)")
    builder = CocoKeypoints(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir), try_download_gcs=False))
    return builder


def load_builder(data_dir: str | os.PathLike, *, config: Any = "2017"):
    """The prepared `CocoKeypoints` builder in `data_dir` (error if it was not built)."""
    from psa_jax.data.coco_keypoints import CocoKeypoints

    builder = CocoKeypoints(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
    if not epath.Path(builder.data_dir).joinpath("dataset_info.json").exists():
        raise FileNotFoundError(
            f"coco_keypoints is not prepared in {data_dir} (looked in {builder.data_dir}); build it first "
            "with psa_jax.data.pose_pipeline.build_coco_keypoints(manual_dir, data_dir) or "
            "python -m psa_jax.tools.check_keypoints --manual_dir DIR --data_dir DATA_DIR")
    return builder


def _data_source(builder, split: str, raw: bool = False):
    """The split's data source: annotations decoded and image bytes kept, or raw serialized examples."""
    if split not in builder.info.splits:
        raise ValueError(
            f"split {split!r} of coco_keypoints was not built in {builder.data_dir} (built: "
            f"{sorted(builder.info.splits)}); its annotation file was missing from the manual dir at build time")
    if raw:
        return builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    return builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})


@dataclasses.dataclass
class SplitAnnotations:
    """Every record of a split without its image, as flat arrays (R records, P persons, D boxes).

    Persons of record r are `person_*[person_offsets[r]:person_offsets[r + 1]]`, detections
    likewise with `det_offsets`.
    """

    image_id: np.ndarray  # (R,) int64
    height: np.ndarray  # (R,) int32
    width: np.ndarray  # (R,) int32
    filename: np.ndarray  # (R,) str
    person_offsets: np.ndarray  # (R + 1,) int64
    person_id: np.ndarray  # (P,) int64
    person_bbox: np.ndarray  # (P, 4) float32
    person_keypoints: np.ndarray  # (P, K, 3) float32
    person_area: np.ndarray  # (P,) float64
    person_iscrowd: np.ndarray  # (P,) bool
    person_num_keypoints: np.ndarray  # (P,) int32
    det_offsets: np.ndarray  # (R + 1,) int64
    det_bbox: np.ndarray  # (D, 4) float32
    det_score: np.ndarray  # (D,) float32

    @property
    def num_records(self) -> int:
        return len(self.image_id)

    @property
    def num_keypoints(self) -> int:
        return self.person_keypoints.shape[1]


def _scan(source, num_keypoints: int, progress: bool, desc: str) -> SplitAnnotations:
    cols: dict[str, list] = {k: [] for k in ("image_id", "height", "width", "filename", "pid", "pbox", "pkp",
                                              "parea", "pcrowd", "pnum", "dbox", "dscore")}
    pcount, dcount = [0], [0]
    for r in tqdm(range(len(source)), desc=desc, disable=not progress, unit="records", mininterval=2.0):
        rec = source[r]
        p, d = rec["persons"], rec["detections"]
        cols["image_id"].append(int(rec["image/id"]))
        cols["height"].append(int(rec["image/height"]))
        cols["width"].append(int(rec["image/width"]))
        name = rec["image/filename"]
        cols["filename"].append(name.decode() if isinstance(name, bytes) else str(name))
        cols["pid"].append(np.asarray(p["id"], np.int64).reshape(-1))
        cols["pbox"].append(np.asarray(p["bbox"], np.float32).reshape(-1, 4))
        cols["pkp"].append(np.asarray(p["keypoints"], np.float32).reshape(-1, num_keypoints, 3))
        cols["parea"].append(np.asarray(p["area"], np.float64).reshape(-1))
        cols["pcrowd"].append(np.asarray(p["iscrowd"], bool).reshape(-1))
        cols["pnum"].append(np.asarray(p["num_keypoints"], np.int32).reshape(-1))
        cols["dbox"].append(np.asarray(d["bbox"], np.float32).reshape(-1, 4))
        cols["dscore"].append(np.asarray(d["score"], np.float32).reshape(-1))
        pcount.append(pcount[-1] + len(cols["pid"][-1]))
        dcount.append(dcount[-1] + len(cols["dscore"][-1]))
    cat = lambda key, shape, dtype: (np.concatenate(cols[key]) if cols[key]  # noqa: E731
                                     else np.zeros(shape, dtype))
    return SplitAnnotations(
        image_id=np.asarray(cols["image_id"], np.int64), height=np.asarray(cols["height"], np.int32),
        width=np.asarray(cols["width"], np.int32), filename=np.asarray(cols["filename"], dtype=str),
        person_offsets=np.asarray(pcount, np.int64), person_id=cat("pid", (0,), np.int64),
        person_bbox=cat("pbox", (0, 4), np.float32), person_keypoints=cat("pkp", (0, num_keypoints, 3), np.float32),
        person_area=cat("parea", (0,), np.float64), person_iscrowd=cat("pcrowd", (0,), bool),
        person_num_keypoints=cat("pnum", (0,), np.int32), det_offsets=np.asarray(dcount, np.int64),
        det_bbox=cat("dbox", (0, 4), np.float32), det_score=cat("dscore", (0,), np.float32))


def load_split_annotations(builder, split: str, *, cache: bool = True, progress: bool = True) -> SplitAnnotations:
    """All annotations of a split (images not decoded), from the cache next to the data if present.

    The cache file `psa_jax_annotations_<split>.npz` lives in `builder.data_dir`; it is keyed by
    the split's example count and rebuilt if that changes. An unwritable data dir just skips
    caching.
    """
    k = builder.builder_config.num_keypoints
    num_examples = builder.info.splits[split].num_examples if split in builder.info.splits else None
    path = epath.Path(builder.data_dir) / f"psa_jax_annotations_{split}.npz"
    if cache and path.exists():
        with np.load(os.fspath(path), allow_pickle=False) as z:
            if int(z["_version"]) == _CACHE_VERSION and int(z["_num_examples"]) == num_examples:
                return SplitAnnotations(**{f.name: z[f.name] for f in dataclasses.fields(SplitAnnotations)})
    source = _data_source(builder, split)
    ann = _scan(source, k, progress, f"indexing coco_keypoints/{split}")
    if cache:
        try:
            fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), suffix=".npz.tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, _version=_CACHE_VERSION, _num_examples=len(source), **dataclasses.asdict(ann))
            os.replace(tmp, os.fspath(path))
        except OSError as e:  # read-only data dir: fine, only slower next time
            logger.warning("could not cache the annotation index at %s (%s)", path, e)
    return ann


@dataclasses.dataclass
class InstanceTable:
    """One row per top-down person instance (N rows)."""

    record: np.ndarray  # (N,) int64, record index in the split
    image_id: np.ndarray  # (N,) int64
    box: np.ndarray  # (N, 4) float64 [x, y, w, h] (clean GT box or raw detector box)
    score: np.ndarray  # (N,) float32, 1 for ground truth
    joints: np.ndarray  # (N, K, 3) float32 image x, y, visibility (0 if unknown)

    def __len__(self) -> int:
        return len(self.record)


def gt_instances(ann: SplitAnnotations) -> tuple[InstanceTable, dict[str, int]]:
    """Ground-truth person instances with HRNet's selection and clean boxes (+ selection counts)."""
    from psa_jax.data.pose_transforms import InstanceCounts

    rows: dict[str, list] = {"record": [], "box": [], "person": []}
    counts = InstanceCounts()
    for r in range(ann.num_records):
        lo, hi = ann.person_offsets[r], ann.person_offsets[r + 1]
        if hi == lo:
            continue
        keep, boxes, c = select_training_instances(
            ann.person_bbox[lo:hi], ann.person_keypoints[lo:hi], ann.person_area[lo:hi],
            ann.person_iscrowd[lo:hi], int(ann.width[r]), int(ann.height[r]))
        counts += c
        rows["record"].extend([r] * len(keep))
        rows["box"].append(boxes)
        rows["person"].extend((lo + keep).tolist())
    person = np.asarray(rows["person"], np.int64)
    record = np.asarray(rows["record"], np.int64)
    table = InstanceTable(
        record=record, image_id=ann.image_id[record],
        box=np.concatenate(rows["box"]) if rows["box"] else np.zeros((0, 4)),
        score=np.ones(len(record), np.float32), joints=ann.person_keypoints[person].astype(np.float32))
    return table, dict(counts)


def _iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU `(N, M)` of `[x, y, w, h]` boxes."""
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def det_instances(ann: SplitAnnotations, score_threshold: float = 0.0,
                  match_iou: float = DET_MATCH_IOU) -> InstanceTable:
    """Detector-box instances (HRNet `_load_coco_person_detection_results`, `IMAGE_THRE` 0.0).

    `joints` of a detection are those of the annotated person it overlaps most (box IoU >=
    `match_iou`, persons selected as in `gt_instances`), else zeros: they are used only to
    render ground-truth heatmaps for data checks, never by a model.
    """
    rows: dict[str, list] = {"record": [], "box": [], "score": [], "joints": []}
    k = ann.num_keypoints
    for r in range(ann.num_records):
        lo, hi = ann.det_offsets[r], ann.det_offsets[r + 1]
        if hi == lo:
            continue
        boxes = ann.det_bbox[lo:hi].astype(np.float64)
        scores = ann.det_score[lo:hi]
        keep = scores >= score_threshold
        boxes, scores = boxes[keep], scores[keep]
        joints = np.zeros((len(boxes), k, 3), np.float32)
        plo, phi = ann.person_offsets[r], ann.person_offsets[r + 1]
        sel, gt_boxes, _ = select_training_instances(
            ann.person_bbox[plo:phi], ann.person_keypoints[plo:phi], ann.person_area[plo:phi],
            ann.person_iscrowd[plo:phi], int(ann.width[r]), int(ann.height[r]))
        if len(sel) and len(boxes):
            iou = _iou_xywh(boxes, ann.person_bbox[plo:phi][sel].astype(np.float64))
            best = iou.argmax(axis=1)
            matched = iou[np.arange(len(boxes)), best] >= match_iou
            joints[matched] = ann.person_keypoints[plo + sel[best[matched]]]
        rows["record"].extend([r] * len(boxes))
        rows["box"].append(boxes)
        rows["score"].append(scores)
        rows["joints"].append(joints)
    record = np.asarray(rows["record"], np.int64)
    if not len(record):
        raise ValueError("no detector boxes in this split (above the score threshold "
                         f"{score_threshold}); was a person detections json in the manual dir at build time?")
    return InstanceTable(record=record, image_id=ann.image_id[record], box=np.concatenate(rows["box"]),
                         score=np.concatenate(rows["score"]).astype(np.float32),
                         joints=np.concatenate(rows["joints"]))


def coco_ground_truth(ann: SplitAnnotations) -> dict[str, Any]:
    """The split's annotations as a COCO-format dict for pycocotools (every image and person)."""
    from psa_jax.data.coco_keypoints import coco_person_category

    images = [{"id": int(i), "width": int(w), "height": int(h), "file_name": str(f)}
              for i, w, h, f in zip(ann.image_id, ann.width, ann.height, ann.filename)]
    annotations = []
    for r in range(ann.num_records):
        for p in range(ann.person_offsets[r], ann.person_offsets[r + 1]):
            annotations.append({
                "id": int(ann.person_id[p]), "image_id": int(ann.image_id[r]), "category_id": 1,
                "keypoints": [float(v) for v in ann.person_keypoints[p].reshape(-1)],
                "num_keypoints": int(ann.person_num_keypoints[p]), "area": float(ann.person_area[p]),
                "iscrowd": int(ann.person_iscrowd[p]), "bbox": [float(v) for v in ann.person_bbox[p]],
            })
    return {"images": images, "annotations": annotations, "categories": [coco_person_category(ann.num_keypoints)]}


# ----------------------------------------------------------------------------------------------
# Random-access instance source
# ----------------------------------------------------------------------------------------------
class PoseInstanceSource(Sequence):
    """Random access to person instances; item i = its decoded image + box, joints, ids.

    Args:
      raw_source: the split's `tfds` data source with `DeserializeMethod.RAW_BYTES` (serialized
        examples); only the JPEG bytes are taken from a record (the annotations are already in
        `table`), which is much cheaper than tfds's full NumPy deserialisation.
      table: the instances.

    Item:
      `{'image': uint8 (H, W, 3) BGR, 'box': float64 (4,), 'score': float32, 'image_id': int64,
      'joints': float32 (K, 3), 'instance': int (i)}`.
    """

    def __init__(self, raw_source, table: InstanceTable):
        self._source = raw_source
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def image_bytes(self, record: int) -> bytes:
        """The stored (JPEG) bytes of record `record`."""
        example = tf_example_pb2.Example.FromString(self._source[int(record)])
        return example.features.feature["image"].bytes_list.value[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        t = self.table
        if not -len(t) <= i < len(t):
            raise IndexError(i)
        data = self.image_bytes(t.record[i])
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:  # the builder verified every image; this means the files changed since
            raise ValueError(f"image of record {int(t.record[i])} (COCO id {int(t.image_id[i])}) cannot be "
                             "decoded; rebuild the dataset")
        return {"image": image, "box": t.box[i], "score": t.score[i], "image_id": t.image_id[i],
                "joints": t.joints[i], "instance": int(i) % len(t)}


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------
def _normalize_lut_bgr(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """`(1, 256, 3)` float32 table: value v of BGR channel c -> (v / 255 - mean) / std of that colour."""
    values = np.arange(256, dtype=np.float64)[:, None] / 255.0
    rgb = (values - np.asarray(mean)) / np.asarray(std)
    return np.ascontiguousarray(rgb[:, ::-1], np.float32).reshape(1, 256, 3)


_IMAGENET_LUT_BGR = _normalize_lut_bgr(IMAGENET_MEAN, IMAGENET_STD)


def normalize_image(crop_bgr: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 BGR `(H, W, 3)` -> float32 RGB `(x / 255 - mean) / std` (HRNet `ToTensor` + `Normalize`).

    A 256-entry lookup table per channel (`cv2.LUT`) gives the same float32 values as the
    arithmetic several times faster. The result is a channel-reversed *view* (RGB order), so the
    colour swap costs nothing here; batching copies it into a contiguous array anyway.
    """
    if (tuple(mean), tuple(std)) == (IMAGENET_MEAN, IMAGENET_STD):
        lut = _IMAGENET_LUT_BGR
    else:
        lut = _normalize_lut_bgr(mean, std)
    return cv2.LUT(np.ascontiguousarray(crop_bgr), lut)[..., ::-1]


def rgb_uint8(crop_bgr: np.ndarray) -> np.ndarray:
    """uint8 BGR `(H, W, 3)` -> contiguous uint8 RGB with OpenCV's vectorised channel swap (a NumPy
    copy of the channel-reversed view copies element by element and is far slower)."""
    return cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)


def normalize_on_device(images: Any, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Any:
    """uint8 RGB `(B, H, W, 3)` -> float32 `(x / 255 - mean) / std`, as a jnp computation.

    For training batches of `TrainTransform(image_dtype='uint8')`: the host then skips the
    per-pixel normalisation and batches a quarter of the bytes (more samples per CPU-second; see
    benchmarks/pose_pipeline.py and benchmarks/NOTES.md), and the step normalises on device.
    Equals `normalize_image` of the BGR crop up to float rounding (1 ulp).
    """
    import jax.numpy as jnp
    x = jnp.asarray(images, jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


@dataclasses.dataclass(frozen=True)
class PoseAugmentConfig:
    """Training augmentation (HRNet `experiments/coco/hrnet/w32_256x192_adam_lr1e-3.yaml` DATASET).

    Attributes:
      half_body_prob: PROB_HALF_BODY (0.3), applied when more than `num_joints_half_body` (8)
        joints are labelled.
      scale_factor: SCALE_FACTOR, scale *= clip(N(1, sf), 1 - sf, 1 + sf).
      rotation_factor: ROT_FACTOR, rotation = clip(N(0, rf), -2 rf, 2 rf) degrees with
        probability `rotation_prob` (0.6), else 0.
      flip: FLIP, horizontal flip with probability `flip_prob` (0.5) and pair swap.
    """

    half_body_prob: float = 0.3
    num_joints_half_body: int = 8
    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_prob: float = 0.6
    flip: bool = True
    flip_prob: float = 0.5

    @classmethod
    def none(cls) -> "PoseAugmentConfig":
        """No augmentation at all (crop + targets only)."""
        return cls(half_body_prob=0.0, scale_factor=0.0, rotation_factor=0.0, rotation_prob=0.0, flip=False)


class TrainTransform:
    """(instance, rng) -> {'image', 'target', 'target_weight'} (HRNet `JointsDataset.__getitem__`).

    Order and random draws as the reference: half-body (`rand < p`, then `randn` for upper/lower),
    scale (`randn`), rotation (`rand <= 0.6`, then `randn`), flip (`rand <= 0.5`). The flip is
    folded into the warp matrix (sampling the mirrored image is identical to sampling the image
    at mirrored positions), which avoids copying the full image.
    """

    def __init__(self, codec: PoseCodec, augment: PoseAugmentConfig = PoseAugmentConfig(),
                 flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS,
                 upper_body_ids: Sequence[int] = COCO_UPPER_BODY_IDS, padding: float = BOX_PADDING,
                 image_dtype: str = "float32"):
        if image_dtype not in ("float32", "uint8"):
            raise ValueError(f"image_dtype={image_dtype!r} must be 'float32' (normalised) or 'uint8' "
                             "(RGB; normalise on device with `normalize_on_device`)")
        self.image_dtype = image_dtype
        self.codec = codec
        self.augment = augment
        self.flip_pairs = tuple(flip_pairs)
        self.upper_body_ids = tuple(upper_body_ids)
        self.padding = padding

    def sample_geometry(self, instance: dict[str, Any], image_width: int, rng: np.random.Generator):
        """Draws the augmentation: returns (center, scale, rotation, flipped, joints (K, 2), visible (K,)).

        Scalar arithmetic on purpose (this runs once per sample); `box_to_center_scale` and
        `half_body_center_scale` state the same rules for arrays.
        """
        a = self.augment
        raw = np.asarray(instance["joints"], np.float64)
        joints = raw[:, :2]
        visible = (raw[:, 2] > 0).astype(np.float64)  # HRNet: min(1, v)
        x, y, w, h = (float(v) for v in instance["box"])
        aspect = self.codec.aspect_ratio
        if w > aspect * h:
            h = w / aspect
        elif w < aspect * h:
            w = h * aspect
        center = np.array([x + float(instance["box"][2]) * 0.5, y + float(instance["box"][3]) * 0.5])
        scale = np.array([w * self.padding, h * self.padding])
        if visible.sum() > a.num_joints_half_body and rng.random() < a.half_body_prob:
            hb = half_body_center_scale(joints, visible, rng, aspect, self.upper_body_ids)
            if hb is not None:
                center, scale = hb
        sf, rf = a.scale_factor, a.rotation_factor
        scale = scale * min(max(rng.standard_normal() * sf + 1, 1 - sf), 1 + sf)
        rotation = min(max(rng.standard_normal() * rf, -2 * rf), 2 * rf) if rng.random() <= a.rotation_prob else 0.0
        flipped = bool(a.flip and rng.random() <= a.flip_prob)
        if flipped:
            joints, visible = fliplr_joints(joints, visible, image_width, self.flip_pairs)
            center = np.array([image_width - center[0] - 1.0, center[1]])
        return center, scale, float(rotation), flipped, joints, visible

    def __call__(self, instance: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = instance["image"]
        width = image.shape[1]
        center, scale, rotation, flipped, joints, visible = self.sample_geometry(instance, width, rng)
        m = self.codec.warp(center, scale, rotation)
        m_image = m
        if flipped:  # crop of the mirrored image == crop of the image through (warp o flip)
            f = flip_matrix(width)
            m_image = np.concatenate([m[:, :2] @ f[:, :2], (m[:, :2] @ f[:, 2] + m[:, 2])[:, None]], axis=1)
        crop = warp_image(image, m_image, self.codec.input_wh)
        joints_in = np.where(visible[:, None] > 0, affine_points(joints, m), joints)
        target, weight = self.codec.encode(joints_in, visible)
        return {"image": self.output_image(crop), "target": target, "target_weight": weight}

    def output_image(self, crop_bgr: np.ndarray) -> np.ndarray:
        """The warped uint8 BGR crop as the sample's image: normalised float32 RGB, or uint8 RGB."""
        return normalize_image(crop_bgr) if self.image_dtype == "float32" else rgb_uint8(crop_bgr)


class EvalTransform:
    """instance -> eval fields (no augmentation; HRNet validation `__getitem__` with r = 0)."""

    def __init__(self, codec: PoseCodec, padding: float = BOX_PADDING):
        self.codec = codec
        self.padding = padding

    def __call__(self, instance: dict[str, Any]) -> dict[str, np.ndarray]:
        center, scale = box_to_center_scale(instance["box"], self.codec.aspect_ratio, self.padding)
        m = self.codec.warp(center, scale, 0.0)
        crop = warp_image(instance["image"], m, self.codec.input_wh)
        joints = np.asarray(instance["joints"], np.float64)
        visible = (joints[:, 2] > 0).astype(np.float32)
        joints_in = np.zeros((len(joints), 3), np.float32)
        joints_in[:, :2] = affine_points(joints[:, :2], m) * visible[:, None]
        joints_in[:, 2] = visible
        return {
            "image": normalize_image(crop),
            "center": center.astype(np.float32), "scale": scale.astype(np.float32),
            "area": np.float32(scale[0] * scale[1]), "bbox_score": np.float32(instance["score"]),
            "image_id": np.int64(instance["image_id"]), "joints": joints_in,
        }


# ----------------------------------------------------------------------------------------------
# One-call constructors
# ----------------------------------------------------------------------------------------------
def make_train_data(
    data_dir: str | os.PathLike,
    *,
    split: str = "train",
    codec: str = "udp",
    input_size: Sequence[int] = (256, 192),
    sigma: float | None = None,
    augment: PoseAugmentConfig = PoseAugmentConfig(),
    config: Any = "2017",
    progress: bool = True,
    image_dtype: str = "float32",
) -> tuple[PoseInstanceSource, TrainTransform]:
    """(source, transform) for `psa_jax.data.pipeline.train_dataset` from a prepared data dir.

    Args:
      data_dir: tfds data dir holding the built `coco_keypoints` (see `build_coco_keypoints`).
      split: 'train' (or 'validation' for experiments).
      codec: 'msra', 'dark', 'udp' or 'udp_combined' (warp + targets; `pose_targets.CODECS`).
      input_size: `(H, W)`; sigma: default 2 at 256x192, 3 at 384x288 (unused by 'udp_combined').
      augment: augmentation settings (`PoseAugmentConfig.none()` to disable).
      image_dtype: 'float32' (normalised RGB) or 'uint8' (RGB; see `normalize_on_device`).
    """
    builder = load_builder(data_dir, config=config)
    ann = load_split_annotations(builder, split, progress=progress)
    table, counts = gt_instances(ann)
    logger.info("coco_keypoints/%s: %d training instances from %d images (%s)", split, len(table),
                ann.num_records, counts)
    if not len(table):
        raise ValueError(f"coco_keypoints/{split} has no usable person instance ({counts})")
    source = PoseInstanceSource(_data_source(builder, split, raw=True), table)
    return source, TrainTransform(PoseCodec(codec, input_size, sigma), augment, image_dtype=image_dtype)


@dataclasses.dataclass
class PoseEvalData:
    """Everything one evaluation needs: instances, their transform and the COCO ground truth."""

    source: PoseInstanceSource
    transform: EvalTransform
    codec: PoseCodec
    coco_gt: dict[str, Any]
    boxes: str
    split: str


def make_eval_data(
    data_dir: str | os.PathLike,
    *,
    split: str = "validation",
    boxes: str = "gt",
    codec: str = "udp",
    input_size: Sequence[int] = (256, 192),
    sigma: float | None = None,
    det_score_threshold: float = 0.0,
    config: Any = "2017",
    progress: bool = True,
) -> PoseEvalData:
    """Instances (ground-truth or detector boxes), eval transform and COCO ground truth of a split.

    Args:
      boxes: 'gt' (HRNet `USE_GT_BBOX: true`, its per-epoch validation) or 'det' (the detector
        boxes stored at build time; the published numbers).
      det_score_threshold: drop detector boxes below it (HRNet `TEST.IMAGE_THRE: 0.0`).
    """
    builder = load_builder(data_dir, config=config)
    ann = load_split_annotations(builder, split, progress=progress)
    if boxes == "gt":
        table, _ = gt_instances(ann)
        if not len(table):
            raise ValueError(f"coco_keypoints/{split} has no ground-truth person instance to evaluate")
    elif boxes == "det":
        table = det_instances(ann, det_score_threshold)
    else:
        raise ValueError(f"boxes must be 'gt' or 'det', got {boxes!r}")
    pose_codec = PoseCodec(codec, input_size, sigma)
    return PoseEvalData(source=PoseInstanceSource(_data_source(builder, split, raw=True), table),
                        transform=EvalTransform(pose_codec), codec=pose_codec,
                        coco_gt=coco_ground_truth(ann), boxes=boxes, split=split)


def flip_joints_in_crop(joints: np.ndarray, input_width: int,
                        flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS) -> np.ndarray:
    """`(..., K, 3)` crop joints of the mirrored crop: `x -> W - 1 - x`, pairs swapped, v kept."""
    j = np.asarray(joints, np.float32).copy()
    perm = flip_permutation(j.shape[-2], flip_pairs)
    j[..., 0] = np.where(j[..., 2] > 0, input_width - 1 - j[..., 0], 0.0)
    return j[..., perm, :]


def visualize_sample(example: dict[str, np.ndarray], mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """A picture of one training example: the crop, its summed target heatmaps as a colour overlay
    (upsampled to the crop) and a dot at each target peak. Returns uint8 BGR `(H, W, 3)` for
    `cv2.imwrite`; joints with target weight 0 get no dot.

    Args:
      example: `{'image': (H, W, 3) normalised RGB, 'target': (h, w, K), 'target_weight': (K,)}`;
        a `(h, w, 3K)` 'udp_combined' target is drawn by its classification disks (channels 0::3).
    """
    rgb = np.clip((np.asarray(example["image"]) * np.asarray(std) + np.asarray(mean)) * 255.0, 0, 255)
    crop = cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2BGR)
    h, w = crop.shape[:2]
    target = np.asarray(example["target"])
    num_joints = len(np.asarray(example["target_weight"]).reshape(-1))
    if target.shape[-1] == 3 * num_joints:  # combined maps: classification channels only
        target = target[..., 0::3]
    heat = cv2.resize(target.max(axis=-1), (w, h), interpolation=cv2.INTER_LINEAR)
    color = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = np.clip(heat, 0, 1)[..., None] * 0.6
    out = (crop * (1 - alpha) + color * alpha).astype(np.uint8)
    sy, sx = h / target.shape[0], w / target.shape[1]
    for k in range(target.shape[-1]):
        if example["target_weight"][k] <= 0:
            continue
        y, x = np.unravel_index(np.argmax(target[..., k]), target.shape[:2])
        cv2.circle(out, (int(round(x * sx)), int(round(y * sy))), 2, (255, 255, 255), -1, cv2.LINE_AA)
    return out
