"""Flip test: flipped-sample round trips on the real COCO sample, the shift convention, wiring."""
import numpy as np
import pytest

from psa_jax.data.pose_pipeline import build_coco_keypoints, flip_joints_in_crop, make_eval_data
from psa_jax.data.pose_targets import PoseCodec
from psa_jax.evaluation.flip_averaging import (
    average_with_flipped, default_shift_heatmap, flip_back, flip_images, flip_test)
from psa_jax.evaluation.keypoint_decoding import decode_heatmaps


@pytest.fixture(scope="module")
def sample_data_dir(tmp_path_factory, coco_sample_dir):
    data_dir = tmp_path_factory.mktemp("coco_keypoints")
    build_coco_keypoints(coco_sample_dir, data_dir)
    return data_dir


def _crop_joints(data_dir, codec):
    data = make_eval_data(data_dir, boxes="gt", codec=codec, progress=False)
    return data.codec, np.stack([data.transform(data.source[i])["joints"] for i in range(len(data.source))])


def test_flip_back_is_an_involution_and_swaps_pairs():
    rng = np.random.default_rng(0)
    hm = rng.random((2, 8, 6, 17)).astype(np.float32)
    np.testing.assert_array_equal(flip_back(flip_back(hm)), hm)
    np.testing.assert_array_equal(flip_back(hm)[..., 1], hm[:, :, ::-1, 2])  # left eye <- mirrored right eye
    np.testing.assert_array_equal(flip_back(hm)[..., 0], hm[:, :, ::-1, 0])  # nose stays
    images = rng.random((2, 8, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(flip_images(flip_images(images)), images)


@pytest.mark.parametrize("name", ["msra", "dark", "udp"])
def test_flipped_sample_decodes_to_the_unflipped_result(sample_data_dir, name):
    """Targets of the mirrored crop, flipped back, decode where the unflipped targets decode:
    exactly for UDP; 0.75 heatmap px to the left for the standard warp (HRNet's stride-4
    misalignment), which the 1 px shift turns into +0.25 px."""
    codec, joints = _crop_joints(sample_data_dir, name)
    assert len(joints) == 12
    vis = joints[..., 2] > 0
    hm = np.stack([codec.encode(j[:, :2], j[:, 2])[0] for j in joints])
    flipped = flip_joints_in_crop(joints, codec.input_wh[0])
    hm_f = np.stack([codec.encode(j[:, :2], j[:, 2])[0] for j in flipped])
    base, _ = decode_heatmaps(hm, name)
    back, _ = decode_heatmaps(flip_back(hm_f), name)
    # joints whose Gaussians sit well inside the heatmap (border effects aside)
    w = codec.heatmap_wh[0]
    h = codec.heatmap_wh[1]
    inner = vis & (base[..., 0] > 3) & (base[..., 0] < w - 4) & (base[..., 1] > 3) & (base[..., 1] < h - 4)
    assert inner.sum() > 100
    dx = (back - base)[..., 0][inner]
    dy = (back - base)[..., 1][inner]
    np.testing.assert_allclose(dy, 0, atol=1e-5)
    if name == "udp":
        np.testing.assert_allclose(dx, 0, atol=1e-5)  # float32 crop coordinates
    elif name == "dark":
        np.testing.assert_allclose(dx, -0.75, atol=1e-3)
    else:  # msra rounds both centres to whole pixels: -0.75 on average, never more than 1 px off
        assert abs(dx.mean() + 0.75) < 0.2 and np.all(np.abs(dx + 0.75) <= 0.75)
    if name != "udp":
        shifted = flip_back(hm_f)  # HRNet SHIFT_HEATMAP: out[..., 1:] = out[..., :-1]
        shifted[:, :, 1:] = shifted[:, :, :-1].copy()
        dx_shift = (decode_heatmaps(shifted, name)[0] - base)[..., 0][inner]
        if name == "dark":
            np.testing.assert_allclose(dx_shift, 0.25, atol=1e-3)
        else:
            assert abs(dx_shift.mean() - 0.25) < 0.2


def test_flipped_sample_combined_maps_decode_to_the_unflipped_result(sample_data_dir):
    """udp_combined on the real sample: the mirrored crop's maps, flipped back (x offsets negated,
    joints swapped), decode where the crop's own maps decode, and so does their flip-test average."""
    codec, joints = _crop_joints(sample_data_dir, "udp_combined")
    vis = joints[..., 2] > 0
    maps = np.stack([codec.encode(j[:, :2], j[:, 2])[0] for j in joints])
    flipped = flip_joints_in_crop(joints, codec.input_wh[0])
    maps_f = np.stack([codec.encode(j[:, :2], j[:, 2])[0] for j in flipped])
    base, _ = decode_heatmaps(maps, codec)
    back, _ = decode_heatmaps(flip_back(maps_f, codec="udp_combined"), codec)
    avg = average_with_flipped(maps, maps_f, shift_heatmap=default_shift_heatmap("udp_combined"), codec="udp_combined")
    averaged, _ = decode_heatmaps(avg, codec)
    assert vis.sum() > 100
    np.testing.assert_allclose(back[vis], base[vis], atol=1e-4)
    np.testing.assert_allclose(averaged[vis], base[vis], atol=1e-4)
    # without the combined layout the x offsets keep the mirrored sign and the channels mix: wrong
    wrong, _ = decode_heatmaps(average_with_flipped(maps, maps_f, shift_heatmap=False), codec)
    assert np.abs(wrong[vis] - base[vis]).max() > 1.0


def test_shift_defaults_follow_the_references():
    assert default_shift_heatmap("msra") and default_shift_heatmap("dark") and not default_shift_heatmap("udp")
    assert not default_shift_heatmap("udp_combined")  # mmpose UDP combined configs: shift_heatmap=False
    with pytest.raises(ValueError):
        default_shift_heatmap("x")


def test_flip_test_averages_the_mirrored_prediction():
    rng = np.random.default_rng(1)
    images = rng.random((2, 16, 12, 3)).astype(np.float32)

    def predict(x):  # any deterministic "model": heatmaps from the first input channel, per joint
        base = x[:, ::4, ::4, 0]
        return np.stack([base * (k + 1) for k in range(17)], axis=-1)

    out = flip_test(predict, images, shift_heatmap=True)
    a = predict(images)
    b = flip_back(predict(images[:, :, ::-1]))
    b[:, :, 1:] = b[:, :, :-1].copy()
    np.testing.assert_allclose(out, (a + b) / 2)
    out_udp = flip_test(predict, images, shift_heatmap=False)
    np.testing.assert_allclose(out_udp, (a + flip_back(predict(images[:, :, ::-1]))) / 2)
    np.testing.assert_allclose(average_with_flipped(a, predict(flip_images(images)), shift_heatmap=False), out_udp)


def test_flip_joints_in_crop():
    codec = PoseCodec("udp", (256, 192))
    j = np.zeros((17, 3), np.float32)
    j[1] = (10, 20, 1)  # left eye
    f = flip_joints_in_crop(j, codec.input_wh[0])
    np.testing.assert_allclose(f[2], [181, 20, 1])  # right eye at 191 - 10
    np.testing.assert_allclose(f[1], [0, 0, 0])
    np.testing.assert_allclose(flip_joints_in_crop(f, 192), j)


# COCO's 17 joints and their left/right mirror, written out here (independent of the module's pairs).
_COCO_MIRROR = {0: 0,                    # nose
                1: 2, 2: 1, 3: 4, 4: 3,  # eyes, ears
                5: 6, 6: 5, 7: 8, 8: 7, 9: 10, 10: 9,  # shoulders, elbows, wrists
                11: 12, 12: 11, 13: 14, 14: 13, 15: 16, 16: 15}  # hips, knees, ankles


def _flip_back_by_hand(hm):
    """out[b, y, x, k] = hm[b, y, w - 1 - x, mirror(k)], element by element."""
    _, _, w, k = hm.shape
    out = np.empty_like(hm)
    for c in range(k):
        for x in range(w):
            out[:, :, x, c] = hm[:, :, w - 1 - x, _COCO_MIRROR[c]]
    return out


def _shift_by_hand(hm):
    """HRNet SHIFT_HEATMAP: every column moves one heatmap pixel right, column 0 keeps its value."""
    out = hm.copy()
    for x in range(hm.shape[2] - 1, 0, -1):
        out[:, :, x] = hm[:, :, x - 1]
    return out


def test_flip_back_and_flip_test_match_a_hand_written_mirror_and_channel_swap():
    """Independent expectation: mirror along w and COCO's left/right channel swap written out above;
    shift convention (HRNet `flip_back` + `SHIFT_HEATMAP`: shift right by one heatmap pixel for the
    standard warp, msra and dark; none for UDP, whose flip is exact)."""
    rng = np.random.default_rng(3)
    hm = rng.random((2, 5, 7, 17)).astype(np.float32)
    np.testing.assert_array_equal(flip_back(hm), _flip_back_by_hand(hm))
    # one labelled peak: the left wrist (9) at heatmap x = 1 in the mirrored input's maps comes back
    # as the right wrist (10) at x = w - 1 - 1 (+1 with the shift)
    one = np.zeros((1, 5, 7, 17), np.float32)
    one[0, 2, 1, 9] = 1.0
    for name, dx in (("msra", 1), ("dark", 1), ("udp", 0)):
        avg = average_with_flipped(np.zeros_like(one), one, shift_heatmap=default_shift_heatmap(name))
        expected = np.zeros_like(one)
        expected[0, 2, 7 - 1 - 1 + dx, 10] = 0.5
        np.testing.assert_array_equal(avg, expected, err_msg=name)

    images = rng.random((2, 16, 12, 3)).astype(np.float32)
    weights = rng.random(17).astype(np.float32)

    def predict(x):  # per-joint heatmaps from a left-right asymmetric function of the input
        base = x[:, ::4, ::4, 0] + 2 * x[:, ::4, 1::4, 1]
        return base[..., None] * weights

    a = predict(images)
    mirrored = predict(images[:, :, ::-1].copy())
    for shift in (True, False):
        back = _flip_back_by_hand(mirrored)
        if shift:
            back = _shift_by_hand(back)
        np.testing.assert_allclose(flip_test(predict, images, shift_heatmap=shift), (a + back) / 2, rtol=1e-6)
        np.testing.assert_allclose(average_with_flipped(a, mirrored, shift_heatmap=shift), (a + back) / 2, rtol=1e-6)
    np.testing.assert_array_equal(flip_images(images), images[:, :, ::-1])
