"""Throughput of the COCO top-down training pipeline (samples/s per CPU core).

    python benchmarks/pose_pipeline.py [--repeat 250] [--codec udp] [--input 256x192]
        [--batch 32] [--seconds 20] [--quick] [--out result.json]

Data: the 4 real COCO val2017 images of tests/data/coco_sample, repeated `--repeat` times as
distinct images (new ids and files, 3 persons/image on average) and built into `coco_keypoints`,
so that grain shuffles and tfds reads a realistically sized source (1,000 images, 3,000 person
instances by default) rather than 12 records.

Pipeline: `make_train_data` + `pipeline.train_dataset` exactly as training uses them: JPEG decode,
half-body, scale, rotation, flip, affine warp (UDP by default), normalisation, Gaussian targets
for 17 joints at 1/4 resolution, batching. Images leave the pipeline as uint8 RGB by default (what
train.py uses; the step normalises on device); `--image_dtype float32` measures host normalisation.

Reported (median of `--trials`):
  * ``single_thread``: the source + transform called in a plain loop on one thread, no grain:
    the per-core cost of a sample;
  * ``grain_1_thread``: the grain pipeline with one reader thread;
  * ``grain_all_cores``: the grain pipeline with one reader thread per core, total and per core.
  * ``plain_baseline``: the same grain pipeline (all cores) and source (JPEG decode included) with
    a plain transform in place of ours: box -> fixed crop (no augmentation), one
    `cv2.warpAffine`, a dense Gaussian per joint, uint8 image. It measures how fast the host is
    in this run, independently of our transforms: `vs_plain` = ours / plain in the same run
    (earlier rates of both are in benchmarks/NOTES.md).
Each is given per wall-clock second and per process CPU second (samples / CPU time): on a
shared or busy machine wall-clock rates drop with the load, the CPU-time rate does not.
A per-stage breakdown (ms per sample) shows where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]

import cv2  # noqa: E402
import grain  # noqa: E402
import numpy as np  # noqa: E402

from psa_jax.data import pipeline  # noqa: E402
from psa_jax.data.pose_pipeline import build_coco_keypoints, make_train_data, rgb_uint8  # noqa: E402
from psa_jax.data.pose_transforms import warp_image  # noqa: E402

SAMPLE = REPO / "tests" / "data" / "coco_sample"


def repeated_sample(out: Path, repeat: int) -> Path:
    """A COCO-layout copy of the sample with every image repeated `repeat` times (symlinks)."""
    gt = json.loads((SAMPLE / "annotations/person_keypoints_val2017.json").read_text())
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "val2017").mkdir(exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for r in range(repeat):
        for im in gt["images"]:
            new_id = r * 1_000_000 + im["id"]
            name = f"{new_id:012d}.jpg"
            link = out / "val2017" / name
            if not link.exists():
                link.symlink_to(SAMPLE / "val2017" / im["file_name"])
            images.append({**im, "id": new_id, "file_name": name})
            for a in gt["annotations"]:
                if a["image_id"] == im["id"]:
                    annotations.append({**a, "id": ann_id, "image_id": new_id})
                    ann_id += 1
    gt.update(images=images, annotations=annotations)
    (out / "annotations/person_keypoints_val2017.json").write_text(json.dumps(gt))
    return out


def _cpu() -> float:
    return time.process_time()


def time_single_thread(source, transform, seconds: float) -> dict:
    rng = np.random.default_rng(0)
    order = np.random.default_rng(1).permutation(len(source))
    n, t0, c0 = 0, time.perf_counter(), _cpu()
    while time.perf_counter() - t0 < seconds:
        transform(source[int(order[n % len(order)])], rng)
        n += 1
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"samples": n, "per_s": n / wall, "per_cpu_s": n / cpu}


def time_grain(source, transform, threads: int, batch: int, seconds: float) -> dict:
    ds = pipeline.train_dataset(source, transform, global_batch_size=batch, seed=0, process_index=0,
                                process_count=1,
                                read_options=grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * batch))
    it = iter(ds)
    for _ in range(2):  # start-up: threads, first reads
        next(it)
    n, t0, c0 = 0, time.perf_counter(), _cpu()
    while time.perf_counter() - t0 < seconds:
        n += len(next(it)["image"])
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"samples": n, "per_s": n / wall, "per_cpu_s": n / cpu, "threads": threads}


class PlainCropGaussian:
    """The plain baseline: fixed box crop + dense Gaussian heatmaps, no augmentation, uint8 image."""

    def __init__(self, input_hw=(256, 192), sigma: float = 2.0, padding: float = 1.25):
        self.h, self.w = input_hw
        self.sigma, self.padding = sigma, padding
        self.gx = np.arange(self.w // 4, dtype=np.float32)
        self.gy = np.arange(self.h // 4, dtype=np.float32)[:, None]

    def __call__(self, instance, rng):
        x, y, bw, bh = (float(v) for v in instance["box"])
        side = max(bw, bh * self.w / self.h) * self.padding
        s = self.w / side
        m = np.array([[s, 0, self.w / 2 - s * (x + bw / 2)], [0, s, self.h / 2 - s * (y + bh / 2)]])
        crop = cv2.warpAffine(instance["image"], m, (self.w, self.h), flags=cv2.INTER_LINEAR)
        joints = np.asarray(instance["joints"], np.float32)
        pts = (joints[:, :2] @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32)) / 4
        target = np.exp(-((self.gx[None, None] - pts[:, 0, None, None]) ** 2
                          + (self.gy[None] - pts[:, 1, None, None]) ** 2) / (2 * self.sigma ** 2))
        return {"image": rgb_uint8(crop), "target": target.transpose(1, 2, 0),
                "target_weight": (joints[:, 2] > 0).astype(np.float32)}


def stage_breakdown(source, transform, count: int = 200) -> dict:
    """ms per sample of each stage (single thread)."""
    rng = np.random.default_rng(0)
    t = {"read_bytes": 0.0, "decode": 0.0, "geometry": 0.0, "warp": 0.0, "targets": 0.0, "normalise": 0.0}
    codec = transform.codec
    for i in range(count):
        k = i % len(source)
        s = time.perf_counter()
        data = source.image_bytes(source.table.record[k])
        t["read_bytes"] += time.perf_counter() - s
        s = time.perf_counter()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        t["decode"] += time.perf_counter() - s
        inst = {"image": image, "box": source.table.box[k], "joints": source.table.joints[k]}
        s = time.perf_counter()
        c, sc, r, _, joints, vis = transform.sample_geometry(inst, image.shape[1], rng)
        m = codec.warp(c, sc, r)
        t["geometry"] += time.perf_counter() - s
        s = time.perf_counter()
        crop = warp_image(image, m, codec.input_wh)
        t["warp"] += time.perf_counter() - s
        s = time.perf_counter()
        codec.encode(joints, vis)
        t["targets"] += time.perf_counter() - s
        s = time.perf_counter()
        transform.output_image(crop)
        t["normalise"] += time.perf_counter() - s
    return {k: round(v / count * 1e3, 3) for k, v in t.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=250)
    p.add_argument("--codec", default="udp", choices=("msra", "dark", "udp"))
    p.add_argument("--image_dtype", default="uint8", choices=("uint8", "float32"),
                   help="training image dtype: uint8 (what train.py uses; normalised on device) or float32")
    p.add_argument("--input", default="256x192")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small data, 3 s measurements, 1 trial")
    p.add_argument("--data_dir", default=None, help="reuse/keep the built dataset here")
    p.add_argument("--out", default=None, help="write the result json here")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.seconds, args.trials = 25, 3.0, 1
    cv2.setNumThreads(1)
    h, w = (int(v) for v in args.input.split("x"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    tmp = tempfile.mkdtemp(prefix="pose_bench_")
    try:
        data_dir = Path(args.data_dir or tmp) / f"repeat{args.repeat}"
        manual = repeated_sample(Path(tmp) / "manual", args.repeat)
        t0 = time.perf_counter()
        build_coco_keypoints(manual, data_dir)
        build_s = time.perf_counter() - t0
        source, transform = make_train_data(data_dir, split="validation", codec=args.codec, input_size=(h, w),
                                            progress=False, image_dtype=args.image_dtype)
        result = {
            "machine": {"cores": cores, "load_avg_1min": os.getloadavg()[0]},
            "data": {"images": 4 * args.repeat, "instances": len(source), "build_s": round(build_s, 2)},
            "setting": {"codec": args.codec, "input": [h, w], "batch": args.batch, "image_dtype": args.image_dtype,
                        "augment": "half-body 0.3, scale 0.35, rotation 45 (p 0.6), flip 0.5"},
            "stage_ms": stage_breakdown(source, transform),
        }
        runs = {"single_thread": [], "grain_1_thread": [], "grain_all_cores": [], "plain_baseline": []}
        plain = PlainCropGaussian((h, w))
        for _ in range(args.trials):
            runs["single_thread"].append(time_single_thread(source, transform, args.seconds))
            runs["grain_1_thread"].append(time_grain(source, transform, 1, args.batch, args.seconds))
            runs["grain_all_cores"].append(time_grain(source, transform, cores, args.batch, args.seconds))
            runs["plain_baseline"].append(time_grain(source, plain, cores, args.batch, args.seconds))
        for name, rs in runs.items():
            result[name] = {
                "samples_per_s": round(statistics.median(r["per_s"] for r in rs), 1),
                "samples_per_cpu_s": round(statistics.median(r["per_cpu_s"] for r in rs), 1),
            }
        all_cores = result["grain_all_cores"]
        all_cores["samples_per_s_per_core"] = round(all_cores["samples_per_s"] / cores, 1)
        base = result["plain_baseline"]
        base["samples_per_s_per_core"] = round(base["samples_per_s"] / cores, 1)
        result["vs_plain"] = {k: round(all_cores[k] / base[k], 3) for k in ("samples_per_s", "samples_per_cpu_s")}
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
