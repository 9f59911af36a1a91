"""Confusion matrix, IoU / mIoU / pixel accuracy, order invariance and the overlay PNG."""

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from psa_jax.data.cityscapes import CLASS_NAMES, PALETTE
from psa_jax.evaluation import seg_metrics as M
from psa_jax.evaluation import seg_visualize as V


def _labels(seed=0, shape=(3, 20, 30)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 19, shape)
    labels[rng.random(shape) < 0.1] = 255
    return labels


def test_ground_truth_as_prediction_gives_100_percent():
    labels = _labels()
    pred = np.where(labels == 255, 3, labels)  # whatever is predicted on ignored pixels
    metrics = M.segmentation_metrics(M.confusion_matrix(pred, labels, 19))
    assert metrics.miou == 1.0 and metrics.pixel_accuracy == 1.0 and metrics.mean_accuracy == 1.0
    assert metrics.num_pixels == int((labels != 255).sum())


def test_hand_made_confusion_gives_hand_computed_iou():
    # Rows: ground truth, columns: prediction.
    conf = np.array([[5, 1, 0, 0],
                     [2, 3, 1, 0],
                     [0, 0, 0, 0],
                     [0, 0, 4, 0]])
    m = M.segmentation_metrics(conf)
    # IoU0 = 5 / (6 + 7 - 5); IoU1 = 3 / (6 + 4 - 3); IoU2 = 0 / (0 + 5 - 0); class 3: 0 / (4 + 0 - 0)
    np.testing.assert_allclose(m.iou, [5 / 8, 3 / 7, 0.0, 0.0])
    assert m.miou == pytest.approx((5 / 8 + 3 / 7) / 4)
    assert m.pixel_accuracy == pytest.approx(8 / 16)
    assert m.mean_accuracy == pytest.approx((5 / 6 + 3 / 6 + 0) / 3)  # class 2 has no GT pixel
    # A class neither present nor predicted is NaN and left out of the mean.
    conf2 = conf.copy()
    conf2[3, 2] = conf2[1, 2] = 0
    m2 = M.segmentation_metrics(conf2)
    assert np.isnan(m2.iou[2]) and np.isnan(m2.iou[3])
    assert m2.miou == pytest.approx((5 / 8 + 3 / 6) / 2)  # IoU1 = 3 / (5 + 4 - 3)


def test_confusion_matrix_counts_pairs_and_skips_ignore():
    label = np.array([[0, 0, 1, 255], [2, 1, 1, 7]])
    pred = np.array([[0, 1, 1, 2], [2, 0, 1, 1]])
    conf = M.confusion_matrix(pred, label, 3)  # 7 is outside [0, 3): ignored like 255
    expected = np.zeros((3, 3), int)
    for g, p in [(0, 0), (0, 1), (1, 1), (2, 2), (1, 0), (1, 1)]:
        expected[g, p] += 1
    np.testing.assert_array_equal(conf, expected)
    with pytest.raises(ValueError, match="shape"):
        M.confusion_matrix(pred[:, :3], label, 3)


def test_accumulating_batches_in_any_order_gives_the_same_result():
    labels = _labels(1, (8, 16, 16))
    rng = np.random.default_rng(2)
    pred = np.where(rng.random(labels.shape) < 0.7, np.where(labels == 255, 0, labels), rng.integers(0, 19, labels.shape))
    whole = M.confusion_matrix(pred, labels, 19)
    for order in (range(8), rng.permutation(8), [7, 0, 3, 1, 6, 2, 5, 4]):
        acc = np.zeros((19, 19), np.int64)
        for i in order:
            acc += M.confusion_matrix(pred[i:i + 1], labels[i:i + 1], 19)
        np.testing.assert_array_equal(acc, whole)
    # Uneven batches too, and the per-image valid mask drops padding copies.
    acc = M.confusion_matrix(pred[:3], labels[:3], 19) + M.confusion_matrix(pred[3:], labels[3:], 19)
    np.testing.assert_array_equal(acc, whole)
    padded_pred = np.concatenate([pred, pred[-1:]])
    padded_lab = np.concatenate([labels, labels[-1:]])
    valid = np.array([True] * 8 + [False])
    np.testing.assert_array_equal(M.confusion_matrix(padded_pred, padded_lab, 19, valid=valid), whole)


def test_jax_confusion_matches_numpy():
    labels = _labels(3, (2, 12, 14))
    pred = np.random.default_rng(4).integers(0, 19, labels.shape)
    valid = np.array([True, False])
    got = M.confusion_matrix_jax(jnp.asarray(pred), jnp.asarray(labels), 19, valid=jnp.asarray(valid))
    np.testing.assert_array_equal(np.asarray(got), M.confusion_matrix(pred, labels, 19, valid=valid))


def test_cross_process_sum_single_process_is_identity():
    conf = np.arange(16, dtype=np.int64).reshape(4, 4) * (2**33)
    np.testing.assert_array_equal(M.cross_process_sum(conf), conf)


def _fake_two_processes(monkeypatch, other):
    """Simulates two JAX processes: this one (index 0) and one holding the matrix `other`.

    The other process runs the same `cross_process_sum` (its payload is captured by a first call),
    and `process_allgather(tiled=False)` stacks the payloads in process order. Payloads must be
    int32, as they travel without jax_enable_x64."""
    import jax
    from jax.experimental import multihost_utils

    payloads = []

    def fake_allgather(x, tiled=False):
        x = np.asarray(x)
        assert not tiled and x.dtype == np.int32
        payloads.append(x)
        return np.stack([x, payloads[0]])  # [this process, the other one]

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", fake_allgather)
    M.cross_process_sum(other)  # the other process's call: records its payload
    return payloads


def test_cross_process_sum_of_large_counts_over_two_processes_is_exact(monkeypatch):
    # Counts above 2^31 and 2^32 (a full Cityscapes val set is ~1e9 pixels per matrix; a large
    # test set or many epochs pass 2^31), low halves with the top bit (2^30) set, and zeros.
    a = np.array([[2**31 + 5, 2**32 + 7, 0],
                  [2**31 - 1, 3 * 2**32 + 2**30 + 11, 2**40 + 2**31 - 1],
                  [1, 2**61 - 1, 2**33 + 2**30]], np.int64)
    b = np.array([[2**31 - 1, 2**32 + 2**31, 9],
                  [1, 2**30, 2**45 + 123],
                  [2**32, 2**61 - 3, 0]], np.int64)
    payloads = _fake_two_processes(monkeypatch, b)
    got = M.cross_process_sum(a)
    assert len(payloads) == 2
    expected = [[int(x) + int(y) for x, y in zip(ra, rb)] for ra, rb in zip(a.tolist(), b.tolist())]
    assert got.dtype == np.int64 and got.tolist() == expected
    # A concrete value: 2^32 + 7 (high half 2, low half 7) plus 2^32 + 2^31 (high 3, low 0).
    assert int(got[0, 1]) == 2 * 2**32 + 2**31 + 7 == 8_589_934_599 + 2**31
    # Symmetric: the other process gets the same matrix; small ones still add exactly.
    payloads.clear()
    M.cross_process_sum(np.eye(3, dtype=np.int64))
    np.testing.assert_array_equal(M.cross_process_sum(np.full((3, 3), 2, np.int64)), np.eye(3) + 2)


def test_iou_table_lists_every_class():
    conf = M.confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 2]), 19)
    table = M.format_iou_table(M.segmentation_metrics(conf), CLASS_NAMES, conf)
    lines = table.splitlines()
    assert len(lines) == 1 + 19 + 3
    assert lines[1].split()[:2] == ["road", "100.00"] and "n/a" in lines[4]
    assert lines[-3].startswith("mIoU") and "50.00" in lines[-3]  # (1 + 1/2 + 0) / 3


def test_colorize_overlay_and_png(tmp_path):
    ids = np.array([[0, 10, 255], [13, 18, 200]])
    colors = V.colorize(ids)
    np.testing.assert_array_equal(colors[0, 0], PALETTE[0])
    np.testing.assert_array_equal(colors[1, 1], PALETTE[18])
    assert (colors[0, 2] == 0).all() and (colors[1, 2] == 0).all()
    image = np.full((2, 3, 3), 100, np.uint8)
    over = V.overlay(image, ids, alpha=1.0)
    np.testing.assert_array_equal(over[0, 1], PALETTE[10])
    np.testing.assert_array_equal(over[0, 2], image[0, 2])  # ignored: image shows through
    label = np.array([[0, 10, 255], [13, 17, 255]])
    path = V.save_overlay_png(tmp_path / "x" / "panel.png", image, ids, label)
    panel = cv2.imread(str(path))[..., ::-1]
    assert panel.shape[1] == 6 and panel.shape[0] > 4  # 2x2 panel + legend below
    np.testing.assert_array_equal(panel[2 + 1, 3 + 1], [255, 255, 255])  # error map: wrong pixel
    np.testing.assert_array_equal(panel[2 + 0, 3 + 0], [60, 60, 60])     # right pixel


def test_out_of_range_and_ignored_labels_are_skipped_by_numpy_and_jax():
    # C = 3. Labels -1, C (= 3), 254 and the ignore index 255 are skipped whatever is predicted
    # there; their predictions are chosen so that, were the pixel counted, label * C + pred would
    # land inside the 3x3 matrix (-1 * 3 + 1 -> wraps to [2, 1]; 3 * 3 - 1 -> [2, 2];
    # 254 * 3 - 762 -> [0, 0]) or, in NumPy, trip the bincount / prediction range checks.
    label = np.array([[0, 1, 2, 1, -1, 3],
                      [254, 255, 0, 2, -1, 3]])
    pred = np.array([[0, 2, 2, 1, 1, -1],
                     [-762, 0, 1, 2, 2, 0]])
    expected = np.array([[1, 1, 0],   # gt 0: pred 0, pred 1
                         [0, 1, 1],   # gt 1: pred 1, pred 2
                         [0, 0, 2]])  # gt 2: pred 2 twice
    np.testing.assert_array_equal(M.confusion_matrix(pred, label, 3), expected)
    got = M.confusion_matrix_jax(jnp.asarray(pred), jnp.asarray(label), 3)
    np.testing.assert_array_equal(np.asarray(got), expected)
    # Label C alone with an in-range prediction, and 254 with an in-range one (NumPy).
    lab2, pred2 = np.array([3, 254, 1]), np.array([0, 2, 0])
    exp2 = np.zeros((3, 3), int)
    exp2[1, 0] = 1
    np.testing.assert_array_equal(M.confusion_matrix(pred2, lab2, 3), exp2)
    np.testing.assert_array_equal(np.asarray(M.confusion_matrix_jax(jnp.asarray(pred2), jnp.asarray(lab2), 3)), exp2)


@pytest.mark.parametrize("bad_pred", [-1, 3])
def test_prediction_outside_the_classes_raises(bad_pred):
    # Label 1 (counted): with pred -1 the flat index 1 * 3 - 1 = 2 would still be a valid bin.
    label = np.array([0, 1, 2])
    pred = np.array([0, bad_pred, 2])
    with pytest.raises(ValueError, match=r"predictions must lie in \[0, 3\)"):
        M.confusion_matrix(pred, label, 3)
    # The same prediction on a skipped pixel is fine.
    label_ignored = np.array([0, 255, 2])
    np.testing.assert_array_equal(M.confusion_matrix(pred, label_ignored, 3), np.diag([1, 0, 1]))


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 3), (3, 3, 3), (4,)])
def test_non_square_confusion_matrix_raises(shape):
    with pytest.raises(ValueError, match="square"):
        M.segmentation_metrics(np.ones(shape, np.int64))


def test_normalised_confusion_matrix_gives_the_same_metrics():
    # 16 pixels: dividing by 16 is exact, so the normalised matrix sums to exactly 1.0.
    conf = np.array([[5, 1, 0],
                     [2, 3, 1],
                     [0, 2, 2]])
    frac = conf / conf.sum()
    assert frac.sum() == 1.0 and frac.sum(axis=1).max() < 1.0
    for m in (M.segmentation_metrics(conf), M.segmentation_metrics(frac)):
        # IoU: 5 / (6 + 7 - 5), 3 / (6 + 6 - 3), 2 / (4 + 3 - 2)
        np.testing.assert_allclose(m.iou, [5 / 8, 3 / 9, 2 / 5])
        assert m.miou == pytest.approx((5 / 8 + 3 / 9 + 2 / 5) / 3)
        assert m.pixel_accuracy == pytest.approx(10 / 16)
        assert m.mean_accuracy == pytest.approx((5 / 6 + 3 / 6 + 2 / 4) / 3)
    assert M.segmentation_metrics(conf).num_pixels == 16


_GOLDEN_ROWS = [
    # class           IoU %   GT px %
    ("road            ", "   75.00", "    50.000"),   # 3 / (4 + 3 - 3); 4 of 8 GT pixels
    ("sidewalk        ", "   40.00", "    37.500"),   # 2 / (3 + 4 - 2); 3 of 8
    ("building        ", "    0.00", "    12.500"),   # 0 / (1 + 1 - 0); 1 of 8
    ("wall            ", "     n/a", "     0.000"),   # neither present nor predicted
]
_GOLDEN_FOOTER = [
    "mIoU               38.33",   # (75 + 40 + 0) / 3
    "pixel acc.         62.50",   # 5 / 8
    "mean class acc.    47.22",   # (3/4 + 2/3 + 0) / 3
]


def test_iou_table_golden_text_with_and_without_conf():
    conf = np.array([[3, 1, 0, 0],
                     [0, 2, 1, 0],
                     [0, 1, 0, 0],
                     [0, 0, 0, 0]])
    names = ["road", "sidewalk", "building", "wall"]
    metrics = M.segmentation_metrics(conf)
    with_conf = "\n".join(["class              IoU %   GT px %"]
                          + [n + i + s for n, i, s in _GOLDEN_ROWS] + _GOLDEN_FOOTER)
    without_conf = "\n".join(["class              IoU %"]
                             + [n + i for n, i, _ in _GOLDEN_ROWS] + _GOLDEN_FOOTER)
    assert M.format_iou_table(metrics, names, conf) == with_conf
    assert M.format_iou_table(metrics, names) == without_conf
    # A normalised matrix (sums to exactly 1.0) gives the same shares.
    assert M.format_iou_table(metrics, names, conf / 8) == with_conf


def test_cross_process_sum_with_one_process_does_not_gather(monkeypatch):
    import jax
    from jax.experimental import multihost_utils

    def no_gather(*args, **kwargs):
        raise AssertionError("process_allgather called with a single process")

    monkeypatch.setattr(multihost_utils, "process_allgather", no_gather)
    assert jax.process_count() == 1
    x = np.array([[1, 2], [3, 4]], np.int32)
    got = M.cross_process_sum(x)
    assert got.dtype == np.int32 and got.tolist() == [[1, 2], [3, 4]]
