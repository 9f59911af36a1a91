"""The synthetic COCO-layout dataset goes through the same builder, pipeline and evaluator."""
import json

import numpy as np

from psa_jax.data import pipeline
from psa_jax.data.pose_pipeline import build_coco_keypoints, make_train_data
from psa_jax.data.synthetic_coco import write_synthetic_coco
from psa_jax.evaluation.pose_evaluator import evaluate_ground_truth


def test_synthetic_dataset_builds_trains_and_evaluates(tmp_path):
    summary = write_synthetic_coco(tmp_path / "synth", num_train=12, num_val=6, image_size=(192, 160), seed=3)
    root = tmp_path / "synth"
    for rel in ("annotations/person_keypoints_train2017.json", "annotations/person_keypoints_val2017.json",
                "annotations/person_detections_val2017.json"):
        assert (root / rel).is_file(), rel
    val = json.loads((root / "annotations/person_keypoints_val2017.json").read_text())
    assert val["categories"][0]["name"] == "person" and len(val["categories"][0]["keypoints"]) == 17
    assert len(val["categories"][0]["skeleton"]) == 19
    assert len(val["images"]) == 6 and summary["validation"]["persons"] == len(val["annotations"])
    kps = np.array([a["keypoints"] for a in val["annotations"]]).reshape(-1, 17, 3)
    assert (kps[..., 2] == 0).any() and (kps[..., 2] == 2).any()  # some joints unlabelled
    for a in val["annotations"]:  # areas are segment-like: inside the box, not tiny
        assert 0 < a["area"] < a["bbox"][2] * a["bbox"][3]
        assert a["num_keypoints"] == int((np.array(a["keypoints"][2::3]) > 0).sum())
    builder = build_coco_keypoints(root, tmp_path / "data")
    assert set(builder.info.splits) == {"train", "validation"}
    source, transform = make_train_data(tmp_path / "data", codec="udp", input_size=(128, 96), progress=False)
    batch = next(iter(pipeline.train_dataset(source, transform, global_batch_size=4, seed=0, process_index=0,
                                             process_count=1)))
    assert batch["image"].shape == (4, 128, 96, 3) and batch["target"].shape == (4, 32, 24, 17)
    for boxes in ("gt", "det"):
        stats = evaluate_ground_truth(tmp_path / "data", boxes=boxes, codec="udp", input_size=(128, 96),
                                      progress=False)
        assert stats["AP"] >= 0.95, (boxes, stats)


def test_synthetic_is_a_function_of_the_seed(tmp_path):
    write_synthetic_coco(tmp_path / "a", num_train=3, num_val=2, seed=7)
    write_synthetic_coco(tmp_path / "b", num_train=3, num_val=2, seed=7)
    write_synthetic_coco(tmp_path / "c", num_train=3, num_val=2, seed=8)
    for rel in ("annotations/person_keypoints_train2017.json", "val2017/000001000000.jpg"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    first = "train2017/000000000001.jpg"
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()
