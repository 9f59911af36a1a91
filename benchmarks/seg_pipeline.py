"""Cityscapes input pipeline: stored encodings and training throughput (samples/s per CPU core).

    python benchmarks/seg_pipeline.py [--images 24] [--seconds 10] [--trials 3] [--quick] [--out r.json]

Data: `--images` 1024x2048 records with photo statistics (each is a random mosaic of crops of the
4 real COCO images in tests/data/coco_sample at native resolution, so PNG/JPEG sizes and decode
times are those of camera images, not of flat synthetic colours) and street-like labelIds from
`fake_scenes` at full size, zipped in the stock layout and built with tfds's stock
`cityscapes/semantic_segmentation` builder (array_record, PNG bytes as in the real dataset).
The training cache is then built from it in three encodings (`cityscapes.build_training_cache`).

Reported:
  * ``bytes_per_image``: stored image size per encoding (real Cityscapes PNGs: about 2.2 MB);
  * ``decode_ms``: CPU ms to read + decode one record (image and label) on one thread;
  * ``transform_ms``: CPU ms of the training transform alone, per recipe (hrnet_seg: 512x1024
    crop; nvidia: 1024x2048 crop, bicubic, colour jitter);
  * ``single_thread``: source + transform in a plain loop (samples/s = samples per core-second);
  * ``grain_all_cores``: `pipeline.train_dataset` with one reader thread per core (batch 8).
Each per wall second and per process CPU second (robust to other load on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]

import cv2  # noqa: E402
import grain  # noqa: E402
import numpy as np  # noqa: E402

from psa_jax.data import cityscapes as cs  # noqa: E402
from psa_jax.data import pipeline  # noqa: E402
from psa_jax.data.fake_cityscapes import fake_scene  # noqa: E402
from psa_jax.data.seg_pipeline import AUGMENT_PRESETS, SegTrainTransform  # noqa: E402

SAMPLE = REPO / "tests" / "data" / "coco_sample" / "val2017"


def photo_mosaic(rng: np.random.Generator, photos: list[np.ndarray], h: int = 1024, w: int = 2048) -> np.ndarray:
    """A BGR (h, w, 3) mosaic of random native-resolution crops of real photos."""
    out = np.zeros((h, w, 3), np.uint8)
    y = 0
    while y < h:
        x, row_h = 0, int(rng.integers(200, 330))
        while x < w:
            photo = photos[int(rng.integers(len(photos)))]
            ph, pw = photo.shape[:2]
            ch, cw = min(row_h, ph, h - y), min(int(rng.integers(250, 480)), pw, w - x)
            oy, ox = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
            tile = photo[oy:oy + ch, ox:ox + cw]
            out[y:y + ch, x:x + cw] = tile[:, ::-1] if rng.random() < 0.5 else tile
            x += cw
        y += row_h
    return out


def write_zips(manual: Path, n: int, seed: int = 0) -> None:
    photos = [cv2.imread(str(p)) for p in sorted(SAMPLE.glob("*.jpg"))]
    manual.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(manual / cs.REQUIRED_ZIPS[0], "w", zipfile.ZIP_STORED) as img_zip, \
            zipfile.ZipFile(manual / cs.REQUIRED_ZIPS[1], "w", zipfile.ZIP_STORED) as gt_zip:
        for split, count in (("train", n), ("val", 1), ("test", 1)):
            for i in range(count):
                rng = np.random.default_rng([seed, i, len(split)])
                image_id = f"bench_{i:06d}_000019"
                _, label_ids = fake_scene(rng, 1024, 2048)
                img_zip.writestr(f"leftImg8bit/{split}/bench/{image_id}_leftImg8bit.png",
                                 cv2.imencode(".png", photo_mosaic(rng, photos))[1].tobytes())
                gt_zip.writestr(f"gtFine/{split}/bench/{image_id}_gtFine_labelIds.png",
                                cv2.imencode(".png", label_ids)[1].tobytes())


def _cpu() -> float:
    return time.process_time()


def time_decode(records, count: int) -> float:
    records[0]
    c0 = _cpu()
    for i in range(count):
        records[i % len(records)]
    return (_cpu() - c0) / count * 1e3


def time_transform(records, transform, count: int) -> float:
    rng = np.random.default_rng(0)
    cached = [records[i] for i in range(min(4, len(records)))]
    transform(cached[0], rng)
    c0 = _cpu()
    for i in range(count):
        transform(cached[i % len(cached)], rng)
    return (_cpu() - c0) / count * 1e3


def time_single_thread(records, transform, seconds: float) -> dict:
    rng = np.random.default_rng(0)
    n, t0, c0 = 0, time.perf_counter(), _cpu()
    while time.perf_counter() - t0 < seconds:
        transform(records[n % len(records)], rng)
        n += 1
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"per_s": n / wall, "per_cpu_s": n / cpu}


def time_grain(records, transform, threads: int, batch: int, seconds: float) -> dict:
    ds = pipeline.train_dataset(records, transform, global_batch_size=batch, seed=0, process_index=0,
                                process_count=1,
                                read_options=grain.ReadOptions(num_threads=threads, prefetch_buffer_size=batch))
    it = iter(ds)
    next(it)
    n, t0, c0 = 0, time.perf_counter(), _cpu()
    while time.perf_counter() - t0 < seconds:
        n += len(next(it)["image"])
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"per_s": n / wall, "per_cpu_s": n / cpu}


def _median(runs: list[dict]) -> dict:
    return {"samples_per_s": round(statistics.median(r["per_s"] for r in runs), 2),
            "samples_per_cpu_s": round(statistics.median(r["per_cpu_s"] for r in runs), 2)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--seconds", type=float, default=10.0, help="per throughput measurement")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="8 images, 3 s measurements, 1 trial")
    p.add_argument("--out", default=None, help="write the result json here")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.seconds, args.trials = 8, 3.0, 1
    cv2.setNumThreads(1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    tmp = Path(tempfile.mkdtemp(prefix="seg_bench_"))
    try:
        write_zips(tmp / "manual", args.images)
        t0 = time.perf_counter()
        cs.prepare_cityscapes(tmp / "manual", tmp / "data")
        build_s = time.perf_counter() - t0
        stock = cs.CityscapesRecords(cs.cityscapes_data_source("train", tmp / "data"))
        sources = {"stock_png": stock}
        cache_s = {}
        for fmt in cs.IMAGE_FORMATS:
            t0 = time.perf_counter()
            cs.build_training_cache(stock, tmp / fmt, "train", image_format=fmt, num_threads=cores, progress=False)
            cache_s[fmt] = round(time.perf_counter() - t0, 2)
            sources[f"cache_{fmt}"] = cs.CachedCityscapesRecords(tmp / fmt, "train")

        reference = stock[0]["image"]
        sizes, psnr = {}, {}
        for fmt in cs.IMAGE_FORMATS:
            size = (tmp / fmt / "train.array_record").stat().st_size / len(sources[f"cache_{fmt}"])
            sizes[f"cache_{fmt}"] = round(size / 1e6, 3)
            err = np.mean((sources[f"cache_{fmt}"][0]["image"].astype(np.float64) - reference) ** 2)
            psnr[fmt] = "lossless" if err == 0 else round(10 * np.log10(255 ** 2 / err), 2)
        raw_ds = cs.cityscapes_data_source("train", tmp / "data")
        sizes["stock_png"] = round(np.mean([len(raw_ds[i]["image_left"]) for i in range(len(raw_ds))]) / 1e6, 3)

        transforms = {name: SegTrainTransform(cfg) for name, cfg in AUGMENT_PRESETS.items()}
        result = {
            "machine": {"cores": cores, "load_avg_1min": os.getloadavg()[0], "opencv_threads": 1},
            "data": {"images": args.images, "size": [1024, 2048], "stock_build_s": round(build_s, 2),
                     "cache_build_s": cache_s},
            "mb_per_record": sizes,
            "image_psnr_db_vs_png": psnr,
            "decode_ms": {name: round(time_decode(src, 3 * args.images), 2) for name, src in sources.items()},
            "transform_ms": {name: round(time_transform(stock, t, 20), 2) for name, t in transforms.items()},
            "throughput": {},
        }
        for src_name in ("stock_png", "cache_jpeg", "cache_raw"):
            for t_name, transform in transforms.items():
                single = [time_single_thread(sources[src_name], transform, args.seconds) for _ in range(args.trials)]
                grain_runs = [time_grain(sources[src_name], transform, cores, args.batch, args.seconds)
                              for _ in range(args.trials)]
                entry = {"single_thread": _median(single), "grain_all_cores": _median(grain_runs)}
                entry["grain_all_cores"]["samples_per_s_per_core"] = round(
                    entry["grain_all_cores"]["samples_per_s"] / cores, 2)
                result["throughput"][f"{src_name}/{t_name}"] = entry
        result["machine"]["load_avg_1min_after"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return result


if __name__ == "__main__":
    main()
