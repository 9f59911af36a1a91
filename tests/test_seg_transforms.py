"""Segmentation augmentations: fused scale+crop against resize-then-crop, padding, flips, jitter."""

import cv2
import numpy as np
import pytest

from psa_jax.data import seg_pipeline as sp
from psa_jax.data import seg_transforms as T
from psa_jax.data.fake_cityscapes import synthetic_records


@pytest.fixture(scope="module")
def scene():
    r = synthetic_records(1, height=64, width=128, seed=1)[0]
    return cv2.GaussianBlur(r["image"], (5, 5), 2), r["label"]


@pytest.mark.parametrize("scale", [0.73, 1.0, 2.0, 2.1])
@pytest.mark.parametrize("offset", [(0, 0), (3, 5), (-4, -6)])
def test_fused_scale_crop_matches_resize_then_crop(scene, scale, offset):
    image, label = scene
    size = T.scaled_size(64, 128, scale)
    a_img, a_lab = T.scale_crop(image, label, size, (40, 60), offset)
    b_img, b_lab = T.resize_then_crop(image, label, size, (40, 60), offset)
    assert a_img.shape == (40, 60, 3) and a_lab.shape == (40, 60)
    assert np.abs(a_img.astype(int) - b_img).max() <= 1  # OpenCV fixed-point rounding
    np.testing.assert_array_equal(a_lab, b_lab)


def test_fused_scale_crop_half_scale_labels_differ_only_at_ties(scene):
    image, label = scene
    a_img, a_lab = T.scale_crop(image, label, (32, 64), (32, 64), (0, 0))
    b_img, b_lab = T.resize_then_crop(image, label, (32, 64), (32, 64), (0, 0))
    assert np.abs(a_img.astype(int) - b_img).max() <= 1
    # At scale 1/2 each output pixel sits exactly between two source pixels; either is right.
    ys, xs = np.nonzero(a_lab != b_lab)
    assert len(ys) < 0.1 * a_lab.size
    for y, x in zip(ys, xs):
        assert a_lab[y, x] in label[2 * y:2 * y + 2, 2 * x:2 * x + 2]


def test_padding_is_zero_image_and_ignore_label(scene):
    image, label = scene
    img, lab = T.scale_crop(image, label, (32, 64), (48, 80), (0, 0))  # scaled image smaller than crop
    assert (img[32:] == 0).all() and (img[:, 64:] == 0).all()
    assert (lab[32:] == 255).all() and (lab[:, 64:] == 255).all()
    assert (lab[:32, :64] != 255).any()
    img, lab = T.scale_crop(image, label, (32, 64), (48, 80), (-5, -7))  # 'centre' padding
    assert (lab[:5] == 255).all() and (lab[:, :7] == 255).all() and (img[:5] == 0).all()
    assert (lab[37:] == 255).all() and (lab[:, 71:] == 255).all()


def test_scaled_size_conventions():
    assert T.scaled_size(1024, 2048, 0.5) == (512, 1024)
    # long side int(2048 * 2.1 + 0.5) = 4301, short side int(1024 * 4301 / 2048 + 0.5) = 2151
    assert T.scaled_size(1024, 2048, 2.1) == (2151, 4301)
    assert T.scaled_size(1024, 2048, 0.75, rounding="floor") == (768, 1536)
    assert T.scaled_size(1000, 999, 0.3, rounding="floor") == (300, 299)


def test_sample_scale_ranges():
    rng = np.random.default_rng(0)
    discrete = {round(T.sample_scale(rng, (0.5, 2.1), 0.1), 6) for _ in range(2000)}
    assert discrete == {round(0.5 + 0.1 * k, 6) for k in range(17)}  # 0.5 .. 2.1 inclusive
    cont = np.array([T.sample_scale(rng, (0.5, 2.0), None) for _ in range(2000)])
    assert cont.min() >= 0.5 and cont.max() <= 2.0 and len(np.unique(cont)) == 2000


def test_random_scale_crop_label_values_and_shapes(scene):
    image, label = scene
    rng = np.random.default_rng(0)
    for _ in range(20):
        img, lab = T.random_scale_crop(image, label, rng, crop_hw=(48, 96))
        assert img.shape == (48, 96, 3) and lab.shape == (48, 96)
        assert set(np.unique(lab)) <= set(np.unique(label)) | {255}
    img, lab = T.random_scale_crop(image, label, rng, crop_hw=(256, 512), scale_range=(0.5, 2.0), scale_step=None,
                                   rounding="floor", pad_mode="centre", image_interpolation=cv2.INTER_CUBIC)
    assert (lab == 255).any()  # at most 2x of 64x128 < 256x512: always padded


def test_flip_twice_is_identity_and_flip_moves_columns(scene):
    image, label = scene
    fi, fl = T.hflip(image, label)
    np.testing.assert_array_equal(fi[:, 0], image[:, -1])
    np.testing.assert_array_equal(fl[:, 5], label[:, -6])
    gi, gl = T.hflip(fi, fl)
    np.testing.assert_array_equal(gi, image)
    np.testing.assert_array_equal(gl, label)


def test_normalize_round_trip():
    image = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    norm = T.normalize_image(image)
    assert norm.dtype == np.float32
    np.testing.assert_allclose(norm[0, 0], (image[0, 0] / 255.0 - T.IMAGENET_MEAN) / T.IMAGENET_STD, rtol=1e-5)
    np.testing.assert_array_equal(T.denormalize_image(norm), image)


def test_color_jitter_zero_is_identity_and_nonzero_changes_colours():
    image = synthetic_records(1, seed=4)[0]["image"]
    rng = np.random.default_rng(0)
    same = T.color_jitter(image, rng, brightness=0, contrast=0, saturation=0, hue=0)
    np.testing.assert_array_equal(same, image)
    jittered = T.color_jitter(image, rng)
    assert jittered.shape == image.shape and jittered.dtype == np.uint8
    assert np.abs(jittered.astype(int) - image).mean() > 1.0
    dark = T.color_jitter(image, np.random.default_rng(1), brightness=0.5, contrast=0, saturation=0, hue=0)
    ratio = dark.astype(float).sum() / image.astype(float).sum()
    assert 0.45 < ratio < 1.55 and ratio != pytest.approx(1.0, abs=1e-3)


def test_train_transform_is_a_function_of_the_rng():
    record = synthetic_records(1, seed=5)[0]
    transform = sp.SegTrainTransform(sp.SegAugmentConfig(crop_hw=(32, 64), color_jitter=0.25))
    a = transform(record, np.random.default_rng(11))
    b = transform(record, np.random.default_rng(11))
    c = transform(record, np.random.default_rng(12))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(a["image"], c["image"])
    assert a["image"].dtype == np.float32 and a["label"].dtype == np.int32
    assert a["image"].shape == (32, 64, 3) and a["label"].shape == (32, 64)


def test_identity_augmentation_reproduces_the_record():
    record = synthetic_records(1, seed=6)[0]
    augment = sp.SegAugmentConfig(crop_hw=(64, 128), scale_range=(1.0, 1.0), scale_step=None, flip_prob=0.0)
    out = sp.SegTrainTransform(augment)(record, np.random.default_rng(0))
    np.testing.assert_array_equal(out["label"], record["label"])
    np.testing.assert_array_equal(T.denormalize_image(out["image"]), record["image"])


def test_presets_and_config_errors():
    assert sp.AUGMENT_PRESETS["hrnet_seg"].crop_hw == (512, 1024)
    assert sp.AUGMENT_PRESETS["nvidia"].crop_hw == (1024, 2048)
    assert sp.AUGMENT_PRESETS["nvidia"].scale_range == (0.5, 2.0)
    with pytest.raises(ValueError, match="image_interpolation"):
        sp.SegAugmentConfig(image_interpolation="nearest")
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        sp.seg_train_dataset([], "mmseg", global_batch_size=1, seed=0)
