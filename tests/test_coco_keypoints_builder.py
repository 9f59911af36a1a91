"""The `coco_keypoints` tfds builder: the real sample, bad input, other COCO-format datasets."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from psa_jax.data.coco_keypoints import CocoKeypoints, CocoKeypointsConfig
from psa_jax.data.pose_pipeline import build_coco_keypoints, gt_instances, load_builder, load_split_annotations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sample_builds_with_every_person_and_detection(coco_sample_dir, tmp_path):
    builder = build_coco_keypoints(coco_sample_dir, tmp_path)
    assert list(builder.info.splits) == ["validation"]  # no train json in the sample: split skipped
    report = load_builder(tmp_path).info.metadata["build_report"]["validation"]
    assert report["images"] == 4 and report["persons"] == 14 and report["detections"] == 118
    assert report["instances"]["kept"] == 12 and report["instances"]["no_labelled_keypoints"] == 2
    source = builder.as_data_source("validation", decoders={"image": tfds.decode.SkipDecoding()})
    gt = json.loads((coco_sample_dir / "annotations/person_keypoints_val2017.json").read_text())
    by_id = {im["id"]: im for im in gt["images"]}
    seen = set()
    for i in range(len(source)):
        rec = source[i]
        image_id = int(rec["image/id"])
        seen.add(image_id)
        im = cv2.imdecode(np.frombuffer(rec["image"], np.uint8), cv2.IMREAD_COLOR)
        assert im.shape[:2] == (by_id[image_id]["height"], by_id[image_id]["width"]) == (
            rec["image/height"], rec["image/width"])
        # the JPEG is stored byte for byte
        assert rec["image"] == (coco_sample_dir / "val2017" / by_id[image_id]["file_name"]).read_bytes()
        p = rec["persons"]
        anns = [a for a in gt["annotations"] if a["image_id"] == image_id]
        assert p["keypoints"].shape == (len(anns), 17, 3) and p["keypoints"].dtype == np.float32
        assert sorted(p["id"].tolist()) == sorted(a["id"] for a in anns)
        for a in anns:
            j = p["id"].tolist().index(a["id"])
            np.testing.assert_array_equal(p["keypoints"][j].reshape(-1), a["keypoints"])
            np.testing.assert_allclose(p["bbox"][j], a["bbox"], rtol=1e-6)
        assert p["iscrowd"].dtype == bool and rec["detections"]["bbox"].shape[1] == 4
    assert seen == set(by_id)


def test_building_does_not_import_tensorflow(coco_sample_dir, tmp_path):
    code = ("import sys; from psa_jax.data.pose_pipeline import build_coco_keypoints; "
            f"build_coco_keypoints({str(coco_sample_dir)!r}, {str(tmp_path)!r}); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, timeout=120)


def test_missing_manual_dir_and_files_are_named(tmp_path, coco_sample_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_coco_keypoints(tmp_path / "nowhere", tmp_path / "data")
    empty = tmp_path / "empty"
    (empty / "val2017").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="annotations/person_keypoints_val2017.json"):
        build_coco_keypoints(empty, tmp_path / "data")
    # annotation file present, image folder absent
    no_images = tmp_path / "no_images"
    (no_images / "annotations").mkdir(parents=True)
    shutil.copy(coco_sample_dir / "annotations/person_keypoints_val2017.json", no_images / "annotations")
    with pytest.raises(FileNotFoundError, match="val2017"):
        build_coco_keypoints(no_images, tmp_path / "data2")
    # not JSON at all
    (no_images / "val2017").mkdir()
    (no_images / "annotations/person_keypoints_val2017.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        build_coco_keypoints(no_images, tmp_path / "data3")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        load_builder(tmp_path / "never_built")


@pytest.fixture()
def broken_manual_dir(tmp_path, coco_sample_dir):
    """The sample plus every kind of bad input, as both a validation and a train split."""
    root = tmp_path / "broken"
    shutil.copytree(coco_sample_dir, root)
    gt = json.loads((root / "annotations/person_keypoints_val2017.json").read_text())
    base = dict(gt["annotations"][0])  # image 785, a fully labelled person
    img = {im["id"]: im for im in gt["images"]}[785]
    extra = []
    # 1) a corrupt image and 2) a missing image, each with one person
    (root / "val2017/000000000001.jpg").write_bytes(b"this is not a jpeg")
    gt["images"].append({**img, "id": 1, "file_name": "000000000001.jpg"})
    gt["images"].append({**img, "id": 2, "file_name": "000000000002.jpg"})
    extra += [{**base, "id": 900001, "image_id": 1}, {**base, "id": 900002, "image_id": 2}]
    # 3) zero area, 4) crowd, 5) no labelled keypoints, 6) keypoints outside the image
    extra.append({**base, "id": 900003, "area": 0.0})
    extra.append({**base, "id": 900004, "iscrowd": 1})
    extra.append({**base, "id": 900005, "keypoints": [0] * 51, "num_keypoints": 0})
    outside = list(base["keypoints"])
    outside[0] = 700  # nose x beyond the 640 px width
    extra.append({**base, "id": 900006, "keypoints": outside})
    # 7) malformed (wrong keypoint count), 8) an unknown image, 9) another category
    extra.append({**base, "id": 900007, "keypoints": [1, 2, 2]})
    extra.append({**base, "id": 900008, "image_id": 424242})
    extra.append({**base, "id": 900009, "category_id": 3})
    # an image entry without a size
    gt["images"].append({"id": 3, "file_name": "x.jpg"})
    gt["annotations"] += extra
    text = json.dumps(gt)
    (root / "annotations/person_keypoints_val2017.json").write_text(text)
    (root / "annotations/person_keypoints_train2017.json").write_text(text)
    shutil.copytree(root / "val2017", root / "train2017")
    dets = json.loads((root / "annotations/person_detections_val2017.json").read_text())
    dets += [{"image_id": 785, "category_id": 1, "bbox": [1, 2], "score": 0.5},  # malformed
             {"image_id": 999999, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]  # unknown image
    (root / "annotations/person_detections_val2017.json").write_text(json.dumps(dets))
    return root


def test_bad_input_is_skipped_or_kept_and_counted(broken_manual_dir, tmp_path):
    builder = build_coco_keypoints(broken_manual_dir, tmp_path / "data")
    report = builder.info.metadata["build_report"]
    val = report["validation"]
    assert val["images"] == 4 and val["corrupt_images"] == 1 and val["missing_images"] == 1
    assert val["malformed_images"] == 1 and val["malformed_annotations"] == 1
    assert val["annotations_of_unknown_images"] == 1 and val["other_categories"] == 1
    assert val["malformed_detections"] == 1 and val["detections_of_unknown_images"] == 1
    assert val["persons"] == 14 + 4  # zero-area, crowd, no-keypoints and outside are stored
    inst = val["instances"]
    assert inst["kept"] == 12 + 1 and inst["zero_area"] == 1 and inst["crowd"] == 1
    assert inst["no_labelled_keypoints"] == 2 + 1 and inst["keypoints_outside_image"] == 1
    # the train split applies the same rules (and skips person-free images, none here)
    assert report["train"]["instances"] == inst and report["train"]["images"] == 4
    # the stored records keep the crowd annotation for COCO evaluation; training selects 13
    ann = load_split_annotations(builder, "validation", progress=False)
    assert ann.person_iscrowd.sum() == 1
    table, counts = gt_instances(ann)
    assert len(table) == 13 and counts == inst


def test_other_coco_format_dataset_via_config(tmp_path, coco_sample_dir):
    root = tmp_path / "custom"
    (root / "labels").mkdir(parents=True)
    shutil.copytree(coco_sample_dir / "val2017", root / "pictures")
    shutil.copy(coco_sample_dir / "annotations/person_keypoints_val2017.json", root / "labels/test.json")
    config = CocoKeypointsConfig(name="custom", val_annotations="labels/test.json", val_images="pictures",
                                 train_annotations="labels/none.json", detections=())
    builder = build_coco_keypoints(root, tmp_path / "data", config=config)
    assert builder.info.splits["validation"].num_examples == 4
    assert builder.info.metadata["build_report"]["validation"]["detections"] == 0
    reopened = CocoKeypoints(config=config, data_dir=str(tmp_path / "data"))
    assert reopened.info.splits["validation"].num_examples == 4
