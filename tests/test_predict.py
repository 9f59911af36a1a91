"""python -m psa_jax.tools.predict: pose skeletons and segmentation overlays on any image.

The networks are the tiny 'w8_tiny' HRNet with freshly initialised weights, saved as a checkpoint the
way `psa_jax.tools.convert` writes one (no metrics): nothing is trained. The keypoint geometry is
checked apart from any network, by a stand-in that returns the codec's own target heatmaps.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import cv2
import numpy as np
import pytest
from flax import nnx

from psa_jax.data.pose_pipeline import EvalTransform, flip_joints_in_crop
from psa_jax.data.pose_targets import PoseCodec
from psa_jax.data.pose_transforms import BOX_PADDING, affine_points, box_to_center_scale
from psa_jax.evaluation.keypoint_decoding import keypoints_from_heatmaps
from psa_jax.evaluation.pose_visualize import (
    CENTER_COLOR,
    COCO_JOINT_SIDES,
    COCO_LIMBS,
    LEFT_COLOR,
    RIGHT_COLOR,
    draw_pose,
    limb_colors,
)
from psa_jax.tools import predict as tool
from psa_jax.training.checkpointing import Checkpointer
from psa_jax.training.config_schema import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
POSE_CONFIG = str(REPO / "configs" / "pose_synthetic_demo.py")
SEG_CONFIG = str(REPO / "configs" / "seg_synthetic_demo.py")
TINY = ["model.width=w8_tiny", "model.attention=none", "eval.batch_size=4"]
pytestmark = pytest.mark.usefixtures("tiny_hrnet")  # tests/conftest.py: the 'w8_tiny' HRNet


def _save_fresh_checkpoint(config_path: str, workdir: pathlib.Path, step: int = 7) -> None:
    """A freshly initialised network of the config, saved as `tools.convert` saves (no metrics)."""
    from psa_jax.tasks.registry import get_task
    config = load_config(config_path, TINY)
    model = get_task(config, str(workdir)).build_model(nnx.Rngs(0))
    ckpt = Checkpointer(workdir / "checkpoints", keep_best=0, async_save=False)
    ckpt.save(step, model=nnx.state(model), meta={"source": "tests", "config": {"task": config.task}})
    ckpt.close()


@pytest.fixture(scope="module")
def pose_workdir(tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("pose_ckpt")
    _save_fresh_checkpoint(POSE_CONFIG, workdir)
    return workdir


@pytest.fixture(scope="module")
def images(tmp_path_factory, coco_sample_dir) -> dict[str, pathlib.Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    generated = folder / "generated.png"
    cv2.imwrite(str(generated), rng.integers(0, 256, (150, 110, 3), np.uint8))
    broken = folder / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    return {"coco": coco_sample_dir / "val2017" / "000000197388.jpg", "generated": generated, "broken": broken,
            "detections": coco_sample_dir / "annotations" / "person_detections_val2017.json"}


def _pose_args(workdir, out, *extra) -> list[str]:
    return [f"--config={POSE_CONFIG}", *(f"--config.{o}" for o in TINY), f"--workdir={workdir}", f"--out={out}",
            "--no_progress", *map(str, extra)]


def _crop_extent(box) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) image x, y a crop of `box` covers (codec aspect 96/128, 1.25 padding)."""
    center, scale = box_to_center_scale(np.asarray(box), 96 / 128, BOX_PADDING)
    return center - scale / 2, center + scale / 2


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------
def test_draw_pose_colours_joints_and_limbs_by_side_and_hides_low_scores():
    image = np.zeros((100, 100, 3), np.uint8)
    kps = np.zeros((17, 3))
    kps[:, 2] = 0.9
    kps[0] = (50, 10, 0.1)      # nose, below the threshold
    kps[1] = (36, 8, 0.9)       # left eye
    kps[5] = (30, 40, 0.9)      # left shoulder
    kps[6] = (70, 40, 0.9)      # right shoulder
    kps[7] = (30, 70, 0.9)      # left elbow
    kps[9] = (30, 90, 0.95)     # left wrist
    kps[8] = (70, 70, 0.2)      # right elbow, below the threshold
    kps[10] = (70, 90, 0.9)     # right wrist
    kps[[2, 3, 4, 11, 12, 13, 14, 15, 16], 2] = 0.0
    out = draw_pose(image, kps, score_threshold=0.3, line_width=3, radius=3)
    assert not image.any(), "the input image must not be modified"
    px = lambda x, y: tuple(int(v) for v in out[y, x])
    assert px(30, 40) == LEFT_COLOR and px(70, 40) == RIGHT_COLOR and px(36, 8) == LEFT_COLOR
    assert px(30, 90) == LEFT_COLOR and px(70, 90) == RIGHT_COLOR
    assert px(50, 40) == CENTER_COLOR          # shoulder to shoulder crosses the midline
    assert px(30, 55) == LEFT_COLOR            # left upper arm
    assert px(50, 10) == (0, 0, 0)             # hidden nose: no circle ...
    assert px(43, 9) == (0, 0, 0)              # ... and no nose-eye limb
    assert px(70, 70) == (0, 0, 0) and px(70, 55) == (0, 0, 0) and px(70, 80) == (0, 0, 0)  # hidden elbow, limbs
    assert (out.reshape(-1, 3).any(axis=1)).sum() > 100
    # several persons at once, and a skeleton that does not fit the keypoints is an error
    two = draw_pose(image, np.stack([kps, kps + [5, 0, 0]]), score_threshold=0.3, line_width=3, radius=3)
    assert tuple(int(v) for v in two[40, 35]) == LEFT_COLOR
    with pytest.raises(ValueError, match="limbs= and sides="):
        draw_pose(image, np.ones((5, 3)))


def test_coco_skeleton_constants():
    assert len(COCO_LIMBS) == 19 and max(max(limb) for limb in COCO_LIMBS) == 16
    assert COCO_JOINT_SIDES[0] == "center" and COCO_JOINT_SIDES[5] == "left" and COCO_JOINT_SIDES[16] == "right"
    colors = dict(zip(COCO_LIMBS, limb_colors()))
    assert colors[(15, 13)] == LEFT_COLOR and colors[(16, 14)] == RIGHT_COLOR and colors[(11, 12)] == CENTER_COLOR


# ----------------------------------------------------------------------------------------------
# Geometry: the evaluation's crop, decoding and inverse warp recover known keypoints
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,flip_test,tolerance", [("udp", False, 0.75), ("udp", True, 0.75), ("dark", True, 2.0),
                                                      ("udp_combined", False, 4.5), ("udp_combined", True, 4.5)])
def test_predict_poses_recovers_keypoints_from_their_target_heatmaps(name, flip_test, tolerance):
    """Known image keypoints -> each box's crop -> the codec's targets as the 'network' output ->
    predict_poses gives them back in image pixels. Tolerances (one heatmap px is ~7 image px here):
    UDP's sub-pixel decoding; DARK's flip test keeps HRNet's +0.25 heatmap px shift bias
    (`flip_averaging`); the combined codec's blurred offsets on a 32x24 map lose up to ~0.6
    heatmap px. Exactly mirrored UDP targets flip back to the unflipped ones, so there the flip test
    must also reproduce the direct decoding of the unflipped maps."""
    codec = PoseCodec(name, (128, 96))
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (240, 320, 3), np.uint8)
    boxes = np.array([[20.0, 30.0, 90.0, 180.0], [180.0, 60.0, 110.0, 150.0]])
    # the combined codec's offset decoding is biased within ~6 heatmap px of the map's border (its
    # blurred offsets meet the border there), so its joints stay in the middle half of each box
    inset = (lambda b: b / 4) if name == "udp_combined" else (lambda b: 5.0)
    truth = np.stack([np.column_stack([rng.uniform(b[0] + inset(b[2]), b[0] + b[2] - inset(b[2]), 17),
                                       rng.uniform(b[1] + inset(b[3]), b[1] + b[3] - inset(b[3]), 17)])
                      for b in boxes])
    transform = EvalTransform(codec)
    rendered, direct = {}, []
    for box, joints in zip(boxes, truth):
        item = transform({"image": image, "box": box, "score": 1.0, "image_id": 0, "joints": np.zeros((1, 3))})
        crop = np.ascontiguousarray(item["image"], np.float32)
        center, scale = box_to_center_scale(box, codec.aspect_ratio)
        in_crop = np.column_stack([affine_points(joints, codec.warp(center, scale)), np.ones(17)]).astype(np.float32)
        rendered[crop.tobytes()] = codec.encode(in_crop[:, :2], in_crop[:, 2])[0]
        direct.append(keypoints_from_heatmaps(rendered[crop.tobytes()][None], center[None], scale[None], codec)[0])
        mirrored = flip_joints_in_crop(in_crop, codec.input_wh[0])
        rendered[np.ascontiguousarray(crop[:, ::-1]).tobytes()] = codec.encode(mirrored[:, :2], mirrored[:, 2])[0]
    calls = []

    def heatmaps_of(crops):
        calls.append(len(crops))
        return np.stack([rendered[np.ascontiguousarray(c, np.float32).tobytes()] for c in crops])

    poses = tool.predict_poses(heatmaps_of, image, boxes, np.array([0.9, 0.6]), codec, flip_test=flip_test,
                               batch_size=4)
    assert calls == ([2, 2] if flip_test else [2])
    # highest person score first: both poses decode with similar keypoint scores, so the box scores decide
    np.testing.assert_allclose(poses["box_scores"], [0.9, 0.6])
    np.testing.assert_allclose(poses["keypoints"][..., :2], truth, atol=tolerance)
    if not flip_test or name != "dark":
        np.testing.assert_allclose(poses["keypoints"], np.stack(direct), atol=0.05)
    if name != "udp_combined":  # score: the Gaussian at the integer pixel nearest its peak (d < 0.71 px)
        assert np.all(poses["keypoints"][..., 2] > np.exp(-0.5 / 8)) and np.all(poses["keypoints"][..., 2] <= 1)
    # person score: box score x mean of the keypoint scores above 0.2 (0 when none is; HRNet's rescoring)
    confident = [k[k > 0.2].mean() if (k > 0.2).any() else 0.0 for k in poses["keypoints"][..., 2]]
    np.testing.assert_allclose(poses["scores"], np.array([0.9, 0.6]) * confident)
    np.testing.assert_allclose(poses["boxes"], boxes)


def test_load_boxes_matching_rules(tmp_path):
    a, b, c = tmp_path / "000000000785.jpg", tmp_path / "street.png", tmp_path / "x" / "street7.jpg"
    detections = [
        {"image_id": 785, "bbox": [1, 2, 30, 40], "score": 0.9, "category_id": 1},      # numeric stem
        {"image_id": 785, "bbox": [1, 2, 30, 40], "score": 0.2, "category_id": 1},      # below the threshold
        {"image_id": 785, "bbox": [1, 2, 30, 40], "score": 0.9, "category_id": 3},      # not a person
        {"image_id": 785, "bbox": [1, 2, 0, 40], "score": 0.9},                         # empty box
        {"file_name": "some/dir/street.png", "bbox": [5, 5, 10, 20]},                   # file name, no score: 1
        {"image_id": "street7", "bbox": [0, 0, 8, 8], "score": 0.7},                    # text stem
    ]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(detections))
    got = tool.load_boxes(path, [a, b, c], score_threshold=0.5)
    np.testing.assert_allclose(got[0][0], [[1, 2, 30, 40]])
    np.testing.assert_allclose(got[1][1], [1.0])
    np.testing.assert_allclose(got[2][0], [[0, 0, 8, 8]])
    # COCO's dict layout: image ids resolved through "images"
    path.write_text(json.dumps({"images": [{"id": 3, "file_name": "street.png"}],
                                "annotations": [{"image_id": 3, "bbox": [1, 1, 4, 4], "score": 0.8}]}))
    got = tool.load_boxes(path, [a, b], score_threshold=0.5)
    assert len(got[0][0]) == 0 and len(got[1][0]) == 1
    path.write_text(json.dumps([{"image_id": 1, "bbox": [1, 2, 3]}]))
    with pytest.raises(tool.PredictError, match="entry 0"):
        tool.load_boxes(path, [a])


# ----------------------------------------------------------------------------------------------
# The tool, end to end on a tiny checkpoint
# ----------------------------------------------------------------------------------------------
def test_pose_whole_image_pictures_json_and_skipped_image(pose_workdir, images, tmp_path, capsys):
    out = tmp_path / "out"
    rc = tool.main(_pose_args(pose_workdir, out, "--keypoint_score_threshold=0", images["coco"], images["generated"],
                              images["broken"]))
    assert rc == 1, "an unreadable image is skipped and reported with exit status 1"
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err
    result = json.loads((out / "predictions.json").read_text())
    assert result["step"] == 7 and result["task"] == "pose"
    assert [s["file"] for s in result["skipped"]] == [str(images["broken"])]
    assert len(result["images"]) == 2
    joint_colours = {LEFT_COLOR, RIGHT_COLOR, CENTER_COLOR}
    for key, record in zip(("coco", "generated"), result["images"]):
        source = cv2.imread(str(images[key]))
        h, w = source.shape[:2]
        assert (record["width"], record["height"]) == (w, h)
        picture = cv2.imread(record["output"])
        assert record["output"] == str(out / f"{images[key].stem}_pose.png") and picture.shape == source.shape
        assert len(record["persons"]) == 1, "without --boxes the whole image is one person"
        person = record["persons"][0]
        kps = np.asarray(person["keypoints"])
        assert kps.shape == (17, 3) and np.all(np.isfinite(kps))
        np.testing.assert_allclose(person["box"], [0, 0, w - 1, h - 1])
        lo, hi = _crop_extent(person["box"])
        assert np.all(kps[:, :2] >= lo - 3) and np.all(kps[:, :2] <= hi + 3)
        # every joint inside the picture was drawn there (threshold 0): a joint colour at its pixel
        inside = [(round(x), round(y)) for x, y in kps[:, :2] if 0 <= round(x) < w and 0 <= round(y) < h]
        assert inside and all(tuple(int(v) for v in picture[y, x]) in joint_colours for x, y in inside)


def test_pose_boxes_json(pose_workdir, images, tmp_path):
    detections = json.loads(images["detections"].read_text())
    generated_box = [25.0, 30.0, 60.0, 80.0]
    detections += [{"file_name": "generated.png", "bbox": generated_box, "score": 0.8, "category_id": 1},
                   {"file_name": "generated.png", "bbox": [1, 1, 50, 50], "score": 0.9, "category_id": 2},
                   {"file_name": "generated.png", "bbox": [1, 1, 50, 50], "score": 0.1, "category_id": 1}]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(detections))
    expected = sum(d.get("image_id") == 197388 and d["score"] >= 0.5 for d in detections)
    assert expected == 6
    out = tmp_path / "out"
    rc = tool.main(_pose_args(pose_workdir, out, f"--boxes={boxes}", "--no_oks_nms", "--step=latest",
                              images["coco"], images["generated"]))
    assert rc == 0
    coco, generated = json.loads((out / "predictions.json").read_text())["images"]
    assert len(coco["persons"]) == expected and len(generated["persons"]) == 1
    assert cv2.imread(coco["output"]).shape == (392, 640, 3)
    assert cv2.imread(generated["output"]).shape == (150, 110, 3)
    for record in (coco, generated):
        scores = [p["score"] for p in record["persons"]]
        assert scores == sorted(scores, reverse=True)
        for person in record["persons"]:
            kps = np.asarray(person["keypoints"])
            lo, hi = _crop_extent(person["box"])
            assert kps.shape == (17, 3) and np.all(kps[:, :2] >= lo - 3) and np.all(kps[:, :2] <= hi + 3)
            assert 0 <= person["score"] <= person["box_score"] + 1e-6
    np.testing.assert_allclose(generated["persons"][0]["box"], generated_box)
    kps = np.asarray(generated["persons"][0]["keypoints"])
    assert np.all(kps[:, :2] >= 0) and np.all(kps[:, 0] <= 109) and np.all(kps[:, 1] <= 149)


def test_errors_name_the_problem(pose_workdir, images, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "missing.jpg"
    assert tool.main(_pose_args(pose_workdir, tmp_path / "o", images["generated"], missing)) == 2
    assert f"image not found: {missing}" in capsys.readouterr().err
    empty = tmp_path / "empty_run"
    assert tool.main(_pose_args(empty, tmp_path / "o", images["generated"])) == 2
    err = capsys.readouterr().err
    assert "no checkpoint directory" in err and "python train.py" in err and "psa_jax.tools.convert" in err
    assert not empty.exists(), "a missing workdir must not be created"
    (empty / "checkpoints").mkdir(parents=True)
    assert tool.main(_pose_args(empty, tmp_path / "o", images["generated"])) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    assert tool.main(_pose_args(pose_workdir, tmp_path / "o", "--config.model.widht=w8", images["generated"])) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'model.widht'" in err and "model.width" in err
    assert tool.main(_pose_args(pose_workdir, tmp_path / "o", "--config.task=classify", images["generated"])) == 2
    assert "config.task='classify'" in capsys.readouterr().err
    assert tool.main(_pose_args(pose_workdir, tmp_path / "o", "--step=12", images["generated"])) == 2
    assert "no checkpoint for step 12" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(_pose_args(pose_workdir, tmp_path / "o", "--step=abc", images["generated"]))
    assert "--step must be 'best', 'latest' or a step number" in capsys.readouterr().err


def test_segmentation_overlay_and_label_map(images, tmp_path_factory, tmp_path):
    workdir = tmp_path_factory.mktemp("seg_ckpt")
    _save_fresh_checkpoint(SEG_CONFIG, workdir)
    image = tmp_path / "street.png"
    shutil.copy(images["generated"], image)
    out = tmp_path / "out"
    rc = tool.main([f"--config={SEG_CONFIG}", *(f"--config.{o}" for o in TINY), f"--checkpoint={workdir}/checkpoints/7",
                    f"--out={out}", "--no_progress", str(image)])
    assert rc == 0
    (record,) = json.loads((out / "predictions.json").read_text())["images"]
    assert record["output"] == str(out / "street_seg.png")
    overlay = cv2.imread(record["output"])
    assert overlay.shape == (150, 110, 3)
    assert not np.array_equal(overlay, cv2.imread(str(image))), "the palette is blended over the image"
    label_map = cv2.imread(record["label_map"], cv2.IMREAD_UNCHANGED)
    assert label_map.shape == (150, 110) and label_map.dtype == np.uint8 and label_map.max() < 19
    from psa_jax.data.cityscapes import CLASS_NAMES
    counts = np.bincount(label_map.ravel(), minlength=19)
    assert record["class_histogram"] == {CLASS_NAMES[c]: int(n) for c, n in enumerate(counts) if n}
    assert sum(record["class_histogram"].values()) == 150 * 110
    with pytest.raises(tool.PredictError, match="--boxes is for pose"):
        tool.run(load_config(SEG_CONFIG, TINY), [image], out=out, checkpoint=str(workdir), boxes="x.json")
    assert os.path.isdir(workdir / "checkpoints" / "7")
