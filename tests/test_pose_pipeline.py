"""Top-down training/eval samples on the real COCO sample through the shared grain pipeline."""
import cv2
import numpy as np
import pytest

from psa_jax.data import pipeline
from psa_jax.data.pose_pipeline import (
    IMAGENET_MEAN, IMAGENET_STD, EvalTransform, PoseAugmentConfig, TrainTransform, build_coco_keypoints,
    make_eval_data, make_train_data, normalize_image, normalize_on_device, visualize_sample)
from psa_jax.data.pose_targets import PoseCodec
from psa_jax.data.pose_transforms import get_affine_transform, warp_image
from psa_jax.evaluation.keypoint_decoding import decode_heatmaps


@pytest.fixture(scope="module")
def sample_data_dir(tmp_path_factory, coco_sample_dir):
    data_dir = tmp_path_factory.mktemp("coco_keypoints")
    build_coco_keypoints(coco_sample_dir, data_dir)
    return data_dir


@pytest.mark.parametrize("codec,input_size", [("udp", (256, 192)), ("dark", (256, 192)), ("msra", (384, 288))])
def test_train_batches_shapes_dtypes_ranges(sample_data_dir, codec, input_size):
    source, transform = make_train_data(sample_data_dir, split="validation", codec=codec, input_size=input_size,
                                        progress=False)
    assert len(source) == 12
    ds = pipeline.train_dataset(source, transform, global_batch_size=4, seed=0, process_index=0, process_count=1)
    batch = next(iter(ds))
    h, w = input_size
    assert set(batch) == {"image", "target", "target_weight"}
    assert batch["image"].shape == (4, h, w, 3) and batch["image"].dtype == np.float32
    assert batch["target"].shape == (4, h // 4, w // 4, 17) and batch["target"].dtype == np.float32
    assert batch["target_weight"].shape == (4, 17) and batch["target_weight"].dtype == np.float32
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    assert lo - 1e-5 <= batch["image"].min() and batch["image"].max() <= hi + 1e-5
    assert 0 <= batch["target"].min() and batch["target"].max() <= 1.0 + 1e-6
    assert set(np.unique(batch["target_weight"])) <= {0.0, 1.0}
    # an unweighted joint has an empty heatmap; a weighted one has a peak
    tw = batch["target_weight"] > 0
    assert np.all(batch["target"].max(axis=(1, 2))[~tw] == 0) and np.all(batch["target"].max(axis=(1, 2))[tw] > 0)


def test_target_weights_zero_exactly_for_unlabelled_joints(sample_data_dir):
    source, transform = make_train_data(sample_data_dir, split="validation", codec="udp",
                                        augment=PoseAugmentConfig.none(), progress=False)
    rng = np.random.default_rng(0)
    for i in range(len(source)):
        inst = source[i]
        out = transform(inst, rng)
        # without augmentation every labelled joint of a COCO person lies inside its padded box
        np.testing.assert_array_equal(out["target_weight"], (inst["joints"][:, 2] > 0).astype(np.float32))


def test_train_stream_is_deterministic_resumable_and_seeded(sample_data_dir):
    source, transform = make_train_data(sample_data_dir, split="validation", progress=False)
    make = lambda seed: iter(pipeline.train_dataset(source, transform, global_batch_size=4, seed=seed,  # noqa: E731
                                                    process_index=0, process_count=1))
    a, b = make(3), make(3)
    first = [next(a) for _ in range(4)]
    for x in first:
        y = next(b)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    state = a.get_state()
    cont = [next(a) for _ in range(2)]
    resumed = make(3)
    resumed.set_state(state)
    for x in cont:
        y = next(resumed)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    other = next(make(4))
    assert not np.array_equal(other["image"], first[0]["image"])


def test_process_shards_are_disjoint_and_complete(sample_data_dir):
    source, _ = make_train_data(sample_data_dir, split="validation", progress=False)
    ident = lambda inst, rng: {"instance": np.asarray(inst["instance"])}  # noqa: E731
    seen = []
    for p in range(3):
        it = iter(pipeline.train_dataset(source, ident, global_batch_size=6, seed=1, process_index=p, process_count=3))
        epoch = np.concatenate([next(it)["instance"] for _ in range(2)])  # 4 instances per process per epoch
        assert len(set(epoch.tolist())) == 4
        seen.append(set(epoch.tolist()))
    assert set.union(*seen) == set(range(12)) and sum(len(s) for s in seen) == 12


def test_augmentation_draws_follow_hrnet():
    codec = PoseCodec("dark", (256, 192))
    t = TrainTransform(codec)
    joints = np.zeros((17, 3))
    joints[:, 0] = np.linspace(100, 200, 17)
    joints[:, 1] = np.linspace(100, 400, 17)
    joints[:, 2] = 2
    inst = {"box": np.array([90.0, 90.0, 120.0, 320.0]), "joints": joints}
    base_c, base_s = np.array([150.0, 250.0]), np.array([240.0, 320.0]) * 1.25
    rng = np.random.default_rng(0)
    rot, flips, scales, half = [], [], [], 0
    for _ in range(3000):
        c, s, r, f, _, _ = t.sample_geometry(inst, 640, rng)
        rot.append(r)
        flips.append(f)
        if f:
            c = np.array([640 - c[0] - 1, c[1]])
        if np.allclose(c, base_c):
            scales.append(s[0] / base_s[0])
        else:
            half += 1
    rot = np.array(rot)
    assert np.abs(rot).max() <= 90 and 0.55 < np.mean(rot != 0) < 0.65
    assert 0.45 < np.mean(flips) < 0.55
    assert 0.25 < half / 3000 < 0.35  # PROB_HALF_BODY with all 17 joints labelled
    assert 0.65 - 1e-9 <= min(scales) and max(scales) <= 1.35 + 1e-9


@pytest.mark.parametrize("codec", ["msra", "udp"])
def test_crop_and_targets_agree_under_rotation_scale_and_flip(codec):
    """A bright dot at the left wrist: wherever the augmentation puts the crop, the dot's pixel and
    the target peak coincide, and after a flip the peak moves to the right wrist's channel."""
    image = np.zeros((300, 400, 3), np.uint8)
    wrist = (130.0, 170.0)
    cv2.circle(image, (130, 170), 3, (255, 255, 255), -1)
    joints = np.zeros((17, 3))
    joints[9] = (*wrist, 2)
    inst = {"image": image, "box": np.array([100.0, 100.0, 90.0, 150.0]), "joints": joints}
    t = TrainTransform(PoseCodec(codec, (256, 192)), PoseAugmentConfig(half_body_prob=0.0))
    rng = np.random.default_rng(5)
    flipped_seen = unflipped_seen = 0
    for _ in range(12):
        out = t(inst, rng)
        channel = int(np.argmax(out["target_weight"]))
        assert out["target_weight"].sum() == 1 and channel in (9, 10)
        flipped_seen += channel == 10
        unflipped_seen += channel == 9
        peak, _ = decode_heatmaps(out["target"][None], "dark" if codec == "msra" else "udp")
        stride = 4.0 if codec == "msra" else 191 / 47
        gray = out["image"].sum(-1)
        ys, xs = np.nonzero(gray > gray.max() - 0.5)
        dot = np.array([xs.mean(), ys.mean()])
        tol = 2.5 if codec == "msra" else 1.0  # msra rounds the target centre to whole heatmap pixels
        np.testing.assert_allclose(peak[0, channel] * stride, dot, atol=tol)
    assert flipped_seen and unflipped_seen


def test_flip_folded_into_the_warp_equals_warping_the_mirrored_image(coco_sample_dir):
    image = cv2.imread(str(coco_sample_dir / "val2017/000000000785.jpg"))
    w = image.shape[1]
    c, s, r = np.array([390.0, 218.0]), np.array([273.0, 364.0]), 23.0
    c_flip = np.array([w - c[0] - 1, c[1]])  # HRNet: c[0] = width - c[0] - 1 on the mirrored image
    ref = warp_image(np.ascontiguousarray(image[:, ::-1]), get_affine_transform(c_flip, s, r, (192, 256)), (192, 256))
    m = get_affine_transform(c_flip, s, r, (192, 256))
    f = np.array([[-1.0, 0, w - 1], [0, 1, 0]])
    ours = warp_image(image, np.concatenate([m[:, :2] @ f[:, :2], (m[:, :2] @ f[:, 2] + m[:, 2])[:, None]], 1),
                      (192, 256))
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.mean() < 0.05 and diff.max() <= 2  # OpenCV's 1/32 px fixed-point sampling grid


def test_normalize_image_matches_the_arithmetic():
    crop = np.random.default_rng(0).integers(0, 256, (16, 12, 3), dtype=np.uint8)
    want = (crop[..., ::-1].astype(np.float64) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(normalize_image(crop), want, atol=1e-6)


def test_uint8_training_batches_normalised_on_device_equal_the_float_batches(sample_data_dir):
    """`image_dtype='uint8'` (what train.py uses) + `normalize_on_device` == host normalisation."""
    batches = {}
    for dtype in ("float32", "uint8"):
        source, transform = make_train_data(sample_data_dir, split="validation", codec="udp", progress=False,
                                            image_dtype=dtype)
        ds = pipeline.train_dataset(source, transform, global_batch_size=6, seed=5, process_index=0, process_count=1)
        batches[dtype] = next(iter(ds))
    assert batches["uint8"]["image"].dtype == np.uint8
    np.testing.assert_allclose(np.asarray(normalize_on_device(batches["uint8"]["image"])),
                               batches["float32"]["image"], rtol=0, atol=2e-6)
    np.testing.assert_array_equal(batches["uint8"]["target"], batches["float32"]["target"])
    with pytest.raises(ValueError, match="image_dtype"):
        make_train_data(sample_data_dir, split="validation", progress=False, image_dtype="float16")


def test_eval_batches_carry_what_decoding_needs(sample_data_dir):
    data = make_eval_data(sample_data_dir, boxes="det", codec="udp", progress=False)
    assert len(data.source) == 118
    batches = list(pipeline.eval_dataset(data.source, data.transform, batch_size=50, process_index=0,
                                         process_count=1))
    assert len(batches) == 3
    b = batches[-1]
    assert b["image"].shape == (50, 256, 192, 3) and b["image"].dtype == np.float32
    assert b["center"].shape == (50, 2) and b["scale"].shape == (50, 2) and b["center"].dtype == np.float32
    assert b["joints"].shape == (50, 17, 3) and b["image_id"].dtype == np.int64
    assert b["valid"].dtype == bool and b["valid"].sum() == 118 - 100
    np.testing.assert_allclose(b["area"], b["scale"][:, 0] * b["scale"][:, 1], rtol=1e-6)
    np.testing.assert_allclose(b["scale"][:, 0] / b["scale"][:, 1], 0.75, rtol=1e-5)
    assert 0 < b["bbox_score"].min() and b["bbox_score"].max() <= 1
    gt = make_eval_data(sample_data_dir, boxes="gt", codec="udp", progress=False)
    ex = gt.transform(gt.source[0])
    assert ex["bbox_score"] == 1.0 and isinstance(gt.transform, EvalTransform)


def test_visual_check_png(sample_data_dir, tmp_path):
    """Writes a picture of augmented crops with their heatmap overlays for a person to look at."""
    source, transform = make_train_data(sample_data_dir, split="validation", codec="udp", progress=False)
    rng = np.random.default_rng(0)
    tiles = [visualize_sample(transform(source[i], rng)) for i in range(4)]
    path = tmp_path / "pose_samples.png"
    assert cv2.imwrite(str(path), np.concatenate(tiles, axis=1))
    back = cv2.imread(str(path))
    assert back.shape == (256, 4 * 192, 3) and back.std() > 10
    # the overlay is hot where the targets are: red-dominant pixels exist
    assert np.mean((back[..., 2] > 200) & (back[..., 0] < 80)) > 0.001


def test_errors_name_the_problem(sample_data_dir, tmp_path):
    with pytest.raises(ValueError, match="split 'train'"):
        make_train_data(sample_data_dir, split="train", progress=False)
    with pytest.raises(ValueError, match="boxes"):
        make_eval_data(sample_data_dir, boxes="both", progress=False)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        make_train_data(tmp_path, progress=False)


def test_annotation_index_is_cached_next_to_the_data(sample_data_dir, monkeypatch):
    from psa_jax.data import pose_pipeline as pp

    builder = pp.load_builder(sample_data_dir)
    first = pp.load_split_annotations(builder, "validation", progress=False)
    cache = sample_data_dir / "coco_keypoints/2017/1.0.0/psa_jax_annotations_validation.npz"
    assert cache.is_file()

    def no_scan(*args, **kwargs):
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr(pp, "_scan", no_scan)
    again = pp.load_split_annotations(builder, "validation", progress=False)
    np.testing.assert_array_equal(again.person_keypoints, first.person_keypoints)
    assert list(again.filename) == list(first.filename) and again.num_records == 4


def test_no_augmentation_geometry_is_the_eval_geometry():
    from psa_jax.data.pose_transforms import box_to_center_scale

    codec = PoseCodec("msra", (256, 192))
    t = TrainTransform(codec, PoseAugmentConfig.none())
    joints = np.zeros((17, 3))
    joints[:, 2] = 2
    for box in ([10.0, 20.0, 30.0, 80.0], [0.0, 0.0, 100.0, 50.0], [5.5, 6.5, 75.0, 100.0]):
        c, s, r, f, _, _ = t.sample_geometry({"box": np.array(box), "joints": joints}, 640, np.random.default_rng(0))
        c_ref, s_ref = box_to_center_scale(box, codec.aspect_ratio)
        np.testing.assert_allclose(c, c_ref)
        np.testing.assert_allclose(s, s_ref)
        assert r == 0.0 and not f
