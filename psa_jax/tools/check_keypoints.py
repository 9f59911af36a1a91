"""Data-setup check for COCO-format person keypoints: build, encode ground truth, decode, evaluate.

    python -m psa_jax.tools.check_keypoints --manual_dir DIR [--data_dir OUT] [--split validation]
        [--codec udp|dark|msra] [--boxes gt|det] [--input 256x192] [--flip_test]
        [--results results.json] [--visualize PNG_DIR]

Builds the `coco_keypoints` tfds dataset from DIR (COCO layout, see
`psa_jax/data/coco_keypoints/coco_keypoints.py`), renders every ground-truth person as the
codec's training targets inside its eval crop (ground-truth or detector boxes), decodes them
back through the real decoder and inverse warp, runs rescoring, OKS-NMS and pycocotools, and
prints the pycocotools table. The last line is `AP=<value>`.

Expected: AP close to 1 (0.99+ for udp and dark on the 4-image sample; msra's integer targets
lose a little). A clearly lower value means the data does not match its annotations (wrong
image folder, rotated images, a different annotation file) or a broken install.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from psa_jax.data.pose_targets import CODECS


def _input_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input must look like 256x192 (height x width), got {text!r}") from None
    if h <= 0 or w <= 0 or h % 4 or w % 4:
        raise argparse.ArgumentTypeError(f"--input {text}: both sides must be positive multiples of 4")
    return h, w


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m psa_jax.tools.check_keypoints", description=__doc__.split("\n\n")[0])
    p.add_argument("--manual_dir", required=True, help="COCO-layout folder (annotations/, val2017/, ...)")
    p.add_argument("--data_dir", default=None,
                   help="where to build the tfds dataset (default: a temporary folder, deleted afterwards)")
    p.add_argument("--split", default="validation", choices=("train", "validation"))
    p.add_argument("--codec", default="udp", choices=CODECS)
    p.add_argument("--boxes", default="gt", choices=("gt", "det"))
    p.add_argument("--input", default=(256, 192), type=_input_size, help="model input HxW, e.g. 256x192")
    p.add_argument("--flip_test", action="store_true", help="also run the flip test on the rendered heatmaps")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--results", default=None, help="write the COCO results json here")
    p.add_argument("--visualize", default=None, metavar="DIR",
                   help="also write PNGs of augmented training crops with their target heatmaps to DIR")
    p.add_argument("--num_visualize", type=int, default=8)
    return p.parse_args(argv)


def write_visualizations(data_dir: str, out_dir: str, *, split: str, codec: str, input_size, count: int,
                         seed: int = 0) -> list[str]:
    """Writes `count` PNGs of augmented training samples (crop + target overlay) to `out_dir`."""
    import cv2
    import numpy as np
    from etils import epath

    from psa_jax.data.pose_pipeline import make_train_data, visualize_sample

    source, transform = make_train_data(data_dir, split=split, codec=codec, input_size=input_size, progress=False)
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        instance = source[i % len(source)]
        picture = visualize_sample(transform(instance, rng))
        path = out / f"pose_sample_{i:02d}_{codec}.png"
        if not cv2.imwrite(str(path), picture):
            raise OSError(f"could not write {path}")
        paths.append(str(path))
    return paths


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    from psa_jax.data.pose_pipeline import build_coco_keypoints, load_builder
    from psa_jax.evaluation.pose_evaluator import evaluate_ground_truth

    with tempfile.TemporaryDirectory(prefix="coco_keypoints_") as tmp:
        data_dir = args.data_dir or tmp
        builder = build_coco_keypoints(args.manual_dir, data_dir)
        report = load_builder(data_dir).info.metadata.get("build_report", {})
        if args.split in report:
            print(f"build report ({args.split}): {json.dumps(report[args.split], indent=1)}")
        print(f"dataset: {builder.data_dir}; split {args.split}, {args.boxes} boxes, codec {args.codec}, "
              f"input {args.input[0]}x{args.input[1]}, flip test {'on' if args.flip_test else 'off'}")
        stats = evaluate_ground_truth(
            data_dir, boxes=args.boxes, codec=args.codec, input_size=args.input, split=args.split,
            flip_test=args.flip_test, batch_size=args.batch_size, results_path=args.results, progress=True)
        if args.visualize:
            paths = write_visualizations(data_dir, args.visualize, split=args.split, codec=args.codec,
                                         input_size=args.input, count=args.num_visualize)
            print(f"wrote {len(paths)} training-sample pictures to {args.visualize}")
    print(f"instances: {stats['num_instances']}, results after OKS-NMS: {stats['num_results']}")
    print(f"AP={stats['AP']:.4f}")
    return stats["AP"]


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
