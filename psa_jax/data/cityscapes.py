"""Cityscapes semantic segmentation: label table, dataset preparation and record sources.

Three layers, from the user's zips to decoded training records:

1. **Stock tfds builder.** `prepare_cityscapes(manual_dir, data_dir)` builds tfds's own
   `cityscapes/semantic_segmentation` config (tensorflow_datasets
   `datasets/cityscapes/cityscapes_dataset_builder.py`) as `array_record` from
   `leftImg8bit_trainvaltest.zip` + `gtFine_trainvaltest.zip` (registration at
   https://www.cityscapes-dataset.com). The builder stores the original PNG bytes: `image_left`
   (1024x2048x3 RGB) and `segmentation_label` (1024x2048x1 **raw labelIds** 0..33). Building needs
   TensorFlow (the builder uses `tf.io.gfile`); reading does not.
2. **Label mapping.** Raw labelIds are mapped to the 19 training ids with the single table
   `LABEL_ID_TO_TRAIN_ID` (256 entries, everything that is not one of the 19 evaluated classes
   -> 255 = ignore), built from `CITYSCAPES_LABELS`, the official table of cityscapesScripts
   (`cityscapesscripts/helpers/labels.py`; the same table as NVIDIA/semantic-segmentation
   `datasets/cityscapes_labels.py` and HRNet-Semantic-Segmentation
   `lib/datasets/cityscapes.py::label_mapping`).
3. **Training cache.** Decoding a 1024x2048 PNG is slow enough that a few host cores cannot feed
   an accelerator from the stock records. `build_training_cache` decodes every stock record once
   and writes an uncompressed array_record cache with the label already mapped to trainIds (PNG,
   lossless) and the image re-encoded as
     'jpeg' (default): quality 95, 4:4:4 chroma; lossy at high quality, a fraction of the size
            of 'raw' and faster to decode than the stock PNGs;
     'raw': uncompressed pixels (H * W * 3 bytes), lossless, the cheapest to decode;
     'png': lossless, no faster than the stock files (for completeness).
   JPEG keeps disk and I/O small; choose 'raw' where CPU cores per accelerator are scarce.
   Evaluation reads the lossless stock PNGs. Sizes and rates of the three encodings
   (`benchmarks/seg_pipeline.py`) are recorded in benchmarks/NOTES.md; docs/data.md describes the
   data setup.

Records (what `CityscapesRecords[i]` and `CachedCityscapesRecords[i]` return) are dicts:
  'image_id': str, e.g. 'aachen_000000_000019'
  'image':    uint8 (H, W, 3) RGB
  'label':    uint8 (H, W) trainIds 0..18, 255 = ignore
  'decode_ok': bool; False when the stored image or label could not be decoded. Such a record
              carries a black image and an all-ignore label (so it adds nothing to a loss or a
              confusion matrix), and its id is logged; nothing crashes and nothing is lost
              silently. `scan_records` lists every such id.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import struct
import tempfile
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "CityscapesLabel", "CITYSCAPES_LABELS", "LABEL_ID_TO_TRAIN_ID", "NUM_CLASSES", "IGNORE_INDEX",
    "CLASS_NAMES", "PALETTE", "HRNET_CLASS_WEIGHTS", "BUILDER_NAME", "REQUIRED_ZIPS",
    "CITYSCAPES_DOWNLOAD_URL", "CityscapesNotFoundError", "check_manual_dir", "prepare_cityscapes",
    "cityscapes_data_source", "CityscapesRecords", "decode_example", "map_label_ids",
    "build_training_cache", "CachedCityscapesRecords", "CacheSummary", "IMAGE_FORMATS", "encode_cache_record",
    "decode_cache_record", "scan_records",
]

# ------------------------------------------------------------------------------------------------
# Label table
# ------------------------------------------------------------------------------------------------


class CityscapesLabel(NamedTuple):
    name: str
    id: int          # raw labelId as stored in *_gtFine_labelIds.png
    train_id: int    # 0..18, 255 = ignored in training and evaluation
    category: str
    color: tuple[int, int, int]  # RGB, as in *_gtFine_color.png


# cityscapesScripts `helpers/labels.py` (hasInstances / categoryId columns dropped). 'license plate'
# (id -1) never appears in labelIds PNGs (uint8) and is left out.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, "void", (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, "void", (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, "void", (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, "void", (0, 0, 0)),
    CityscapesLabel("static", 4, 255, "void", (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, "void", (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, "void", (81, 0, 81)),
    CityscapesLabel("road", 7, 0, "flat", (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, "flat", (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, "flat", (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, "flat", (230, 150, 140)),
    CityscapesLabel("building", 11, 2, "construction", (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, "construction", (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, "construction", (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, "construction", (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, "construction", (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, "construction", (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, "object", (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, "object", (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, "object", (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, "object", (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, "nature", (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, "nature", (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, "sky", (70, 130, 180)),
    CityscapesLabel("person", 24, 11, "human", (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, "human", (255, 0, 0)),
    CityscapesLabel("car", 26, 13, "vehicle", (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, "vehicle", (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, "vehicle", (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, "vehicle", (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, "vehicle", (0, 0, 110)),
    CityscapesLabel("train", 31, 16, "vehicle", (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, "vehicle", (119, 11, 32)),
)

NUM_CLASSES = 19
IGNORE_INDEX = 255


def _label_lookup() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for label in CITYSCAPES_LABELS:
        table[label.id] = label.train_id
    table.setflags(write=False)
    return table


LABEL_ID_TO_TRAIN_ID: np.ndarray = _label_lookup()
"""uint8 (256,): raw labelId -> trainId (0..18), every other value -> 255 (ignore).

trainIds 0..18 come from raw ids 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31,
32, 33; ids 0-6, 9, 10, 14-16, 18, 29, 30 and 34-255 map to 255."""

_TRAIN = sorted((l for l in CITYSCAPES_LABELS if l.train_id != IGNORE_INDEX), key=lambda l: l.train_id)
CLASS_NAMES: tuple[str, ...] = tuple(l.name for l in _TRAIN)
"""The 19 evaluated classes in trainId order."""
PALETTE: np.ndarray = np.array([l.color for l in _TRAIN], np.uint8)
"""uint8 (19, 3) RGB colour of each trainId (the official Cityscapes colours)."""
PALETTE.setflags(write=False)

HRNET_CLASS_WEIGHTS: tuple[float, ...] = (
    0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
    0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)
"""Per-trainId cross-entropy weights that HRNet-Semantic-Segmentation always applies
(`lib/datasets/cityscapes.py::class_weights`, passed unconditionally in `tools/train.py`)."""


def map_label_ids(label_ids: np.ndarray) -> np.ndarray:
    """Raw Cityscapes labelIds (any integer array, values 0..255) -> uint8 trainIds (255 = ignore)."""
    label_ids = np.asarray(label_ids)
    if label_ids.dtype != np.uint8:
        if label_ids.size and (label_ids.min() < 0 or label_ids.max() > 255):
            raise ValueError(f"raw labelIds must lie in [0, 255], got [{label_ids.min()}, {label_ids.max()}]")
        label_ids = label_ids.astype(np.uint8)
    return LABEL_ID_TO_TRAIN_ID[label_ids]


# ------------------------------------------------------------------------------------------------
# Stock tfds builder
# ------------------------------------------------------------------------------------------------

BUILDER_NAME = "cityscapes/semantic_segmentation"
REQUIRED_ZIPS = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")
CITYSCAPES_DOWNLOAD_URL = "https://www.cityscapes-dataset.com/downloads/"


class CityscapesNotFoundError(FileNotFoundError):
    """The Cityscapes zips (or the prepared dataset) are not where they were looked for."""


def check_manual_dir(manual_dir: str | os.PathLike) -> pathlib.Path:
    """Checks that `manual_dir` holds both zips the stock builder needs; returns it as a Path.

    Raises:
      CityscapesNotFoundError: naming each missing file, where it must go and where to get it.
    """
    manual_dir = pathlib.Path(manual_dir).expanduser()
    missing = [name for name in REQUIRED_ZIPS if not (manual_dir / name).is_file()]
    if missing:
        lines = "\n".join(f"  {manual_dir / name}" for name in missing)
        raise CityscapesNotFoundError(
            f"Cityscapes zip file(s) not found:\n{lines}\n"
            f"Cityscapes cannot be downloaded automatically: register (free, for research) at "
            f"https://www.cityscapes-dataset.com/register/, log in, download "
            f"'{REQUIRED_ZIPS[0]}' (11 GB, left 8-bit images) and '{REQUIRED_ZIPS[1]}' "
            f"(241 MB, fine annotations) from {CITYSCAPES_DOWNLOAD_URL}, and put both, unextracted, "
            f"in {manual_dir} (the --manual_dir).")
    return manual_dir


@contextlib.contextmanager
def _private_tempdir():
    """Points `tempfile` at a fresh private directory for the block, then deletes it.

    tfds's stock builders, created for a dataset not yet prepared, copy their info from tfds's
    GCS bucket into `tempfile.mkdtemp('tfds')`, read it there within the constructor, and leave
    that directory behind (empty when the bucket is out of reach), one per construction. Here it
    lands in the private directory: its `tmp*tfds` directories are deleted with their content;
    anything else found there (a temporary file another thread made meanwhile) is kept, with a
    warning.
    """
    private = tempfile.mkdtemp(prefix="psa_jax_tfds_")
    previous = tempfile.tempdir
    tempfile.tempdir = private
    try:
        yield private
    finally:
        tempfile.tempdir = previous
        for entry in os.scandir(private):
            if entry.is_dir() and entry.name.startswith("tmp") and entry.name.endswith("tfds"):
                shutil.rmtree(entry.path, ignore_errors=True)
        try:
            os.rmdir(private)
        except OSError:
            log.warning("kept %s: it holds %s", private, sorted(os.listdir(private)))


def _builder(data_dir: str | os.PathLike):
    import tensorflow_datasets as tfds  # heavy import, deferred

    with _private_tempdir():
        return tfds.builder(BUILDER_NAME, data_dir=os.fspath(data_dir),
                            file_format=tfds.core.FileFormat.ARRAY_RECORD)


def prepare_cityscapes(manual_dir: str | os.PathLike, data_dir: str | os.PathLike):
    """Builds tfds's stock `cityscapes/semantic_segmentation` as array_record (once) and returns the builder.

    Args:
      manual_dir: folder holding `leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip`.
      data_dir: tfds data dir to write to. The stock builder first extracts the zips under
        `data_dir/downloads/extracted` (about 11 GB for the real data), then writes about 11 GB of
        array_record files. Once the build succeeded, what it extracted is deleted (the zips stay
        in `manual_dir`), and `downloads/extracted` and `downloads` too when this build made them.

    Raises:
      CityscapesNotFoundError: a zip is missing (see `check_manual_dir`).
      ImportError: TensorFlow, needed by the stock builder to build (not to read), is missing.
    """
    builder = _builder(data_dir)
    if _is_prepared(builder):
        return builder
    manual_dir = check_manual_dir(manual_dir)
    try:
        import tensorflow  # noqa: F401  (the stock builder reads the zips with tf.io.gfile)
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "Building tfds's stock Cityscapes dataset needs TensorFlow (its builder uses "
            "tf.io.gfile); install it with `pip install tensorflow-cpu` or `pip install -e .[data]`. "
            "Reading the built dataset does not need TensorFlow.") from e
    import tensorflow_datasets as tfds

    extracted = pathlib.Path(data_dir) / "downloads" / "extracted"
    dirs = [extracted, extracted.parent]
    existed = [d.exists() for d in dirs]
    before = set(os.listdir(extracted)) if extracted.is_dir() else set()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir), try_download_gcs=False))
    for name in sorted(set(os.listdir(extracted)) - before) if extracted.is_dir() else ():
        shutil.rmtree(extracted / name, ignore_errors=True)  # this build's extraction of the zips
    for path, was_there in zip(dirs, existed, strict=True):
        if not was_there and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return builder


def _is_prepared(builder) -> bool:
    try:
        return bool(builder.info.splits) and all(
            pathlib.Path(f).exists() for f in builder.info.splits["train"].filepaths)
    except Exception:  # noqa: BLE001 - any failure here just means "not prepared"
        return False


def cityscapes_data_source(split: str, data_dir: str | os.PathLike):
    """`tfds.data_source` over the prepared stock dataset, images left as encoded PNG bytes.

    Args:
      split: 'train', 'validation' or 'test' (tfds slicing like 'train[:10]' works too).
      data_dir: the tfds data dir passed to `prepare_cityscapes`.
    """
    import tensorflow_datasets as tfds

    builder = _builder(data_dir)
    if not _is_prepared(builder):
        raise CityscapesNotFoundError(
            f"the Cityscapes dataset is not prepared in {data_dir}: run "
            f"`python -m psa_jax.tools.check_cityscapes --manual_dir <folder with the zips> "
            f"--data_dir {data_dir}` first")
    return tfds.data_source(
        BUILDER_NAME, split=split, data_dir=os.fspath(data_dir), download=False,
        decoders={"image_left": tfds.decode.SkipDecoding(),
                  "segmentation_label": tfds.decode.SkipDecoding()})


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------

_warned_ids: set[str] = set()
_warn_lock = threading.Lock()


def _report_corrupt(image_id: str, what: str) -> None:
    with _warn_lock:
        if image_id in _warned_ids:
            return
        _warned_ids.add(image_id)
    log.warning("Cityscapes record %s: %s could not be decoded; it is used as an all-ignore "
                "example (black image, label 255). Re-extract or re-download the zips if this "
                "persists.", image_id, what)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        return value.item() if value.dtype == object else value.tobytes()
    return bytes(value)


def _as_str(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_rgb(data: bytes) -> np.ndarray | None:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _decode_gray(data: bytes) -> np.ndarray | None:
    label = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if label is None:
        return None
    if label.ndim == 3:  # a 1-channel PNG is never returned as 3-D by OpenCV; be lenient anyway
        label = label[..., 0]
    return label if label.dtype == np.uint8 else None


def _placeholder(image: np.ndarray | None, label: np.ndarray | None,
                 default_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    hw = image.shape[:2] if image is not None else label.shape[:2] if label is not None else default_hw
    return np.zeros((*hw, 3), np.uint8), np.full(hw, IGNORE_INDEX, np.uint8)


def decode_example(example: dict[str, Any], *, default_hw: tuple[int, int] = (1024, 2048)) -> dict[str, Any]:
    """A stock-builder example (PNG bytes, raw labelIds) -> record (see module docstring).

    An undecodable or size-mismatched image/label gives `decode_ok=False`, a black image and an
    all-ignore label of the size of whichever part did decode (else `default_hw`), and a warning
    naming the image id.
    """
    image_id = _as_str(example["image_id"])
    image = _decode_rgb(_as_bytes(example["image_left"]))
    raw = _decode_gray(_as_bytes(example["segmentation_label"]))
    if image is None or raw is None or image.shape[:2] != raw.shape[:2]:
        what = ("image and label" if image is None and raw is None else "image" if image is None
                else "label" if raw is None else f"label {raw.shape} vs image {image.shape[:2]} size")
        _report_corrupt(image_id, what)
        image, label = _placeholder(image, raw, default_hw)
        return {"image_id": image_id, "image": image, "label": label, "decode_ok": False}
    return {"image_id": image_id, "image": image, "label": LABEL_ID_TO_TRAIN_ID[raw], "decode_ok": True}


class CityscapesRecords(Sequence):
    """Random-access decoded records over the stock tfds source (PNG images, raw labels mapped).

    Args:
      source: `cityscapes_data_source(split, data_dir)` (or any sequence of stock examples).
    """

    def __init__(self, source: Sequence[dict[str, Any]]):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode_example(self._source[index])

    def __repr__(self) -> str:
        return f"CityscapesRecords({self._source!r}, n={len(self)})"


# ------------------------------------------------------------------------------------------------
# Training cache (array_record, JPEG/PNG/raw images + PNG trainId labels)
# ------------------------------------------------------------------------------------------------

_MAGIC = b"PSACS1"
IMAGE_FORMATS = ("jpeg", "png", "raw")


def encode_cache_record(image_id: str, image: np.ndarray, label: np.ndarray, *,
                        image_format: str = "jpeg", jpeg_quality: int = 95) -> bytes:
    """Serialises one record for the training cache.

    Layout: magic `PSACS1`, then four length-prefixed (uint32 little-endian) fields: a JSON header
    (`image_id`, `image_format`, `shape`), the encoded image, the PNG-encoded uint8 trainId label.

    Args:
      image: uint8 (H, W, 3) RGB.
      label: uint8 (H, W) trainIds.
      image_format: 'jpeg' (quality `jpeg_quality`, 4:4:4 chroma), 'png' (lossless) or 'raw'
        (uncompressed bytes: fastest to read, 6 MB per 1024x2048 image).
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format={image_format!r}; choose one of {IMAGE_FORMATS}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if label.dtype != np.uint8 or label.shape != image.shape[:2]:
        raise ValueError(f"label must be uint8 {image.shape[:2]}, got {label.dtype} {label.shape}")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if image_format == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality),
                                             cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                             cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
        image_bytes = buf.tobytes()
    elif image_format == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        image_bytes = buf.tobytes()
    else:
        ok, image_bytes = True, np.ascontiguousarray(image).tobytes()
    ok_label, label_buf = cv2.imencode(".png", label, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not (ok and ok_label):
        raise RuntimeError(f"could not encode record {image_id}")
    header = json.dumps({"image_id": image_id, "image_format": image_format,
                         "shape": list(image.shape)}).encode()
    parts = [header, image_bytes, label_buf.tobytes()]
    return _MAGIC + b"".join(struct.pack("<I", len(p)) + p for p in parts)


def decode_cache_record(data: bytes) -> dict[str, Any]:
    """Inverse of `encode_cache_record` -> record dict (see module docstring)."""
    if not data.startswith(_MAGIC):
        raise ValueError("not a psa_jax Cityscapes cache record (bad magic); rebuild the cache")
    parts, pos = [], len(_MAGIC)
    for _ in range(3):
        (n,) = struct.unpack_from("<I", data, pos)
        parts.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    header = json.loads(parts[0])
    image_id, shape = header["image_id"], tuple(header["shape"])
    if header["image_format"] == "raw":
        image = np.frombuffer(parts[1], np.uint8).reshape(shape).copy()
    else:
        image = _decode_rgb(parts[1])
    label = _decode_gray(parts[2])
    if image is None or label is None or image.shape != shape or label.shape != shape[:2]:
        _report_corrupt(image_id, "cached image or label")
        image, label = _placeholder(None, None, shape[:2])
        return {"image_id": image_id, "image": image, "label": label, "decode_ok": False}
    return {"image_id": image_id, "image": image, "label": label, "decode_ok": True}


def _cache_paths(cache_dir: pathlib.Path, split: str) -> tuple[pathlib.Path, pathlib.Path]:
    return cache_dir / f"{split}.array_record", cache_dir / f"{split}.json"


@dataclasses.dataclass
class CacheSummary:
    split: str
    num_records: int
    corrupt_ids: list[str]
    image_format: str
    path: str


def build_training_cache(
    records: Sequence[dict[str, Any]],
    cache_dir: str | os.PathLike,
    split: str,
    *,
    image_format: str = "jpeg",
    jpeg_quality: int = 95,
    num_threads: int | None = None,
    progress: bool = True,
) -> CacheSummary:
    """Writes `records` (e.g. `CityscapesRecords(cityscapes_data_source('train', data_dir))`) as a cache.

    Records that fail to decode are left out and listed (warning + `corrupt_ids` in
    `<split>.json`), so a corrupt file costs one training image, not the run. Record order is
    the order of `records` (tfds's stable order). Writes `<cache_dir>/<split>.array_record` and
    `<cache_dir>/<split>.json` (count, format, skipped ids); re-running overwrites them.

    Args:
      image_format: see `encode_cache_record`; 'jpeg' is the default (see module docstring).
      num_threads: decoding/encoding threads (OpenCV releases the GIL); default: CPU count.
    """
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm import tqdm

    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_path, meta_path = _cache_paths(cache_dir, split)
    tmp_path = data_path.with_suffix(".array_record.tmp")
    num_threads = num_threads or os.cpu_count() or 1

    def work(i: int) -> tuple[str, bytes | None]:
        record = records[i]
        if not record["decode_ok"]:
            return record["image_id"], None
        return record["image_id"], encode_cache_record(
            record["image_id"], record["image"], record["label"],
            image_format=image_format, jpeg_quality=jpeg_quality)

    corrupt: list[str] = []
    count = 0
    # One record per group (random access) and no compression: JPEG/PNG bytes are compressed
    # already, and array_record's default codec would add a decompression pass to every read.
    writer = ArrayRecordWriter(os.fspath(tmp_path), "group_size:1,uncompressed")
    try:
        with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
            # map() keeps the input order; chunks bound the memory held by finished futures.
            chunk = 4 * num_threads
            bar = tqdm(total=len(records), desc=f"cache {split}", disable=not progress, unit="img")
            for start in range(0, len(records), chunk):
                for image_id, blob in pool.map(work, range(start, min(start + chunk, len(records)))):
                    if blob is None:
                        corrupt.append(image_id)
                    else:
                        writer.write(blob)
                        count += 1
                    bar.update(1)
            bar.close()
    finally:
        writer.close()
    os.replace(tmp_path, data_path)
    if corrupt:
        log.warning("cache %s: %d corrupt record(s) left out: %s", split, len(corrupt), ", ".join(corrupt))
    meta_path.write_text(json.dumps({"split": split, "num_records": count, "image_format": image_format,
                                     "jpeg_quality": jpeg_quality, "corrupt_ids": corrupt,
                                     "labels": "trainIds (LABEL_ID_TO_TRAIN_ID applied)"}, indent=1))
    return CacheSummary(split, count, corrupt, image_format, os.fspath(data_path))


class CachedCityscapesRecords(Sequence):
    """Random-access decoded records from a `build_training_cache` folder.

    Args:
      cache_dir: folder written by `build_training_cache`.
      split: 'train', 'validation', ...
    """

    def __init__(self, cache_dir: str | os.PathLike, split: str):
        import grain

        data_path, meta_path = _cache_paths(pathlib.Path(cache_dir), split)
        if not data_path.is_file() or not meta_path.is_file():
            raise CityscapesNotFoundError(
                f"no Cityscapes training cache for split '{split}' in {cache_dir} (expected "
                f"{data_path.name} and {meta_path.name}); build it with `python -m "
                f"psa_jax.tools.check_cityscapes --manual_dir ... --data_dir ... --cache_dir {cache_dir}`")
        self.meta = json.loads(meta_path.read_text())
        self._source = grain.sources.ArrayRecordDataSource([os.fspath(data_path)])
        if len(self._source) != self.meta["num_records"]:
            raise ValueError(f"{data_path} holds {len(self._source)} records but {meta_path.name} "
                             f"says {self.meta['num_records']}: the cache is incomplete, rebuild it")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode_cache_record(self._source[index])

    def __repr__(self) -> str:
        return f"CachedCityscapesRecords(n={len(self)}, format={self.meta['image_format']!r})"


def scan_records(records: Sequence[dict[str, Any]], *, num_classes: int = NUM_CLASSES,
                 num_threads: int | None = None, progress: bool = True,
                 desc: str = "scan") -> tuple[np.ndarray, list[str]]:
    """Decodes every record once: per-trainId pixel counts and the ids of undecodable records.

    Returns:
      counts: int64 (num_classes + 1,); the last entry counts ignore (255) pixels.
      corrupt_ids: image ids whose image or label failed to decode.
    """
    from tqdm import tqdm

    def work(i: int) -> tuple[str, np.ndarray | None]:
        record = records[i]
        if not record["decode_ok"]:
            return record["image_id"], None
        label = record["label"]
        hist = np.bincount(np.minimum(label.ravel(), num_classes), minlength=num_classes + 1)
        return record["image_id"], hist

    counts = np.zeros(num_classes + 1, np.int64)
    corrupt: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(num_threads or os.cpu_count() or 1) as pool:
        for image_id, hist in tqdm(pool.map(work, range(len(records))), total=len(records),
                                   desc=desc, disable=not progress, unit="img"):
            if hist is None:
                corrupt.append(image_id)
            else:
                counts += hist
    return counts, corrupt

