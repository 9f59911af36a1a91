"""Heatmap decoding against restated reference loops, sub-pixel round trips, inverse warps."""
import math

import cv2
import numpy as np
import pytest

from psa_jax.data.pose_targets import PoseCodec
from psa_jax.data.pose_transforms import affine_points
from psa_jax.evaluation import keypoint_decoding as D


# ---------------------------------------------------------------- reference restatements (NCHW, loops)
def _ref_max_preds(hm):
    b, k, _, w = hm.shape
    flat = hm.reshape(b, k, -1)
    idx = np.argmax(flat, 2)
    maxvals = np.amax(flat, 2)
    preds = np.stack([idx % w, np.floor(idx / w)], -1).astype(np.float32)
    preds *= (maxvals > 0)[..., None]
    return preds, maxvals


def _ref_msra(hm):
    """HRNet lib/core/inference.py get_final_preds (POST_PROCESS) without transform_preds."""
    coords, maxvals = _ref_max_preds(hm)
    h, w = hm.shape[2:]
    for n in range(coords.shape[0]):
        for p in range(coords.shape[1]):
            m = hm[n][p]
            px, py = int(math.floor(coords[n][p][0] + 0.5)), int(math.floor(coords[n][p][1] + 0.5))
            if 1 < px < w - 1 and 1 < py < h - 1:
                diff = np.array([m[py][px + 1] - m[py][px - 1], m[py + 1][px] - m[py - 1][px]])
                coords[n][p] += np.sign(diff) * .25
    return coords, maxvals


def _ref_dark(hm, kernel=11):
    """DarkPose lib/core/inference.py: gaussian_blur + log + taylor."""
    coords, maxvals = _ref_max_preds(hm)
    hm = hm.copy()
    border = (kernel - 1) // 2
    b, k, h, w = hm.shape
    for i in range(b):
        for j in range(k):
            origin_max = np.max(hm[i, j])
            dr = np.zeros((h + 2 * border, w + 2 * border))
            dr[border:-border, border:-border] = hm[i, j].copy()
            dr = cv2.GaussianBlur(dr, (kernel, kernel), 0)
            hm[i, j] = dr[border:-border, border:-border].copy()
            hm[i, j] *= origin_max / np.max(hm[i, j])
    hm = np.log(np.maximum(hm, 1e-10))
    coords = coords.astype(np.float64)
    for n in range(b):
        for p in range(k):
            m, px, py = hm[n][p], int(coords[n, p, 0]), int(coords[n, p, 1])
            if 1 < px < w - 2 and 1 < py < h - 2:
                dx = 0.5 * (m[py][px + 1] - m[py][px - 1])
                dy = 0.5 * (m[py + 1][px] - m[py - 1][px])
                dxx = 0.25 * (m[py][px + 2] - 2 * m[py][px] + m[py][px - 2])
                dxy = 0.25 * (m[py + 1][px + 1] - m[py - 1][px + 1] - m[py + 1][px - 1] + m[py - 1][px - 1])
                dyy = 0.25 * (m[py + 2][px] - 2 * m[py][px] + m[py - 2][px])
                if dxx * dyy - dxy ** 2 != 0:
                    hess = np.array([[dxx, dxy], [dxy, dyy]])
                    coords[n, p] += -np.linalg.inv(hess) @ np.array([dx, dy])
    return coords, maxvals


def _ref_udp(hm, kernel=7):
    """UDP-Pose master lib/core/inference.py `post` (float32 maps, as the model output)."""
    coords, maxvals = _ref_max_preds(hm)
    hm = hm.copy()
    b, k, h, w = hm.shape
    for i in range(b):
        for j in range(k):
            m = hm[i, j]
            maxori = np.max(m)
            m = cv2.GaussianBlur(m, (kernel, kernel), 0)
            mx, mn = np.max(m), np.min(m)
            hm[i, j] = (m - mn) / (mx - mn) * maxori
    hm = np.log(np.clip(hm, 0.001, 50))
    pad = np.pad(hm.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    out = coords.astype(np.float64).copy()
    for i in range(b):
        for j in range(k):
            x, y = int(coords[i, j, 0]) + 1, int(coords[i, j, 1]) + 1
            m = pad[i, j]
            i0, ix1, ix1_, iy1, iy1_ = m[y, x], m[y, x + 1], m[y, x - 1], m[y + 1, x], m[y - 1, x]
            dx, dy = 0.5 * (ix1 - ix1_), 0.5 * (iy1 - iy1_)
            dxx, dyy = ix1 - 2 * i0 + ix1_, iy1 - 2 * i0 + iy1_
            dxy = 0.5 * (m[y + 1, x + 1] - ix1 - iy1 + i0 + i0 - ix1_ - iy1_ + m[y - 1, x - 1])
            try:
                inv = np.linalg.inv(np.array([[dxx, dxy], [dxy, dyy]]))
            except np.linalg.LinAlgError:
                inv = np.zeros((2, 2))
            out[i, j] = coords[i, j] - inv @ np.array([dx, dy])
    return out, maxvals


def _random_heatmaps(rng, b=3, h=64, w=48, k=17, sigma=2.0):
    """Blurred Gaussian bumps + noise, peaks anywhere (including the borders)."""
    ys, xs = np.mgrid[0:h, 0:w]
    hm = np.zeros((b, k, h, w), np.float32)
    for i in range(b):
        for j in range(k):
            cx, cy = rng.uniform(-2, w + 1), rng.uniform(-2, h + 1)
            hm[i, j] = rng.uniform(0.2, 1.0) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
    hm += rng.normal(0, 0.01, hm.shape).astype(np.float32)
    return hm


@pytest.mark.parametrize("name", ["msra", "dark", "udp"])
def test_decoders_match_reference_loops(name):
    rng = np.random.default_rng(1)
    hm = _random_heatmaps(rng)
    ref = {"msra": _ref_msra, "dark": _ref_dark, "udp": _ref_udp}[name](hm)
    coords, scores = D.decode_heatmaps(np.moveaxis(hm, 1, -1), name)
    np.testing.assert_allclose(scores, ref[1], rtol=0, atol=0)
    tol = {"msra": 0.0, "dark": 5e-6, "udp": 1e-5}[name]  # the references round intermediate maps to float32
    np.testing.assert_allclose(coords, ref[0], atol=tol)


def _border_peak_heatmaps(h=16, w=12, sigma=1.5):
    """One bump per map with its argmax on every row / column near the borders (0, 1, 2, n-3, n-2, n-1)
    crossed with an interior column / row; the centre sits +0.3 px off the grid so the fit has work to do."""
    rows, cols = [0, 1, 2, h - 3, h - 2, h - 1], [0, 1, 2, w - 3, w - 2, w - 1]
    peaks = [(5, r) for r in rows] + [(c, 7) for c in cols] + [(c, r) for r in (1, h - 2) for c in (1, w - 2)]
    ys, xs = np.mgrid[0:h, 0:w]
    hm = np.stack([np.exp(-((xs - x - 0.3) ** 2 + (ys - y - 0.3) ** 2) / (2 * sigma ** 2)) for x, y in peaks])
    return hm[None].astype(np.float32), np.array(peaks, np.float64)


@pytest.mark.parametrize("name", ["msra", "dark", "udp"])
def test_border_peaks_match_reference_loops(name):
    hm, peaks = _border_peak_heatmaps()
    ref = {"msra": _ref_msra, "dark": _ref_dark, "udp": _ref_udp}[name](hm)
    coords, scores = D.decode_heatmaps(np.moveaxis(hm, 1, -1), name)
    np.testing.assert_array_equal(_ref_max_preds(hm)[0][0], peaks)  # each argmax sits where intended
    np.testing.assert_allclose(scores, ref[1], rtol=0, atol=0)
    tol = {"msra": 0.0, "dark": 5e-6, "udp": 1e-5}[name]
    np.testing.assert_allclose(coords, ref[0], atol=tol)


def test_dark_leaves_peaks_within_two_pixels_of_the_border_unrefined():
    """DarkPose refines only 1 < px < w - 2 and 1 < py < h - 2: argmax rows/cols 0, 1, n-2, n-1 stay integer."""
    hm, peaks = _border_peak_heatmaps()
    h, w = hm.shape[2:]
    coords, _ = D.decode_dark(np.moveaxis(hm, 1, -1))
    refined = (peaks[:, 0] > 1) & (peaks[:, 0] < w - 2) & (peaks[:, 1] > 1) & (peaks[:, 1] < h - 2)
    assert refined.sum() == 4 and (~refined).sum() == len(peaks) - 4  # rows 2, h-3 and columns 2, w-3
    np.testing.assert_array_equal(coords[0, ~refined], peaks[~refined])
    assert np.all(np.abs(coords[0, refined] - peaks[refined]).max(-1) > 0.05)


def test_argmax_edge_cases():
    hm = np.zeros((1, 8, 8, 3), np.float32)
    hm[0, 5, 3, 1] = 2.0  # a single peak; neighbours equal -> no quarter offset
    hm[0, :, :, 2] = -1.0  # all negative -> (0, 0), as HRNet get_max_preds
    hm[0, 2, 4, 0], hm[0, 2, 5, 0], hm[0, 3, 4, 0] = 1.0, 0.5, 0.2  # offsets towards +x and +y
    coords, scores = D.decode_msra(hm)
    np.testing.assert_allclose(coords[0], [[4.25, 2.25], [3, 5], [0, 0]])
    np.testing.assert_allclose(scores[0], [1.0, 2.0, -1.0])
    with pytest.raises(ValueError, match="NaN"):
        D.decode_msra(np.full((1, 4, 4, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match="NHWC"):
        D.decode_dark(np.zeros((4, 4, 1), np.float32))


def test_constant_maps_decode_without_nan():
    hm = np.zeros((2, 16, 12, 17), np.float32)
    for name in ("msra", "dark", "udp"):
        coords, scores = D.decode_heatmaps(hm, name)
        assert np.all(np.isfinite(coords)) and np.all(scores == 0)


@pytest.mark.parametrize("name", ["dark", "udp"])
def test_subpixel_round_trip(name):
    """encode at sub-pixel input positions -> decode: < 0.05 heatmap px away from the borders."""
    codec = PoseCodec(name, (256, 192))
    rng = np.random.default_rng(2)
    joints = rng.uniform([30, 30], [162, 226], size=(17, 2))
    hm, w = codec.encode(joints, np.ones(17))
    coords, scores = D.decode_heatmaps(hm[None], name)
    stride = (np.array(codec.input_wh) - 1) / (np.array(codec.heatmap_wh) - 1) if name == "udp" else 4.0
    np.testing.assert_allclose(coords[0], joints / stride, atol=0.05)
    assert np.all(scores > 0.9)


def test_msra_round_trip_is_within_quantisation():
    codec = PoseCodec("msra", (256, 192))
    rng = np.random.default_rng(3)
    joints = rng.uniform([30, 30], [162, 226], size=(17, 2))
    hm, _ = codec.encode(joints, np.ones(17))
    coords, _ = D.decode_msra(hm[None])
    # centre rounded to a pixel, symmetric neighbours -> no quarter offset: error <= 0.5 heatmap px
    np.testing.assert_allclose(coords[0], np.floor(joints / 4 + 0.5))


@pytest.mark.parametrize("name", ["msra", "dark", "udp"])
def test_heatmaps_to_image_inverts_the_warp(name):
    codec = PoseCodec(name, (256, 192))
    rng = np.random.default_rng(4)
    center = rng.uniform(100, 400, size=(5, 2))
    scale = rng.uniform(50, 300, size=(5, 1)) * np.array([0.75, 1.0])
    pts = center[:, None, :] + rng.uniform(-40, 40, size=(5, 17, 2))
    hm_pts = np.stack([affine_points(pts[i], codec.warp(center[i], scale[i], 0.0, to_heatmap=True)) for i in range(5)])
    np.testing.assert_allclose(D.heatmaps_to_image(hm_pts, center, scale, codec), pts, atol=1e-9)


def test_transform_preds_conventions():
    """HRNet transform_preds (x_hm -> x * s / w + c - s / 2) vs UDP-Pose (x * s / (w - 1) + c - s / 2)."""
    c, s = np.array([[100.0, 200.0]]), np.array([[96.0, 128.0]])
    pts = np.array([[[0.0, 0.0], [47.0, 63.0], [24.0, 32.0]]])
    std = D.heatmaps_to_image(pts, c, s, PoseCodec("msra", (256, 192)))
    np.testing.assert_allclose(std[0], [[52, 136], [52 + 47 * 2, 136 + 63 * 2], [100, 200]])
    udp = D.heatmaps_to_image(pts, c, s, PoseCodec("udp", (256, 192)))
    np.testing.assert_allclose(udp[0], [[52, 136], [148, 264], [52 + 24 * 96 / 47, 136 + 32 * 128 / 63]])


def test_keypoints_from_heatmaps_checks_size():
    codec = PoseCodec("udp", (256, 192))
    with pytest.raises(ValueError, match="heatmap size"):
        D.keypoints_from_heatmaps(np.zeros((1, 32, 24, 17), np.float32), np.zeros((1, 2)), np.ones((1, 2)), codec)
    out = D.keypoints_from_heatmaps(np.zeros((2, 64, 48, 17), np.float32), np.zeros((2, 2)), np.full((2, 2), 100.0),
                                    codec)
    assert out.shape == (2, 17, 3)
