"""Segmentation losses: hand-computed golden values and a NumPy restatement of RMI."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psa_jax.data.fake_cityscapes import synthetic_records
from psa_jax.tasks import seg_losses as L


def _logits(rows):
    """[[logits of pixel 0], [logits of pixel 1], ...] -> (1, 1, P, C) float32."""
    return jnp.asarray(np.array(rows, np.float32)[None, None])


def _labels(values):
    return jnp.asarray(np.array(values, np.int32)[None, None])


# ------------------------------------------------------------------------------------------------
# Cross entropy
# ------------------------------------------------------------------------------------------------

def test_cross_entropy_golden_and_ignore():
    logits = _logits([[math.log(3.0), 0.0], [0.0, 0.0], [5.0, -2.0]])
    labels = _labels([0, 1, 255])
    expected = (math.log(4 / 3) + math.log(2)) / 2
    assert float(L.cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-6)
    # An ignored pixel contributes nothing, whatever its logits, and gets no gradient.
    other = logits.at[0, 0, 2].set(jnp.array([-30.0, 40.0]))
    assert float(L.cross_entropy(other, labels)) == pytest.approx(expected, rel=1e-6)
    grad = jax.grad(lambda x: L.cross_entropy(x, labels))(logits)
    assert np.all(np.asarray(grad[0, 0, 2]) == 0) and np.any(np.asarray(grad[0, 0, 0]) != 0)
    # No valid pixel: 0, not NaN.
    assert float(L.cross_entropy(logits, _labels([255, 255, 255]))) == 0.0


def test_cross_entropy_class_weights():
    logits = _logits([[math.log(3.0), 0.0], [0.0, 0.0]])
    labels = _labels([0, 1])
    weighted = (2 * math.log(4 / 3) + 1 * math.log(2)) / 3  # PyTorch: sum w_y nll / sum w_y
    assert float(L.cross_entropy(logits, labels, class_weights=[2.0, 1.0])) == pytest.approx(weighted, rel=1e-6)
    # Uniform weights leave the (normalised) loss unchanged.
    plain = float(L.cross_entropy(logits, labels))
    assert float(L.cross_entropy(logits, labels, class_weights=[7.0, 7.0])) == pytest.approx(plain, rel=1e-6)
    # All weight on one class: the mean over that class's pixels only.
    assert float(L.cross_entropy(logits, labels, class_weights=[1.0, 0.0])) == pytest.approx(math.log(4 / 3), rel=1e-6)


def test_cross_entropy_upsamples_logits_to_the_label():
    labels = jnp.asarray(np.random.default_rng(0).integers(0, 3, (2, 16, 24)), jnp.int32)
    small = jnp.broadcast_to(jnp.array([1.0, 0.0, -1.0]), (2, 4, 6, 3))  # constant: resizing is exact
    full = jnp.broadcast_to(jnp.array([1.0, 0.0, -1.0]), (2, 16, 24, 3))
    assert float(L.cross_entropy(small, labels)) == pytest.approx(float(L.cross_entropy(full, labels)), rel=1e-6)
    ramp = jnp.arange(4.0)[None, :, None, None] * jnp.ones((1, 4, 4, 2))
    up = L.resize_logits(ramp, (8, 8))
    assert up.shape == (1, 8, 8, 2) and float(up[0, 0, 0, 0]) == 0.0 and float(up[0, 1, 0, 0]) == 0.25


# ------------------------------------------------------------------------------------------------
# OHEM
# ------------------------------------------------------------------------------------------------

def test_ohem_keeps_exactly_min_kept_when_none_pass_the_threshold():
    # 20 confident pixels: true-class logit 5 + 0.1 i vs 0 -> p_i = sigmoid(5 + 0.1 i) > 0.99.
    rows = [[5.0 + 0.1 * i, 0.0] for i in range(20)]
    labels = _labels([0] * 20)
    nll = [math.log1p(math.exp(-(5.0 + 0.1 * i))) for i in range(20)]
    got = L.ohem_cross_entropy(_logits(rows), labels, thresh=0.9, min_kept=5)
    assert float(got) == pytest.approx(sum(nll[:5]) / 5, rel=1e-5)  # the 5 hardest pixels
    # Shuffled pixel order changes nothing.
    perm = np.random.default_rng(0).permutation(20)
    got = L.ohem_cross_entropy(_logits(np.array(rows)[perm]), labels, thresh=0.9, min_kept=5)
    assert float(got) == pytest.approx(sum(nll[:5]) / 5, rel=1e-5)


def test_ohem_keeps_all_pixels_below_the_threshold_and_skips_ignored():
    # Probabilities of the true class: 0.5, 0.6, 0.7, 0.95, 0.99 (+ one ignored pixel).
    probs = [0.5, 0.6, 0.7, 0.95, 0.99]
    rows = [[math.log(p / (1 - p)), 0.0] for p in probs] + [[-9.0, 9.0]]
    labels = _labels([0, 0, 0, 0, 0, 255])
    got = L.ohem_cross_entropy(_logits(rows), labels, thresh=0.9, min_kept=2)
    assert float(got) == pytest.approx(-sum(math.log(p) for p in probs[:3]) / 3, rel=1e-5)
    # Class weights scale the per-pixel losses; the mean is plain (as the reference).
    got = L.ohem_cross_entropy(_logits(rows), labels, thresh=0.9, min_kept=2, class_weights=[2.0, 1.0])
    assert float(got) == pytest.approx(-2 * sum(math.log(p) for p in probs[:3]) / 3, rel=1e-5)
    assert float(L.ohem_cross_entropy(_logits(rows), _labels([255] * 6), min_kept=2)) == 0.0


# ------------------------------------------------------------------------------------------------
# BCE and RMI (NVIDIA)
# ------------------------------------------------------------------------------------------------

def test_sigmoid_bce_golden():
    logits = _logits([[0.0, 0.0], [3.0, -1.0]])
    # pixel 0: label 0, BCE(0, 1) + BCE(0, 0) = 2 ln 2; pixel 1 ignored; divide by (1 valid + 1).
    assert float(L.sigmoid_bce(logits, _labels([0, 255]))) == pytest.approx(2 * math.log(2) / 2, rel=1e-6)
    # pixel 1 with label 1: log(1 + e^-3) ... written out: -log(1 - s(3)) - log(s(-1)).
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    both = 2 * math.log(2) - math.log(1 - s(3.0)) - math.log(s(-1.0))
    assert float(L.sigmoid_bce(logits, _labels([0, 1]))) == pytest.approx(both / 3, rel=1e-6)


def _np_avg_pool(x, k):
    """(B, C, H, W) average pool, kernel = stride = k, zero padding k // 2 counted in the mean."""
    p = k // 2
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = (x.shape[2] - k) // k + 1, (x.shape[3] - k) // k + 1
    out = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * k:i * k + k, j * k:j * k + k].sum((2, 3)) / (k * k)
    return out


def _np_rmi_loss(logits, labels, num_classes, radius=3, pool=4, alpha=5e-4, lam=0.5):
    """NumPy float64 restatement of NVIDIA loss/rmi.py RMILoss.forward_sigmoid(do_rmi=True), NCHW."""
    logits = np.asarray(logits, np.float64)
    valid = labels < num_classes
    onehot = np.eye(num_classes)[np.where(valid, labels, 0)] * valid[..., None]
    bce = np.maximum(logits, 0) - logits * onehot + np.log1p(np.exp(-np.abs(logits)))
    bce = (bce * valid[..., None]).sum() / (valid.sum() + 1.0)
    probs = 1 / (1 + np.exp(-logits)) * valid[..., None] + 1e-6
    la_map = _np_avg_pool(onehot.transpose(0, 3, 1, 2), pool)
    pr_map = _np_avg_pool(probs.transpose(0, 3, 1, 2), pool)
    b, c, h, w = la_map.shape
    nh, nw = h - radius + 1, w - radius + 1
    d = radius * radius
    la = np.stack([la_map[:, :, y:y + nh, x:x + nw] for y in range(radius) for x in range(radius)], 2).reshape(b, c, d, -1)
    pr = np.stack([pr_map[:, :, y:y + nh, x:x + nw] for y in range(radius) for x in range(radius)], 2).reshape(b, c, d, -1)
    la = la - la.mean(-1, keepdims=True)
    pr = pr - pr.mean(-1, keepdims=True)
    eye = np.eye(d)
    la_cov, pr_cov, la_pr = la @ la.swapaxes(-1, -2), pr @ pr.swapaxes(-1, -2), la @ pr.swapaxes(-1, -2)
    appro_var = la_cov - la_pr @ np.linalg.inv(pr_cov + alpha * eye) @ la_pr.swapaxes(-1, -2)
    chol = np.linalg.cholesky(appro_var + alpha * eye)
    rmi_now = 0.5 * 2 * np.log(np.diagonal(chol, axis1=-2, axis2=-1) + 1e-8).sum(-1)
    rmi = (rmi_now.mean(0) / d).sum()
    return lam * bce + (1 - lam) * rmi


def _case(height, width, batch, quality, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.stack([r["label"] for r in synthetic_records(batch, height=height, width=width, seed=seed)])
    labels = labels.astype(np.int32)
    if quality == "random":
        logits = rng.normal(0, 2, (batch, height, width, 19))
    else:
        onehot = np.eye(19)[np.where(labels < 19, labels, 0)]
        logits = (2 * onehot - 1) * (3 if quality == "good" else 20)
        if quality == "good":
            logits = logits + rng.normal(0, 2, logits.shape)
    return logits.astype(np.float32), labels


@pytest.mark.parametrize("shape", [(16, 24, 2), (64, 128, 2)])
@pytest.mark.parametrize("quality", ["random", "good", "perfect"])
def test_rmi_matches_numpy_restatement(shape, quality):
    logits, labels = _case(*shape, quality)
    expected = _np_rmi_loss(logits, labels, 19)
    got = float(jax.jit(L.rmi_loss)(logits, labels))
    assert got == pytest.approx(expected, abs=1e-4, rel=1e-5)


def test_rmi_blocked_qr_equals_single_qr():
    logits, labels = _case(32, 48, 2, "good", seed=2)
    expected = _np_rmi_loss(logits, labels, 19)
    # 77 points per map: qr_block 8 -> 10 blocks merged over several levels.
    blocked = jax.jit(jax.value_and_grad(lambda x: L.rmi_loss(x, labels, qr_block=8)))
    value, grad = blocked(jnp.asarray(logits))
    assert float(value) == pytest.approx(expected, abs=1e-4)
    assert bool(jnp.all(jnp.isfinite(grad)))  # absent classes make rank-deficient blocks
    single = jax.grad(lambda x: L.rmi_loss(x, labels))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(jax.jit(single)(jnp.asarray(logits))),
                               rtol=1e-3, atol=1e-7)


def test_rmi_gradient_matches_finite_differences():
    logits, labels = _case(32, 48, 2, "random", seed=1)
    small = logits[:, ::4, ::4]  # 1/4-resolution logits, as a model gives
    upsample = jax.jit(lambda x: L.resize_logits(x, (32, 48)))

    def np_loss(x):
        return _np_rmi_loss(np.asarray(upsample(x), np.float64), labels, 19)

    grad = np.asarray(jax.jit(jax.grad(lambda x: L.rmi_loss(x, labels)))(jnp.asarray(small)))
    assert np.isfinite(grad).all()
    for index in [(0, 1, 2, 3), (1, 5, 7, 10), (0, 3, 3, 0)]:
        e = np.zeros_like(small)
        e[index] = 1e-2
        fd = (np_loss(small + e) - np_loss(small - e)) / 2e-2
        assert grad[index] == pytest.approx(fd, rel=2e-3, abs=1e-7)


def test_rmi_ignores_ignored_pixels_in_bce_part():
    logits, labels = _case(16, 24, 1, "random", seed=3)
    bce = float(L.sigmoid_bce(logits, labels))
    changed = logits.copy()
    changed[labels == 255] = 50.0
    assert float(L.sigmoid_bce(changed, labels)) == pytest.approx(bce, rel=1e-6)
    rmi = jax.jit(L.rmi_loss)
    assert float(rmi(changed, labels)) == pytest.approx(float(rmi(logits, labels)), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------------

def test_hrnet_seg_loss_combination():
    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.integers(0, 19, (2, 16, 32)).astype(np.int32)).at[0, :4].set(255)
    main = jnp.asarray(rng.normal(size=(2, 4, 8, 19)), jnp.float32)
    aux = jnp.asarray(rng.normal(size=(2, 4, 8, 19)), jnp.float32)
    w = L.CITYSCAPES_CLASS_WEIGHTS
    total, parts = L.hrnet_seg_loss((main, aux), labels)
    ce_main = float(L.cross_entropy(main, labels, class_weights=w))
    ce_aux = float(L.cross_entropy(aux, labels, class_weights=w))
    assert float(total) == pytest.approx(ce_main + 0.4 * ce_aux, rel=1e-6)
    assert float(parts["loss_main"]) == pytest.approx(ce_main, rel=1e-6)
    total, parts = L.hrnet_seg_loss(main, labels)  # HRNetV2 without OCR: one output
    assert set(parts) == {"loss_main"} and float(total) == pytest.approx(ce_main, rel=1e-6)
    total, _ = L.hrnet_seg_loss((main, aux), labels, use_ohem=True, ohem_min_kept=100)
    ohem = float(L.ohem_cross_entropy(main, labels, class_weights=w, thresh=0.9, min_kept=100))
    assert float(total) == pytest.approx(ohem + 0.4 * ce_aux, rel=1e-6)


def test_nvidia_mscale_loss_combination():
    logits, labels = _case(32, 64, 1, "random", seed=4)
    rng = np.random.default_rng(5)
    outs = {"pred": logits[:, ::4, ::4], "aux": rng.normal(size=(1, 8, 16, 19)).astype(np.float32),
            "pred_lo": rng.normal(size=(1, 4, 8, 19)).astype(np.float32),
            "pred_hi": rng.normal(size=(1, 8, 16, 19)).astype(np.float32)}
    total, parts = jax.jit(L.nvidia_mscale_loss)(outs, labels)
    expected = (float(jax.jit(L.rmi_loss)(outs["pred"], labels)) + 0.4 * float(L.sigmoid_bce(outs["aux"], labels))
                + 0.05 * (float(L.sigmoid_bce(outs["pred_lo"], labels)) + float(L.sigmoid_bce(outs["pred_hi"], labels))))
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert set(parts) == {"loss_main", "loss_aux", "loss_lo", "loss_hi"}
    up = np.asarray(L.resize_logits(outs["pred"], (32, 64)), np.float64)
    assert float(parts["loss_main"]) == pytest.approx(_np_rmi_loss(up, labels, 19), abs=1e-4)
    with pytest.raises(KeyError, match="aux"):
        L.nvidia_mscale_loss({"pred": outs["pred"]}, labels)
