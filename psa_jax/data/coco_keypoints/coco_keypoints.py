"""`coco_keypoints`: COCO person keypoints as a TensorFlow Datasets builder (array_record, no TF).

One example per image, with every person annotation of that image (crowd regions and persons
without labelled keypoints included, because COCO evaluation needs them) and, on the validation
split, the person detector's boxes for that image. Top-down training and evaluation select
person *instances* from these records later (`psa_jax.data.pose_pipeline`), with HRNet's rules
(`pose_transforms.select_training_instances`).

Manual directory (COCO's own layout; the paths of other COCO-format datasets are set through
`CocoKeypointsConfig`)::

    MANUAL_DIR/
      annotations/person_keypoints_train2017.json
      annotations/person_keypoints_val2017.json
      annotations/person_detections_val2017.json      (optional; or the HRNet file name
          person_detection_results/COCO_val2017_detections_AP_H_56_person.json)
      train2017/*.jpg
      val2017/*.jpg

A split whose annotation file is missing is not built (with a warning); the build fails only
when neither split can be built. Build::

    builder = CocoKeypoints(data_dir=DATA_DIR, file_format='array_record')
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=MANUAL_DIR, try_download_gcs=False))

or `psa_jax.data.pose_pipeline.build_coco_keypoints(manual_dir, data_dir)`, or
`python -m psa_jax.tools.check_keypoints --manual_dir DIR --data_dir DATA_DIR` (builds, then checks).
(The `tfds build` command-line tool needs apache_beam, which psa_jax does not install.) Splits
of more than 1 GiB (COCO train) need TensorFlow installed at build time (tfds's shuffler spills
through `tf.io.gfile`); reading never needs it. Every image is decoded once while building to
verify it, which adds minutes of CPU time for train2017. docs/data.md describes the setup.

Bad input, handled as HRNet does or reported (never a crash mid-build): each split's counts are
logged and stored in `builder.info.metadata['build_report'][split]`:

* unreadable/undecodable or missing image files: image skipped and counted (`corrupt_images`,
  `missing_images`); an image whose decoded size differs from the json: skipped (`size_mismatch`);
* malformed image entries or annotations (missing fields, wrong lengths, non-numbers): skipped
  and counted; annotations of other categories or of unknown images: counted;
* crowd annotations, zero-area boxes, keypoints outside the image and persons with no labelled
  keypoints are *stored* (they matter to COCO evaluation); the instance counts that training would
  use (`pose_transforms.InstanceCounts`, HRNet's rules) are reported at build time;
* train images with no person annotation at all are not written (`images_without_persons`); on
  validation every image is written, since detections on person-free images count in COCO AP.

Building leaves nothing else behind: no `tmp*tfds` directory in the system temporary directory
(tfds makes one for each unprepared builder to look its info up on its GCS bucket; this
dataset is never there, `_BuiltHereInfo`) and no empty `DATA_DIR/downloads/extracted` (tfds's
download manager makes it even when nothing is downloaded, `remove_new_empty_dirs`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from psa_jax.data.pose_transforms import COCO_KEYPOINT_NAMES, COCO_SKELETON, InstanceCounts, select_training_instances

logger = logging.getLogger(__name__)

_DETECTIONS_2017 = (
    "annotations/person_detections_val2017.json",
    "person_detection_results/COCO_val2017_detections_AP_H_56_person.json",
    "COCO_val2017_detections_AP_H_56_person.json",
)

_INSTRUCTIONS = """\
Put COCO 2017 person keypoints in the manual directory in COCO's own layout:
  annotations/person_keypoints_train2017.json and annotations/person_keypoints_val2017.json
    (from annotations_trainval2017.zip, https://cocodataset.org/#download)
  train2017/ and val2017/ with the images (train2017.zip, val2017.zip)
  optional, for top-down evaluation with detected boxes: the person detections json used by HRNet,
    annotations/person_detections_val2017.json (or
    person_detection_results/COCO_val2017_detections_AP_H_56_person.json, from the HRNet
    repository's data instructions)
A split whose annotation file is missing is skipped.
"""


def download_dirs(data_dir: str | os.PathLike) -> list[epath.Path]:
    """The directories tfds's download manager makes under a data dir: `downloads/extracted`,
    `downloads` (innermost first)."""
    root = epath.Path(data_dir) / "downloads"
    return [root / "extracted", root]


def remove_new_empty_dirs(dirs: Iterable[epath.Path], existed: Iterable[bool]) -> None:
    """Removes each of `dirs` (innermost first) that did not exist before (`existed`) and is empty
    now. A directory holding anything, or one that was there before, is kept."""
    for path, was_there in zip(dirs, existed, strict=True):
        if not was_there and path.is_dir() and not any(path.iterdir()):
            path.rmdir()


class _BuiltHereInfo(tfds.core.DatasetInfo):
    """DatasetInfo of a dataset that exists only where it is built: never looked up on tfds's GCS
    bucket. tfds's `initialize_from_bucket` (run when a builder of an unprepared dataset is
    created) makes `tempfile.mkdtemp('tfds')` before looking, and leaves it behind."""

    def initialize_from_bucket(self) -> None:
        return None


@dataclasses.dataclass
class CocoKeypointsConfig(tfds.core.BuilderConfig):
    """Where the files of a COCO-format person keypoint dataset lie inside the manual dir.

    Attributes:
      train_annotations, val_annotations: annotation json paths (relative to manual_dir).
      train_images, val_images: image folders (relative to manual_dir).
      detections: candidate paths of a person detections json for validation (first found).
      num_keypoints: keypoints per person (17 for COCO).
      person_category: name of the person category in the json.
    """

    train_annotations: str = "annotations/person_keypoints_train2017.json"
    val_annotations: str = "annotations/person_keypoints_val2017.json"
    train_images: str = "train2017"
    val_images: str = "val2017"
    detections: tuple[str, ...] = _DETECTIONS_2017
    num_keypoints: int = 17
    person_category: str = "person"


class CocoKeypoints(tfds.core.GeneratorBasedBuilder):
    """COCO person keypoints, one example per image; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: persons with keypoints, boxes and detector boxes."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    BUILDER_CONFIGS = [
        CocoKeypointsConfig(name="2017", description="COCO 2017 person keypoints (train2017, val2017)."),
    ]
    DEFAULT_CONFIG_NAME = "2017"

    def download_and_prepare(self, *args, **kwargs) -> None:
        """tfds's `download_and_prepare`, then removes the empty `downloads/extracted` (and
        `downloads`) it made under the data dir when they were not there before."""
        dirs = download_dirs(self.data_dir_root)
        existed = [d.exists() for d in dirs]
        try:
            super().download_and_prepare(*args, **kwargs)
        finally:
            remove_new_empty_dirs(dirs, existed)

    def _info(self) -> tfds.core.DatasetInfo:
        k = self.builder_config.num_keypoints
        metadata = self.get_metadata()  # what dataset_info_from_configs adds from the config files
        extra = {key: getattr(metadata, key) for key in ("description", "citation") if getattr(metadata, key)}
        return _BuiltHereInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "image/id": np.int64,
                "image/filename": tfds.features.Text(),
                "image/height": np.int32,
                "image/width": np.int32,
                "persons": {
                    "id": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                    "bbox": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                    "keypoints": tfds.features.Tensor(shape=(None, k, 3), dtype=np.float32),
                    "area": tfds.features.Tensor(shape=(None,), dtype=np.float32),  # Example floats are 32-bit
                    "iscrowd": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
                    "num_keypoints": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                },
                "detections": {
                    "bbox": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                    "score": tfds.features.Tensor(shape=(None,), dtype=np.float32),
                },
            }),
            metadata=tfds.core.MetadataDict(),
            homepage="https://cocodataset.org/#keypoints-2017",
            **({"description": __doc__.split("\n\n")[1] if __doc__ else None} | extra),
        )

    # ------------------------------------------------------------------------------------------
    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        try:
            manual_dir = epath.Path(dl_manager.manual_dir)
        except AssertionError as e:
            raise FileNotFoundError(
                f"coco_keypoints needs a manual directory with COCO's files, and {e}\n"
                f"Expected at least {cfg.val_annotations} or {cfg.train_annotations} inside it.") from None
        splits = {}
        for split, ann, images in (("train", cfg.train_annotations, cfg.train_images),
                                   ("validation", cfg.val_annotations, cfg.val_images)):
            ann_path = manual_dir / ann
            if not ann_path.exists():
                logger.warning("coco_keypoints: %s not found, the %s split is not built", ann_path, split)
                continue
            image_dir = manual_dir / images
            if not image_dir.is_dir():
                raise FileNotFoundError(
                    f"coco_keypoints: {ann_path} exists but the image folder {image_dir} does not; "
                    f"extract the {images} images there (COCO layout: {manual_dir}/{images}/*.jpg).")
            det_path = None
            if split == "validation":
                det_path = next((manual_dir / d for d in cfg.detections if (manual_dir / d).exists()), None)
                if det_path is None:
                    logger.warning("coco_keypoints: no person detections json in %s (looked for %s); "
                                   "top-down evaluation will only work with ground-truth boxes",
                                   manual_dir, ", ".join(cfg.detections))
            dataset = _load_annotation_file(ann_path)
            splits[split] = self._generate_examples(split, ann_path, dataset, image_dir, det_path)
        if not splits:
            raise FileNotFoundError(
                f"coco_keypoints: no annotation file found in the manual directory {manual_dir}: expected "
                f"{manual_dir / cfg.val_annotations} and/or {manual_dir / cfg.train_annotations}.\n"
                + _INSTRUCTIONS)
        return splits

    def _generate_examples(self, split: str, ann_path: epath.Path, dataset: dict[str, Any],
                           image_dir: epath.Path, det_path: epath.Path | None) -> Iterator[tuple[int, dict]]:
        cfg = self.builder_config
        k = cfg.num_keypoints
        report: Counter = Counter()
        images, persons_by_image, person_category_id = _parse_dataset(dataset, k, cfg.person_category,
                                                                      ann_path, report)
        detections = _load_detections(det_path, person_category_id, images, report) if det_path else {}
        instance_counts = InstanceCounts()
        for image_id in sorted(images):
            info = images[image_id]
            persons = persons_by_image.get(image_id, [])
            if split == "train" and not persons:
                report["images_without_persons"] += 1
                continue
            path = image_dir / info["file_name"]
            try:
                data = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                report["missing_images"] += 1
                logger.warning("coco_keypoints: image file %s is missing; skipped", path)
                continue
            except OSError as e:
                report["corrupt_images"] += 1
                logger.warning("coco_keypoints: cannot read %s (%s); skipped", path, e)
                continue
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            if decoded is None:
                report["corrupt_images"] += 1
                logger.warning("coco_keypoints: %s cannot be decoded as an image; skipped", path)
                continue
            if decoded.shape[:2] != (info["height"], info["width"]):
                report["size_mismatch"] += 1
                logger.warning("coco_keypoints: %s is %dx%d but %s says %dx%d; skipped", path,
                               decoded.shape[0], decoded.shape[1], ann_path.name, info["height"], info["width"])
                continue
            example = _example(image_id, info, persons, detections.get(image_id, []), k, data)
            p = example["persons"]
            _, _, counts = select_training_instances(p["bbox"], p["keypoints"], p["area"], p["iscrowd"],
                                                     info["width"], info["height"])
            instance_counts += counts
            report["images"] += 1
            report["persons"] += len(persons)
            report["detections"] += len(example["detections"]["score"])
            yield image_id, example
        summary = {"split": split, "annotations": str(ann_path), **dict(sorted(report.items())),
                   "instances": dict(instance_counts)}
        build_report = dict(self.info.metadata.get("build_report", {}))
        build_report[split] = summary
        self.info.metadata["build_report"] = build_report
        skipped = {key: report[key] for key in ("missing_images", "corrupt_images", "size_mismatch",
                                                 "malformed_images", "malformed_annotations") if report[key]}
        log = logger.warning if skipped else logger.info
        log("coco_keypoints %s: %d images written, skipped %s; person instances for top-down training: %s",
            split, report["images"], skipped or "nothing", dict(instance_counts))


# ----------------------------------------------------------------------------------------------
# Parsing (module-level so that it is testable without a build)
# ----------------------------------------------------------------------------------------------
def _load_annotation_file(path: epath.Path) -> dict[str, Any]:
    try:
        dataset = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"coco_keypoints: {path} is not valid JSON ({e}); re-download or re-extract it") from None
    if not isinstance(dataset, dict) or "images" not in dataset or "annotations" not in dataset:
        raise ValueError(f"coco_keypoints: {path} is not a COCO annotation file (needs 'images' and 'annotations')")
    return dataset


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_dataset(dataset: dict[str, Any], k: int, person_category: str, ann_path: epath.Path,
                   report: Counter) -> tuple[dict[int, dict], dict[int, list[dict]], int]:
    """Validated images `{id: {file_name, height, width}}` and persons grouped by image id."""
    person_ids = [c.get("id") for c in dataset.get("categories", []) if c.get("name") == person_category]
    category_id = int(person_ids[0]) if person_ids else 1
    images: dict[int, dict] = {}
    for im in dataset["images"]:
        try:
            image_id, name = int(im["id"]), str(im["file_name"])
            height, width = int(im["height"]), int(im["width"])
            if height <= 0 or width <= 0:
                raise ValueError("non-positive size")
        except (KeyError, TypeError, ValueError):
            report["malformed_images"] += 1
            continue
        images[image_id] = {"file_name": name, "height": height, "width": width}
    persons: dict[int, list[dict]] = defaultdict(list)
    for ann in dataset["annotations"]:
        if ann.get("category_id", category_id) != category_id:
            report["other_categories"] += 1
            continue
        person = _parse_person(ann, k)
        if person is None:
            report["malformed_annotations"] += 1
            logger.warning("coco_keypoints: malformed annotation %s in %s; skipped", ann.get("id"), ann_path.name)
            continue
        if person["image_id"] not in images:
            report["annotations_of_unknown_images"] += 1
            continue
        persons[person["image_id"]].append(person)
    return images, persons, category_id


def _parse_person(ann: dict[str, Any], k: int) -> dict[str, Any] | None:
    try:
        iscrowd = bool(ann.get("iscrowd", 0))
        bbox = [float(v) for v in ann["bbox"]]
        keypoints = ann.get("keypoints")
        if keypoints is None and iscrowd:
            keypoints = [0] * (3 * k)
        if keypoints is None or len(keypoints) != 3 * k or len(bbox) != 4:
            return None
        if not all(_is_number(v) for v in keypoints) or not all(math.isfinite(v) for v in bbox):
            return None
        kp = np.asarray(keypoints, np.float32).reshape(k, 3)
        area = float(ann["area"])
        num = ann.get("num_keypoints", int(np.sum(kp[:, 2] > 0)))
        return {"id": int(ann["id"]), "image_id": int(ann["image_id"]), "bbox": bbox, "keypoints": kp,
                "area": area, "iscrowd": iscrowd, "num_keypoints": int(num)}
    except (KeyError, TypeError, ValueError):
        return None


def _load_detections(path: epath.Path, category_id: int, images: dict[int, dict],
                     report: Counter) -> dict[int, list[tuple[list[float], float]]]:
    """Person detections `{image_id: [(box xywh, score)]}` from a COCO results-style json list."""
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"coco_keypoints: detections file {path} is not valid JSON ({e})") from None
    if not isinstance(entries, list):
        raise ValueError(f"coco_keypoints: detections file {path} must hold a json list of "
                         "{image_id, category_id, bbox, score}")
    out: dict[int, list] = defaultdict(list)
    for det in entries:
        try:
            if det.get("category_id", category_id) != category_id:
                report["detections_other_categories"] += 1
                continue
            box = [float(v) for v in det["bbox"]]
            score = float(det["score"])
            image_id = int(det["image_id"])
            if len(box) != 4 or not all(math.isfinite(v) for v in (*box, score)):
                raise ValueError
        except (KeyError, TypeError, ValueError, AttributeError):
            report["malformed_detections"] += 1
            continue
        if image_id not in images:
            report["detections_of_unknown_images"] += 1
            continue
        out[image_id].append((box, score))
    return out


def _example(image_id: int, info: dict, persons: list[dict], detections: list, k: int, data: bytes) -> dict:
    n = len(persons)
    return {
        "image": data,
        "image/id": image_id,
        "image/filename": info["file_name"],
        "image/height": info["height"],
        "image/width": info["width"],
        "persons": {
            "id": np.asarray([p["id"] for p in persons], np.int64).reshape(n),
            "bbox": np.asarray([p["bbox"] for p in persons], np.float32).reshape(n, 4),
            "keypoints": np.asarray([p["keypoints"] for p in persons], np.float32).reshape(n, k, 3),
            "area": np.asarray([p["area"] for p in persons], np.float32).reshape(n),
            "iscrowd": np.asarray([p["iscrowd"] for p in persons], np.bool_).reshape(n),
            "num_keypoints": np.asarray([p["num_keypoints"] for p in persons], np.int32).reshape(n),
        },
        "detections": {
            "bbox": np.asarray([d[0] for d in detections], np.float32).reshape(-1, 4),
            "score": np.asarray([d[1] for d in detections], np.float32).reshape(-1),
        },
    }


def coco_person_category(num_keypoints: int = 17) -> dict[str, Any]:
    """The COCO person category (keypoint names and skeleton for 17 keypoints)."""
    if num_keypoints == len(COCO_KEYPOINT_NAMES):
        return {"supercategory": "person", "id": 1, "name": "person", "keypoints": list(COCO_KEYPOINT_NAMES),
                "skeleton": [list(s) for s in COCO_SKELETON]}
    return {"supercategory": "person", "id": 1, "name": "person",
            "keypoints": [f"keypoint_{i}" for i in range(num_keypoints)], "skeleton": []}
