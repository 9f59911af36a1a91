"""Top-down geometry: golden warp matrices (by hand), HRNet's 3-point construction, boxes, flips."""
import math

import cv2
import numpy as np
import pytest

from psa_jax.data import pose_transforms as T

R2 = math.sqrt(2) / 2


# ---------------------------------------------------------------- golden matrices, computed by hand
def test_standard_warp_identity():
    # a 192x256 box centred in a 192x256 output: nothing moves
    m = T.get_affine_transform((96, 128), (192, 256), 0, (192, 256))
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_standard_warp_scale():
    # 50 px box -> 200 px output: zoom 4, centre 100 -> 100: t = 100 - 4 * 100 = -300
    m = T.get_affine_transform((100, 100), (50, 50), 0, (200, 200))
    np.testing.assert_allclose(m, [[4, 0, -300], [0, 4, -300]], atol=1e-12)
    inv = T.get_affine_transform((100, 100), (50, 50), 0, (200, 200), inverse=True)
    np.testing.assert_allclose(inv, [[0.25, 0, 75], [0, 0.25, 75]], atol=1e-12)


def test_standard_warp_45_degrees():
    # A = 4 [[c, s], [-s, c]], c = s = sqrt(2)/2; t = (100, 100) - A (100, 100)
    m = T.get_affine_transform((100, 100), (50, 50), 45, (200, 200))
    a = 4 * R2
    np.testing.assert_allclose(m, [[a, a, 100 - 200 * a], [-a, a, 100]], atol=1e-9)
    np.testing.assert_allclose(m, [[2.8284271, 2.8284271, -465.6854249], [-2.8284271, 2.8284271, 100]], atol=1e-6)


def test_standard_warp_shift():
    # shift 0.1 of the 50 px box moves the source centre by 5 px: t = 100 - 4 * 105 = -320
    m = T.get_affine_transform((100, 100), (50, 50), 0, (200, 200), shift=(0.1, 0.1))
    np.testing.assert_allclose(m, [[4, 0, -320], [0, 4, -320]], atol=1e-12)


def test_udp_warp_scale_and_edges():
    # sx = (200 - 1) / 50 = 3.98; t = 3.98 * 25 - 3.98 * 100 = -298.5
    m = T.udp_warp_matrix((100, 100), (50, 50), 0, (200, 200))
    np.testing.assert_allclose(m, [[3.98, 0, -298.5], [0, 3.98, -298.5]], atol=1e-12)
    # UDP: the box edges land on the first and last pixel centres; the standard warp maps the
    # right edge one pixel beyond the last centre
    edges = np.array([[75.0, 75.0], [125.0, 125.0]])
    np.testing.assert_allclose(T.affine_points(edges, m), [[0, 0], [199, 199]], atol=1e-9)
    std = T.get_affine_transform((100, 100), (50, 50), 0, (200, 200))
    np.testing.assert_allclose(T.affine_points(edges, std), [[0, 0], [200, 200]], atol=1e-9)


def test_udp_warp_45_degrees():
    # A = 3.98 [[c, -s], [s, c]], t = (99.5, 99.5) - A (100, 100)
    m = T.udp_warp_matrix((100, 100), (50, 50), 45, (200, 200))
    a = 3.98 * R2
    np.testing.assert_allclose(m, [[a, -a, 99.5], [a, a, 99.5 - 200 * a]], atol=1e-9)
    np.testing.assert_allclose(m[1, 2], -463.3570, atol=1e-4)  # 99.5 - 3.98 * 141.4214


def test_udp_warp_is_the_inverse_of_udp_pose_get_warpmatrix():
    """UDP-Pose master `get_warpmatrix(theta, 2c, image_size - 1, s)` is a crop -> image map
    (used with WARP_INVERSE_MAP); restated here from its published formula."""

    def get_warpmatrix(theta, size_input, size_dst, size_target):
        theta = math.radians(theta)
        sx, sy = size_target[0] / size_dst[0], size_target[1] / size_dst[1]
        return np.array([
            [math.cos(theta) * sx, math.sin(theta) * sy,
             -0.5 * size_target[0] * math.cos(theta) - 0.5 * size_target[1] * math.sin(theta) + 0.5 * size_input[0]],
            [-math.sin(theta) * sx, math.cos(theta) * sy,
             0.5 * size_target[0] * math.sin(theta) - 0.5 * size_target[1] * math.cos(theta) + 0.5 * size_input[1]]])

    for c, s, r in [((320.5, 210.0), (180.0, 240.0), 0.0), ((100.0, 50.0), (60.0, 80.0), 37.0),
                    ((10.0, 400.0), (300.0, 400.0), -80.0)]:
        ref = get_warpmatrix(r, 2 * np.asarray(c), np.array([192.0, 256.0]) - 1, np.asarray(s))
        np.testing.assert_allclose(T.invert_affine(T.udp_warp_matrix(c, s, r, (192, 256))), ref, atol=1e-9)


def test_closed_form_equals_hrnet_three_point_construction():
    """HRNet `get_affine_transform` restated with its three points and cv2.getAffineTransform."""

    def three_point(center, scale, rot, out, inv=False):
        src_w = scale[0]
        rad = math.radians(rot)
        src_dir = np.array([0 * math.cos(rad) - (-0.5 * src_w) * math.sin(rad),
                            0 * math.sin(rad) + (-0.5 * src_w) * math.cos(rad)])
        src = np.zeros((3, 2))
        dst = np.zeros((3, 2))
        src[0], src[1] = center, np.asarray(center) + src_dir
        dst[0] = [out[0] * 0.5, out[1] * 0.5]
        dst[1] = dst[0] + [0, -0.5 * out[0]]
        third = lambda a, b: b + np.array([-(a - b)[1], (a - b)[0]])  # noqa: E731
        src[2], dst[2] = third(src[0], src[1]), third(dst[0], dst[1])
        pair = (np.float32(dst), np.float32(src)) if inv else (np.float32(src), np.float32(dst))
        return cv2.getAffineTransform(*pair)

    rng = np.random.default_rng(0)
    for _ in range(20):
        c = rng.uniform(0, 600, 2)
        s = rng.uniform(50, 400) * np.array([0.75, 1.0])
        r = rng.uniform(-90, 90)
        for out in [(192, 256), (48, 64)]:
            np.testing.assert_allclose(T.get_affine_transform(c, s, r, out), three_point(c, s, r, out),
                                       rtol=1e-4, atol=2e-3)
            np.testing.assert_allclose(T.get_affine_transform(c, s, r, out, inverse=True),
                                       three_point(c, s, r, out, inv=True), rtol=1e-4, atol=2e-3)


def test_warp_matrix_dispatch_and_errors():
    np.testing.assert_array_equal(T.warp_matrix("udp", (1, 2), (30, 40), 5, (48, 64)),
                                  T.udp_warp_matrix((1, 2), (30, 40), 5, (48, 64)))
    np.testing.assert_array_equal(T.warp_matrix("dark", (1, 2), (30, 40), 5, (48, 64)),
                                  T.get_affine_transform((1, 2), (30, 40), 5, (48, 64)))
    with pytest.raises(ValueError, match="codec"):
        T.warp_matrix("bogus", (1, 2), (30, 40), 0, (48, 64))
    with pytest.raises(ValueError, match="positive"):
        T.get_affine_transform((1, 2), (0, 0), 0, (48, 64))
    with pytest.raises(ValueError, match="positive"):
        T.udp_warp_matrix((1, 2), (np.nan, 3), 0, (48, 64))


# ---------------------------------------------------------------- boxes
def test_box_to_center_scale():
    c, s = T.box_to_center_scale([10, 20, 30, 80], 0.75)  # too narrow: w = 0.75 * 80 = 60
    np.testing.assert_allclose(c, [25, 60])
    np.testing.assert_allclose(s, [75, 100])  # (60, 80) * 1.25
    c, s = T.box_to_center_scale([0, 0, 100, 50], 0.75)  # too wide: h = 100 / 0.75
    np.testing.assert_allclose(c, [50, 25])
    np.testing.assert_allclose(s, [125, 125 / 0.75])
    c, s = T.box_to_center_scale([[0, 0, 30, 40], [0, 0, 60, 80]], 0.75, padding=1.0)  # batched, exact ratio
    np.testing.assert_allclose(s, [[30, 40], [60, 80]])


def test_clean_box_follows_hrnet():
    np.testing.assert_allclose(T.clean_box([-5, 10, 50, 20], 100, 100), [0, 10, 49, 19])
    np.testing.assert_allclose(T.clean_box([90, 90, 50, 50], 100, 100), [90, 90, 9, 9])
    assert T.clean_box([120, 10, 5, 5], 100, 100) is None  # right of the image
    np.testing.assert_allclose(T.clean_box([10, 10, 0, 0], 100, 100), [10, 10, 0, 0])  # kept by HRNet


# ---------------------------------------------------------------- flips and half body
def test_flip_permutation_and_fliplr_joints():
    perm = T.flip_permutation(17)
    assert perm[0] == 0 and perm[1] == 2 and perm[16] == 15
    np.testing.assert_array_equal(perm[perm], np.arange(17))  # a swap twice is the identity
    joints = np.zeros((17, 2))
    vis = np.zeros(17)
    joints[1], vis[1] = (2, 5), 1  # left eye, labelled
    joints[2], vis[2] = (7, 3), 0  # right eye, unlabelled
    out, v = T.fliplr_joints(joints, vis, width=10)
    np.testing.assert_allclose(out[2], [10 - 2 - 1, 5])  # became the right eye, x -> W - 1 - x
    np.testing.assert_allclose(out[1], [0, 0])  # unlabelled -> zeroed (HRNet multiplies by vis)
    assert v[2] == 1 and v[1] == 0
    np.testing.assert_allclose(T.affine_points([[2.0, 5.0]], T.flip_matrix(10)), [[7, 5]])


class _FixedNormal:
    def __init__(self, value):
        self.value = value

    def standard_normal(self):
        return self.value


def test_half_body_chooses_upper_or_lower_and_fixes_aspect():
    joints = np.stack([np.arange(17) * 2.0, np.arange(17) * 10.0], axis=1)
    vis = np.ones(17)
    c, s = T.half_body_center_scale(joints, vis, _FixedNormal(0.0), aspect_ratio=0.75)  # randn < 0.5: upper
    np.testing.assert_allclose(c, joints[:11].mean(0))
    # extent (20, 100): too narrow -> w = 75; x 1.5
    np.testing.assert_allclose(s, [75 * 1.5, 100 * 1.5])
    c, s = T.half_body_center_scale(joints, vis, _FixedNormal(1.0), aspect_ratio=0.75)  # lower body
    np.testing.assert_allclose(c, joints[11:].mean(0))
    vis_few = np.zeros(17)
    vis_few[[0]] = 1
    assert T.half_body_center_scale(joints, vis_few, _FixedNormal(0.0), aspect_ratio=0.75) is None


# ---------------------------------------------------------------- instance selection
def test_select_training_instances_counts_each_case():
    k = np.zeros((7, 17, 3))
    k[:, 0] = (50, 50, 2)
    k[3] = 0  # no labelled keypoints
    k[5, 1] = (150, 50, 2)  # a keypoint outside the 100x100 image: kept, counted
    bbox = np.array([[10, 10, 50, 50], [10, 10, 50, 50], [10, 10, 50, 50], [10, 10, 50, 50],
                     [10, 10, 0, 0], [10, 10, 50, 50], [200, 10, 5, 5]], float)
    area = np.array([100, 100, 0, 100, 100, 100, 100], float)
    crowd = np.array([0, 1, 0, 0, 0, 0, 0], bool)
    keep, boxes, counts = T.select_training_instances(bbox, k, area, crowd, 100, 100)
    np.testing.assert_array_equal(keep, [0, 5])
    np.testing.assert_allclose(boxes[0], [10, 10, 49, 49])
    assert counts == {"kept": 2, "crowd": 1, "zero_area": 1, "box_outside_image": 1, "no_labelled_keypoints": 1,
                      "degenerate_box": 1, "non_finite": 0, "keypoints_outside_image": 1}
    bbox[0, 0] = np.nan
    _, _, counts = T.select_training_instances(bbox, k, area, crowd, 100, 100)
    assert counts["non_finite"] == 1 and counts["kept"] == 1


# ---------------------------------------------------------------- the flip through the production TrainTransform
# COCO's left/right pairs, written out here (COCO `categories[0]['keypoints']` order, 0-based).
_COCO_PAIRS = {"left_eye": (1, 2), "left_ear": (3, 4), "left_shoulder": (5, 6), "left_elbow": (7, 8),
               "left_wrist": (9, 10), "left_hip": (11, 12), "left_knee": (13, 14), "left_ankle": (15, 16)}
_MIRROR = {0: 0}
for _a, _b in _COCO_PAIRS.values():
    _MIRROR[_a], _MIRROR[_b] = _b, _a


def _gaussian_peak(hm):
    """Sub-pixel (x, y) centre of a single Gaussian bump: log-parabola through the peak and its
    4-neighbours (exact for a Gaussian)."""
    y, x = np.unravel_index(np.argmax(hm), hm.shape)
    log = np.log(np.maximum(hm.astype(np.float64), 1e-30))

    def vertex(lm, l0, lp):
        return 0.5 * (lm - lp) / (lm - 2 * l0 + lp)

    return np.array([x + vertex(log[y, x - 1], log[y, x], log[y, x + 1]),
                     y + vertex(log[y - 1, x], log[y, x], log[y + 1, x])])


@pytest.mark.parametrize("codec", ["msra", "udp"])
def test_train_transform_flip_mirrors_the_crop_and_swaps_the_joints(codec):
    """TrainTransform with a forced flip (flip_prob 1, no scale/rotation/half body, padding 1) on a
    random (asymmetric) image: the crop is the mirror image of the box, and every labelled joint's
    heatmap sits in its mirror joint's channel (left <-> right) at the crop pixel that shows the
    joint's own image pixel.

    Geometry, by hand: a 48x48 input, box (bx, by, n, n) with n = 48 (standard warp: scale 48 ->
    zoom 1) or 47 (UDP: zoom (48 - 1) / 47 = 1). With the flip the centre becomes W - 1 - c_x and
    the crop samples the mirrored image `I(W - 1 - x)`, so crop pixel (x, y) shows image pixel
    (bx + n - x, by + y), and a joint at image (px, py) lands at crop (bx + n - px, py - by).
    """
    from psa_jax.data.pose_pipeline import PoseAugmentConfig, TrainTransform
    from psa_jax.data.pose_targets import PoseCodec

    rng = np.random.default_rng(7)
    height, width, bx, by = 90, 100, 30, 20
    n = 48 if codec == "msra" else 47
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    # 17 joints at distinct pixels well inside the box (crop 8..40, away from the heatmap border)
    cells = rng.choice(np.arange(9 * 9), 17, replace=False)
    px = bx + n - (8 + 4 * (cells % 9))
    py = by + 8 + 4 * (cells // 9)
    joints = np.zeros((17, 3))
    joints[:, 0], joints[:, 1], joints[:, 2] = px, py, 2
    joints[3, 2] = 0  # left ear unlabelled
    joints[16, 2] = 1  # right ankle labelled but occluded (still a target)
    instance = {"image": image, "box": np.array([bx, by, n, n], float), "joints": joints}
    augment = PoseAugmentConfig(half_body_prob=0.0, scale_factor=0.0, rotation_factor=0.0, rotation_prob=0.0,
                                flip=True, flip_prob=1.0)
    t = TrainTransform(PoseCodec(codec, (48, 48)), augment, padding=1.0, image_dtype="uint8")
    out = t(instance, np.random.default_rng(0))

    # the crop: the box's mirror image, pixel for pixel (uint8 RGB of the BGR image)
    xs = bx + n - np.arange(48)
    expected_crop = image[by:by + 48][:, xs][..., ::-1]
    np.testing.assert_array_equal(out["image"], expected_crop)

    # the joints: channel k holds joint _MIRROR[k]
    labelled = joints[:, 2] > 0
    expected_weight = np.array([labelled[_MIRROR[k]] for k in range(17)], np.float32)
    np.testing.assert_array_equal(out["target_weight"], expected_weight)
    assert out["target_weight"][4] == 0 and out["target_weight"][3] == 1  # the unlabelled left ear -> channel 4
    stride = 4.0 if codec == "msra" else 47 / 11  # UDP: (48 - 1) / (12 - 1)
    for k in range(17):
        j = _MIRROR[k]
        if not labelled[j]:
            assert not out["target"][..., k].any(), k
            continue
        crop_xy = _gaussian_peak(out["target"][..., k]) * stride
        np.testing.assert_allclose(crop_xy, [bx + n - px[j], py[j] - by], atol=1e-3, err_msg=f"channel {k}")
        cx, cy = np.round(crop_xy).astype(int)
        # the pixel under the joint's peak is the joint's own image pixel (through the mirror)
        np.testing.assert_array_equal(out["image"][cy, cx], image[py[j], px[j], ::-1], err_msg=f"channel {k}")
