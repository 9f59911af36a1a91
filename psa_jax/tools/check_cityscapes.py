"""Data-setup check for Cityscapes: build, scan, (cache), and evaluate labels as predictions.

    python -m psa_jax.tools.check_cityscapes --manual_dir DIR [--data_dir DIR] [--cache_dir DIR]

1. checks that DIR holds `leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip` (else says
   where they go and where to get them, and exits with status 2);
2. builds tfds's stock `cityscapes/semantic_segmentation` as array_record in --data_dir (once;
   needs TensorFlow; real data: about 11 GB extracted + 11 GB built);
3. decodes every train and validation record, prints per-class pixel frequencies (trainIds after
   the `LABEL_ID_TO_TRAIN_ID` mapping) and lists records that fail to decode;
4. with --cache_dir, writes the fast training cache (`cityscapes.build_training_cache`);
5. runs the validation labels as predictions through the evaluation (same batching, confusion
   matrix and cross-process sum as `evaluate_segmentation`); the last line is `mIoU=<value>` in
   percent, 100.00 when the data and the metric are wired correctly.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from psa_jax.data import cityscapes as cs


def _frequency_table(counts: np.ndarray) -> str:
    total = counts.sum()
    lines = [f"{'trainId':>7}  {'class':<14}{'pixels':>14}{'share %':>9}"]
    for c, name in enumerate(cs.CLASS_NAMES):
        lines.append(f"{c:>7}  {name:<14}{counts[c]:>14,}{100 * counts[c] / max(total, 1):>9.3f}")
    lines.append(f"{255:>7}  {'(ignore)':<14}{counts[-1]:>14,}{100 * counts[-1] / max(total, 1):>9.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m psa_jax.tools.check_cityscapes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manual_dir", required=True, help="folder with the two Cityscapes zips")
    parser.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"),
                        help="tfds data dir to build into (default ~/tensorflow_datasets)")
    parser.add_argument("--cache_dir", default=None, help="also write the training cache here")
    parser.add_argument("--cache_splits", default="train", help="comma-separated splits to cache")
    parser.add_argument("--image_format", default="jpeg", choices=cs.IMAGE_FORMATS, help="cache image encoding")
    parser.add_argument("--splits", default="train,validation", help="splits to scan")
    parser.add_argument("--batch_size", type=int, default=2, help="evaluation batch size")
    parser.add_argument("--overlay_dir", default=None, help="write label overlay PNGs of a few val images here")
    parser.add_argument("--num_threads", type=int, default=None, help="decoding threads (default: all cores)")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    progress = not args.no_progress

    try:
        cs.check_manual_dir(args.manual_dir)
        print(f"building/reading {cs.BUILDER_NAME} in {args.data_dir} ...", flush=True)
        cs.prepare_cityscapes(args.manual_dir, args.data_dir)
    except cs.CityscapesNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    corrupt_all: dict[str, list[str]] = {}
    for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
        records = cs.CityscapesRecords(cs.cityscapes_data_source(split, args.data_dir))
        counts, corrupt = cs.scan_records(records, num_threads=args.num_threads, progress=progress,
                                          desc=f"scan {split}")
        corrupt_all[split] = corrupt
        print(f"\n{split}: {len(records)} images, per-class pixel frequencies (trainIds):")
        print(_frequency_table(counts))
        if corrupt:
            print(f"{split}: {len(corrupt)} record(s) could not be decoded: {', '.join(corrupt)}")

    if args.cache_dir:
        for split in [s.strip() for s in args.cache_splits.split(",") if s.strip()]:
            records = cs.CityscapesRecords(cs.cityscapes_data_source(split, args.data_dir))
            summary = cs.build_training_cache(records, args.cache_dir, split, image_format=args.image_format,
                                              num_threads=args.num_threads, progress=progress)
            print(f"cache {split}: {summary.num_records} records ({summary.image_format}) -> {summary.path}"
                  + (f"; left out: {', '.join(summary.corrupt_ids)}" if summary.corrupt_ids else ""))

    # Labels as predictions through the evaluation path.
    import jax
    import jax.numpy as jnp

    from psa_jax.data.seg_pipeline import seg_eval_dataset
    from psa_jax.evaluation.seg_evaluator import accumulate_confusion
    from psa_jax.evaluation.seg_metrics import cross_process_sum, format_iou_table, segmentation_metrics

    val = cs.CityscapesRecords(cs.cityscapes_data_source("validation", args.data_dir))
    batches = seg_eval_dataset(val, batch_size=args.batch_size)
    n_batches = -(-(-(-len(val) // jax.process_count())) // args.batch_size)
    oracle = lambda batch: jax.nn.one_hot(jnp.asarray(batch["label"]), cs.NUM_CLASSES, dtype=jnp.uint8)  # noqa: E731

    on_batch, written = None, []
    if args.overlay_dir and jax.process_index() == 0:
        from psa_jax.evaluation.seg_visualize import save_overlay_png
        from psa_jax.data.seg_transforms import denormalize_image

        def on_batch(batch, preds):
            for i in np.flatnonzero(batch["valid"] & batch["decode_ok"]):
                if len(written) < 4:
                    written.append(save_overlay_png(os.path.join(args.overlay_dir, f"{batch['image_id'][i]}_labels.png"),
                                                    denormalize_image(batch["image"][i]), preds[i], batch["label"][i]))

    conf, counts = accumulate_confusion(batches, oracle, total=n_batches, progress=progress, on_batch=on_batch)
    conf = cross_process_sum(conf)
    metrics = segmentation_metrics(conf)
    print("\nvalidation labels evaluated as predictions:")
    print(format_iou_table(metrics, cs.CLASS_NAMES, conf))
    if written:
        print("label overlays: " + ", ".join(map(str, written)))
    n_corrupt = sum(len(v) for v in corrupt_all.values())
    if n_corrupt:
        print(f"WARNING: {n_corrupt} record(s) could not be decoded (listed above); they are used as "
              f"all-ignore examples and left out of the training cache")
    print(f"mIoU={100 * metrics.miou:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
