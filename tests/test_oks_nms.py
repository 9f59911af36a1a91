"""OKS, OKS-NMS and rescoring on hand-built cases."""
import math

import numpy as np
import pytest

from psa_jax.evaluation.coco_eval import keypoint_results, nms_per_image, rescore
from psa_jax.evaluation.oks_nms import COCO_KEYPOINT_SIGMAS, oks_iou, oks_nms


def _pose(x, y, score=1.0, k=17):
    p = np.zeros((k, 3))
    p[:, 0] = x + np.arange(k)  # a spread-out pose
    p[:, 1] = y + 2 * np.arange(k)
    p[:, 2] = score
    return p


def test_oks_by_hand():
    sig = np.full(17, 0.1)  # (2 sigma)^2 = 0.04
    g = _pose(0, 0)
    d = g.copy()
    d[:, 0] += 1.0  # every joint 1 px off
    # e = 1 / 0.04 / (mean area 100) / 2 = 0.125 for every joint
    assert oks_iou(g, d[None], 100.0, np.array([100.0]), sig)[0] == pytest.approx(math.exp(-0.125), rel=1e-12)
    assert oks_iou(g, g[None], 100.0, np.array([100.0]))[0] == pytest.approx(1.0)
    # COCO sigmas, joint-wise: mean of exp(-1 / (2 sigma_k)^2 / 100 / 2)
    want = np.mean(np.exp(-1.0 / (2 * COCO_KEYPOINT_SIGMAS) ** 2 / 100 / 2))
    assert oks_iou(g, d[None], 100.0, np.array([100.0]))[0] == pytest.approx(want, rel=1e-12)
    # a visibility threshold keeps only joints confident in both poses
    d2 = d.copy()
    d2[:8, 2] = 0.1
    d2[:8, 0] += 100  # far off, but ignored
    assert oks_iou(g, d2[None], 100.0, np.array([100.0]), sig, vis_threshold=0.2)[0] == pytest.approx(math.exp(-0.125))


def test_nms_suppresses_duplicates_and_keeps_distinct_people():
    a = _pose(0, 0)
    a_dup = a + [0.3, -0.2, 0]  # the same person, slightly off: OKS ~ 1 > 0.9
    b = _pose(200, 0)  # someone else
    b_near = _pose(200 + 15, 10)  # a neighbour overlapping b's box but not its joints
    poses = np.stack([a_dup, a, b, b_near])
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    areas = np.full(4, 2000.0)
    keep = oks_nms(poses, scores, areas, threshold=0.9)
    np.testing.assert_array_equal(keep, [1, 2, 3])  # by decreasing score; the duplicate is gone
    # the threshold is inclusive for keeping: OKS <= thr survives
    ovr = oks_iou(a, a_dup[None], 2000.0, np.array([2000.0]))[0]
    np.testing.assert_array_equal(oks_nms(np.stack([a, a_dup]), np.array([1.0, 0.5]), areas[:2], threshold=ovr), [0, 1])
    np.testing.assert_array_equal(
        oks_nms(np.stack([a, a_dup]), np.array([1.0, 0.5]), areas[:2], threshold=ovr - 1e-9), [0])
    assert oks_nms(np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0)).shape == (0,)


def test_nms_runs_per_image():
    a = _pose(0, 0)
    poses = np.stack([a, a, a])
    keep = nms_per_image(np.array([1, 2, 1]), poses, np.array([0.5, 0.9, 0.7]), np.full(3, 1000.0))
    np.testing.assert_array_equal(keep, [2, 1])  # image 1 keeps its best (index 2); image 2 its only one


def test_rescoring_by_hand():
    s = np.array([[0.9, 0.1, 0.5, 0.2], [0.1, 0.2, 0.0, 0.15]])
    # mean of scores > 0.2: (0.9 + 0.5) / 2 = 0.7 -> x box 0.5; none above -> 0
    np.testing.assert_allclose(rescore(s, np.array([0.5, 1.0])), [0.35, 0.0])


def test_keypoint_results_entries():
    poses = np.stack([_pose(0, 0, 0.9), _pose(0, 0, 0.8), _pose(300, 0, 0.1)])
    res = keypoint_results(np.array([7, 7, 7]), poses, np.array([1.0, 1.0, 0.5]), np.full(3, 900.0),
                           centers=np.zeros((3, 2)), scales=np.ones((3, 2)))
    assert [r["score"] for r in res] == pytest.approx([0.9, 0.0])  # duplicate removed; scores <= 0.2 -> 0
    assert res[0]["image_id"] == 7 and res[0]["category_id"] == 1 and len(res[0]["keypoints"]) == 51
    assert res[0]["keypoints"][:3] == [0.0, 0.0, 0.9] and res[0]["center"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="NaN"):
        keypoint_results(np.array([1]), np.full((1, 17, 3), np.nan), np.ones(1), np.ones(1))
