"""Writers used by training and evaluation accept a `gs://` workdir (checked against an offline fake bucket)."""

import collections
import json
import os

import cv2
import numpy as np
import pytest
from etils import epath
from fake_bucket import fake_bucket_fixture  # noqa: F401  (the fixture `fake_bucket`)

from psa_jax.data.fake_cityscapes import synthetic_records
from psa_jax.evaluation import coco_eval
from psa_jax.evaluation.seg_evaluator import evaluate_segmentation
from psa_jax.evaluation.seg_visualize import overlay_panel, save_overlay_png
from psa_jax.training import metrics_log as ml


def test_fake_bucket_maps_gs_paths_and_catches_builtin_file_functions(fake_bucket):
    p = epath.Path(fake_bucket.uri("a/b.txt"))
    assert os.fspath(p) == "gs://fake-bucket/a/b.txt"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("hello")
    assert fake_bucket.local("a/b.txt").read_text() == "hello"
    assert sorted(q.name for q in epath.Path(fake_bucket.uri("a")).iterdir()) == ["b.txt"]
    assert [os.fspath(q) for q in epath.Path(fake_bucket.uri("a")).glob("*.txt")] == ["gs://fake-bucket/a/b.txt"]
    p.replace(fake_bucket.uri("a/c.txt"))
    assert fake_bucket.files() == ["a/c.txt"]
    fake_bucket.assert_no_local_gs_dir()
    # The mistakes the fixture exists to catch: builtin open cannot see the bucket ...
    with pytest.raises(FileNotFoundError):
        open(fake_bucket.uri("a/c.txt"))  # noqa: SIM115
    # ... and os.makedirs on the string creates a local "gs:" folder, which is reported.
    os.makedirs(fake_bucket.uri("run"))
    with pytest.raises(AssertionError, match="builtin file functions"):
        fake_bucket.assert_no_local_gs_dir()
    os.removedirs(os.path.join("gs:", "fake-bucket", "run"))  # let the teardown check pass


def test_metrics_log_in_a_bucket_with_resume(fake_bucket):
    workdir = fake_bucket.uri("run")
    with ml.MetricsLog(workdir) as log:
        for step in range(1, 11):
            log.write("train", step, {"loss": 1.0 / step, "lr": 0.1})
        log.write("eval", 10, {"AP": 0.5})
    with ml.MetricsLog(workdir, resume_step=6) as log:
        for step in range(7, 11):
            log.write("train", step, {"loss": 2.0 / step, "lr": 0.1})
        log.write("eval", 10, {"AP": 0.6})
        assert log.plot(title="gs") == "gs://fake-bucket/run/curves.png"
    files = fake_bucket.files("run")
    assert files[:2] == ["curves.png", "metrics.jsonl"]
    assert len(files) == 4 and all(f.startswith("tensorboard/events.out.tfevents.") for f in files[2:])
    records = ml.read_metrics(workdir + "/metrics.jsonl")
    assert set(collections.Counter((r["kind"], r["step"]) for r in records).values()) == {1}
    assert len(records) == 11 and [r["AP"] for r in records if r["kind"] == "eval"] == [0.6]
    assert fake_bucket.local("run/curves.png").read_bytes()[:4] == b"\x89PNG"
    assert all(fake_bucket.local(f"run/{f}").stat().st_size > 0 for f in files)
    fake_bucket.assert_no_local_gs_dir()


def test_coco_results_json_written_and_read_from_a_bucket(fake_bucket, coco_sample_dir):
    gt_local = coco_sample_dir / "annotations" / "person_keypoints_val2017.json"
    gt_uri = fake_bucket.uri("data/person_keypoints_val2017.json")
    epath.Path(gt_uri).parent.mkdir(parents=True)
    epath.Path(gt_uri).write_text(gt_local.read_text())
    gt = json.loads(gt_local.read_text())
    # Ground-truth poses as predictions: AP 1 (all non-crowd annotated people found exactly).
    anns = [a for a in gt["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
    results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0} for a in anns]
    out = coco_eval.write_results_json(results, fake_bucket.uri("run/results/keypoints_gt_step5.json"))
    assert os.fspath(out) == "gs://fake-bucket/run/results/keypoints_gt_step5.json"
    assert json.loads(fake_bucket.local("run/results/keypoints_gt_step5.json").read_text()) == results
    stats = coco_eval.coco_keypoint_eval(gt_uri, os.fspath(out), print_summary=False)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    assert len(coco_eval.load_coco(gt_uri).getAnnIds()) == len(gt["annotations"])
    with pytest.raises(FileNotFoundError, match="COCO annotation file not found"):
        coco_eval.load_coco(fake_bucket.uri("data/missing.json"))
    fake_bucket.assert_no_local_gs_dir()


def test_segmentation_overlays_in_a_bucket(fake_bucket):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    pred, label = rng.integers(0, 19, (8, 12)), rng.integers(0, 19, (8, 12))
    label[0, :4] = 255
    path = save_overlay_png(fake_bucket.uri("run/overlays/a/x.png"), image, pred, label)
    assert os.fspath(path) == "gs://fake-bucket/run/overlays/a/x.png"
    png = cv2.imread(os.fspath(fake_bucket.local("run/overlays/a/x.png")))[..., ::-1]  # lossless PNG round trip
    np.testing.assert_array_equal(png, overlay_panel(image, pred, label))

    records = synthetic_records(3, height=16, width=32, seed=1)
    weights = rng.normal(size=(3, 19)).astype(np.float32)
    result = evaluate_segmentation(lambda x: x @ weights, records, batch_size=2, progress=False, process_index=0,
                                   process_count=1, overlay_dir=fake_bucket.uri("run/overlays/step3"),
                                   num_overlays=2)
    assert result["num_images"] == 3
    assert fake_bucket.files("run/overlays/step3") == ["synthetic_000000_000019_overlay.png",
                                                       "synthetic_000001_000019_overlay.png"]
    fake_bucket.assert_no_local_gs_dir()
