"""Heatmap targets against NumPy restatements of the reference loops (HRNet, DarkPose, UDP-Pose)."""
import numpy as np
import pytest

from psa_jax.data.pose_targets import PoseCodec, default_sigma, encode_heatmaps, heatmap_size


def _reference_targets(joints, vis, image_size, heatmap_size_wh, sigma, mode):
    """The reference `generate_target` loops, restated (CHW output, transposed to HWC at the end).

    msra: HRNet JointsDataset.generate_target; udp: UDP-Pose master generate_target ('gaussian');
    dark: DarkPose generate_target + adjust_target_weight (joints / stride = its heatmap affine).
    """
    k = len(joints)
    w_hm, h_hm = heatmap_size_wh
    weight = np.asarray(vis, np.float32).copy()
    target = np.zeros((k, h_hm, w_hm), np.float32)
    tmp = sigma * 3
    if mode == "udp":
        fs = (np.asarray(image_size, float) - 1.0) / (np.asarray(heatmap_size_wh, float) - 1.0)
    else:
        fs = np.asarray(image_size, float) / np.asarray(heatmap_size_wh, float)
    for j in range(k):
        if mode == "dark":
            mx, my = joints[j][0] / fs[0], joints[j][1] / fs[1]
            ul, br = [int(mx - tmp), int(my - tmp)], [int(mx + tmp + 1), int(my + tmp + 1)]
            if ul[0] >= w_hm or ul[1] >= h_hm or br[0] < 0 or br[1] < 0:
                weight[j] = 0
            if weight[j] == 0:
                continue
            x = np.arange(0, w_hm, 1, np.float32)
            y = np.arange(0, h_hm, 1, np.float32)[:, None]
            target[j] = np.exp(-((x - mx) ** 2 + (y - my) ** 2) / (2 * sigma ** 2))
            continue
        mx, my = int(joints[j][0] / fs[0] + 0.5), int(joints[j][1] / fs[1] + 0.5)
        ul, br = [int(mx - tmp), int(my - tmp)], [int(mx + tmp + 1), int(my + tmp + 1)]
        if ul[0] >= w_hm or ul[1] >= h_hm or br[0] < 0 or br[1] < 0:
            weight[j] = 0
            continue
        size = 2 * tmp + 1
        x = np.arange(0, size, 1, np.float32)
        y = x[:, None]
        x0 = y0 = size // 2
        if mode == "udp":
            x0 = x0 + joints[j][0] / fs[0] - mx
            y0 = y0 + joints[j][1] / fs[1] - my
        g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2))
        gx = max(0, -ul[0]), min(br[0], w_hm) - ul[0]
        gy = max(0, -ul[1]), min(br[1], h_hm) - ul[1]
        ix = max(0, ul[0]), min(br[0], w_hm)
        iy = max(0, ul[1]), min(br[1], h_hm)
        if weight[j] > 0.5:
            target[j][iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]
    return target.transpose(1, 2, 0), weight


@pytest.mark.parametrize("mode", ["msra", "dark", "udp"])
@pytest.mark.parametrize("input_hw,sigma", [((256, 192), 2), ((384, 288), 3)])
def test_targets_match_reference_loops(mode, input_hw, sigma):
    rng = np.random.default_rng(0)
    h, w = input_hw
    for _ in range(25):
        joints = rng.uniform(-40, [w + 40, h + 40], size=(17, 2))  # some off the crop
        vis = (rng.random(17) > 0.2).astype(np.float32)
        ref, ref_w = _reference_targets(joints, vis, (w, h), (w // 4, h // 4), sigma, mode)
        out, out_w = encode_heatmaps(mode, joints, vis, (w, h), (w // 4, h // 4), sigma)
        assert out.shape == (h // 4, w // 4, 17) and out.dtype == np.float32
        np.testing.assert_array_equal(out_w, ref_w)
        np.testing.assert_allclose(out, ref, atol=2e-7)


def test_weights_zero_for_unlabelled_and_far_joints():
    joints = np.array([[96.0, 128.0], [96.0, 128.0], [-100.0, 128.0], [500.0, 128.0], [96.0, 1000.0]])
    vis = np.array([1, 0, 1, 1, 1])
    for mode in ("msra", "dark", "udp"):
        hm, wt = encode_heatmaps(mode, joints, vis, (192, 256), (48, 64), 2.0)
        np.testing.assert_array_equal(wt, [1, 0, 0, 0, 0])
        assert hm[..., 1:].max() == 0  # nothing painted for weight-0 joints
        assert hm[..., 0].max() > 0.9  # peak 1 at the (sub-pixel) centre


def test_peak_positions_per_codec():
    # x = 101 input px: msra rounds int(101/4 + .5) = 25; dark puts it at 25.25; udp at 101 * 47 / 191
    joints = np.array([[101.0, 130.0]])
    hm, _ = encode_heatmaps("msra", joints, [1], (192, 256), (48, 64), 2.0)
    assert np.unravel_index(hm[..., 0].argmax(), hm.shape[:2]) == (33, 25)
    for mode, cx in (("dark", 101 / 4), ("udp", 101 * 47 / 191)):
        hm, _ = encode_heatmaps(mode, joints, [1], (192, 256), (48, 64), 2.0)
        row = hm[33, :, 0].astype(np.float64)
        # the log of a Gaussian is a parabola: its vertex from three samples around the maximum
        i = int(row.argmax())
        l0, l1, l2 = np.log(row[i - 1:i + 2])
        assert i + 0.5 * (l0 - l2) / (l0 - 2 * l1 + l2) == pytest.approx(cx, abs=1e-4)
    # MSRA support is the 6 sigma + 1 window; DARK covers the whole map
    hm, _ = encode_heatmaps("msra", joints, [1], (192, 256), (48, 64), 2.0)
    assert (hm[..., 0] > 0).sum() == 13 * 13 and hm[33, 25 + 7, 0] == 0
    hm, _ = encode_heatmaps("dark", joints, [1], (192, 256), (48, 64), 2.0)
    assert hm[33, 25 + 7, 0] == pytest.approx(np.exp(-(6.75 ** 2 + 0.5 ** 2) / 8), rel=1e-5)  # centre (25.25, 32.5)


def test_default_codec_is_hrnet_256x192():
    c = PoseCodec("msra")
    assert c.input_size == (256, 192) and c.heatmap_size == (64, 48) and c.sigma == 2.0
    assert c.input_wh == (192, 256) and c.heatmap_wh == (48, 64)
    assert c == PoseCodec("msra", (256, 192), sigma=2.0, stride=4)


@pytest.mark.parametrize("name", ["msra", "dark", "udp"])
def test_warp_default_rotation_is_zero(name):
    c = PoseCodec(name)
    center, scale = (100.0, 50.0), (96.0, 128.0)
    np.testing.assert_array_equal(c.warp(center, scale), c.warp(center, scale, 0.0))
    np.testing.assert_array_equal(c.warp(center, scale, to_heatmap=True),
                                  c.warp(center, scale, 0.0, to_heatmap=True))
    assert not np.allclose(c.warp(center, scale), c.warp(center, scale, 1.0))


def test_warp_default_matches_hand_written_affine():
    center = (100.0, 50.0)
    # msra/dark: dst = (out_w / scale_w) (src - c) + (out_w / 2, out_h / 2)
    # input 192x256, box 96 wide: zoom 2 -> x' = 2 (x - 100) + 96, y' = 2 (y - 50) + 128
    np.testing.assert_allclose(PoseCodec("msra").warp(center, (96.0, 128.0)), [[2, 0, -104], [0, 2, 28]], atol=1e-12)
    # heatmap 48x64: zoom 0.5 -> x' = 0.5 (x - 100) + 24, y' = 0.5 (y - 50) + 32
    np.testing.assert_allclose(PoseCodec("dark").warp(center, (96.0, 128.0), to_heatmap=True),
                               [[0.5, 0, -26], [0, 0.5, 7]], atol=1e-12)
    # udp: dst = ((out - 1) / scale) (src - c) + (out - 1) / 2; a 191x255 box -> zoom 1
    np.testing.assert_allclose(PoseCodec("udp").warp(center, (191.0, 255.0)), [[1, 0, -4.5], [0, 1, 77.5]],
                               atol=1e-12)


def test_codec_object_and_sizes():
    c = PoseCodec("udp", (384, 288))
    assert c.sigma == 3.0 and c.heatmap_size == (96, 72) and c.input_wh == (288, 384) and c.heatmap_wh == (72, 96)
    assert default_sigma((256, 192)) == 2.0 and c.aspect_ratio == pytest.approx(0.75)
    assert PoseCodec("dark", (256, 192)) == PoseCodec("dark", (256, 192), sigma=2)
    with pytest.raises(ValueError, match="codec"):
        PoseCodec("offset")
    with pytest.raises(ValueError, match="divisible"):
        heatmap_size((250, 192))
    with pytest.raises(ValueError, match="codec"):
        encode_heatmaps("gauss", np.zeros((1, 2)), [1], (192, 256), (48, 64), 2)
