"""Semantic segmentation losses (jax.numpy), restating the two reference recipes.

Conventions: logits are NHWC (B, h, w, C) at any resolution (models give 1/4 of the input);
labels are int (B, H, W) trainIds with `ignore_index` (255) for ignored pixels; every label outside
[0, C) counts as ignored. Each loss first resizes the logits bilinearly to the label size with
half-pixel centres (`jax.image.resize`, = PyTorch `F.interpolate(mode='bilinear',
align_corners=False)`, NVIDIA's convention; HRNet-Seg itself uses align_corners=True) and computes
in float32 whatever the compute dtype of the model.

Recipes:
  `hrnet_seg_loss`     HRNet-Semantic-Segmentation (HRNet-OCR branch) `lib/core/criterion.py`:
                       class-weighted CE on every output, `LOSS.BALANCE_WEIGHTS [0.4, 1]`
                       (aux, main), optional OHEM on the main output only.
  `nvidia_mscale_loss` NVIDIA/semantic-segmentation `network/ocrnet.py::MscaleOCR.two_scale_forward`
                       with `loss/rmi.py::RMILoss` (the DeLightCMU/PSA recipe): main = 0.5 BCE + 0.5
                       RMI on the attention-joined prediction, + 0.4 BCE on the joined aux output,
                       + 0.05 (BCE(pred_lo) + BCE(pred_hi)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "resize_logits", "cross_entropy", "ohem_cross_entropy", "sigmoid_bce", "rmi_lower_bound",
    "rmi_loss", "hrnet_seg_loss", "nvidia_mscale_loss", "CITYSCAPES_CLASS_WEIGHTS",
]

# HRNet-Semantic-Segmentation `lib/datasets/cityscapes.py::class_weights` (trainId order).
CITYSCAPES_CLASS_WEIGHTS = (0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
                            0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)

# NVIDIA loss/rmi.py constants.
_RMI_CLIP_MIN = 1e-6
_RMI_POS_ALPHA = 5e-4


def resize_logits(logits: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(B, h, w, C) -> float32 (B, H, W, C), bilinear with half-pixel centres, no antialiasing."""
    logits = jnp.asarray(logits, jnp.float32)
    if tuple(logits.shape[1:3]) == tuple(size):
        return logits
    return jax.image.resize(logits, (logits.shape[0], *size, logits.shape[3]), "bilinear", antialias=False)


def _prepare(logits: jax.Array, labels: jax.Array, ignore_index: int):
    labels = jnp.asarray(labels)
    logits = resize_logits(logits, labels.shape[1:3])
    num_classes = logits.shape[-1]
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    return logits, safe, valid


def _pixel_nll(logits: jax.Array, safe_labels: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, safe_labels[..., None], axis=-1)[..., 0]


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    class_weights: Sequence[float] | jax.Array | None = None,
    ignore_index: int = 255,
) -> jax.Array:
    """Softmax cross entropy with ignored pixels and optional class weights -> scalar.

    Restates PyTorch `nn.CrossEntropyLoss(weight=w, ignore_index=255)` (reduction 'mean') as used by
    HRNet-Semantic-Segmentation `lib/core/criterion.py::CrossEntropy`:
    `sum_i w[y_i] * nll_i / sum_i w[y_i]` over non-ignored pixels i. Ignored pixels contribute to
    neither sum; with no valid pixel the loss is 0 (PyTorch gives NaN).

    Args:
      logits: (B, h, w, C), resized to the label size.
      labels: int (B, H, W).
      class_weights: (C,) or None (all ones).
    """
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    nll = _pixel_nll(logits, safe)
    w = valid.astype(jnp.float32)
    if class_weights is not None:
        w = w * jnp.asarray(class_weights, jnp.float32)[safe]
    total = jnp.sum(w)
    return jnp.sum(w * nll) / jnp.where(total > 0, total, 1.0)


def ohem_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    class_weights: Sequence[float] | jax.Array | None = None,
    thresh: float = 0.9,
    min_kept: int = 131072,
    ignore_index: int = 255,
) -> jax.Array:
    """Online hard example mining cross entropy -> scalar.

    Restates HRNet-Semantic-Segmentation `lib/core/criterion.py::OhemCrossEntropy._ohem_forward`:
    p_i = softmax probability of the true class; sort the valid pixels by p_i ascending;
    threshold = max(p_sorted[min(min_kept, n_valid - 1)], thresh); keep pixels with p_i < threshold
    and return the plain mean of their (class-weighted) per-pixel losses `w[y_i] * nll_i`. With
    every p_i >= thresh this keeps exactly the `min_kept` hardest pixels (for distinct p_i).
    The selection is not differentiated through (as in the reference, which sorts detached values).

    `min_kept` counts pixels of the batch this function sees. HRNet-Seg computes the loss per GPU
    (3 images of 512x1024 per GPU in its Cityscapes configs); to reproduce that with a global batch,
    call this per device shard (e.g. inside `shard_map`) or scale `min_kept` by the shard count.
    """
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    min_kept = max(1, int(min_kept))
    nll = _pixel_nll(logits, safe)
    if class_weights is not None:
        nll = nll * jnp.asarray(class_weights, jnp.float32)[safe]
    prob = jax.lax.stop_gradient(jnp.exp(-_pixel_nll(logits, safe)))  # softmax prob of the true class
    flat_prob = jnp.where(valid, prob, jnp.inf).reshape(-1)
    n_valid = jnp.sum(valid)
    sorted_prob = jnp.sort(flat_prob)
    k = jnp.clip(jnp.minimum(min_kept, n_valid - 1), 0, flat_prob.size - 1)
    threshold = jnp.maximum(sorted_prob[k], thresh)
    keep = valid & (prob < threshold)
    n_keep = jnp.sum(keep)
    return jnp.sum(jnp.where(keep, nll, 0.0)) / jnp.maximum(n_keep, 1)


def _onehot_and_mask(labels: jax.Array, num_classes: int, ignore_index: int):
    labels = jnp.asarray(labels)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), num_classes, dtype=jnp.float32)
    return onehot * valid[..., None], valid.astype(jnp.float32)


def sigmoid_bce(logits: jax.Array, labels: jax.Array, *, ignore_index: int = 255) -> jax.Array:
    """Per-class sigmoid binary cross entropy against the one-hot label -> scalar.

    Restates NVIDIA/semantic-segmentation `loss/rmi.py::RMILoss.forward_sigmoid` part I:
    `sum over valid pixels and all C classes of BCEWithLogits(logit, onehot) / (n_valid + 1)`.
    Ignored pixels contribute nothing.
    """
    logits = resize_logits(logits, jnp.shape(labels)[1:3])
    onehot, valid = _onehot_and_mask(labels, logits.shape[-1], ignore_index)
    # Stable BCE with logits: max(x, 0) - x * z + log(1 + exp(-|x|)).
    bce = jnp.maximum(logits, 0.0) - logits * onehot + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.sum(bce * valid[..., None]) / (jnp.sum(valid) + 1.0)


def _avg_pool_with_padding(x: jax.Array, size: int) -> jax.Array:
    # F.avg_pool2d(kernel=size, stride=size, padding=size // 2), count_include_pad=True: padded
    # zeros count, the divisor is always size * size.
    pad = size // 2
    summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, size, size, 1), (1, size, size, 1),
                                   ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return summed / float(size * size)


_QR_BLOCK = 2048


def _ridge_r(a: jax.Array, alpha: float, block: int) -> jax.Array:
    """R (..., n, n) with R^T R = A^T A + alpha I for a tall A (..., m, n), by blocked QR (TSQR).

    Short A: one QR of [A; sqrt(alpha) I]. Tall A: rows are cut into k blocks, each gets
    sqrt(alpha / k) I appended, so every block's R is nonsingular (QR stays differentiable even
    where a class is absent and its columns are zero); the Rs are then merged by QR of stacks of
    whole Rs. Zero rows padding the last block change nothing.
    """
    m, n = a.shape[-2:]
    batch = a.shape[:-2]
    if m <= 2 * block:
        ridge = jnp.broadcast_to(np.sqrt(alpha) * jnp.eye(n, dtype=a.dtype), (*batch, n, n))
        return jnp.linalg.qr(jnp.concatenate([a, ridge], axis=-2), mode="r")
    k = -(-m // block)
    a = jnp.pad(a, [(0, 0)] * len(batch) + [(0, k * block - m), (0, 0)])
    blocks = a.reshape(*batch, k, block, n)
    ridge = jnp.broadcast_to(np.sqrt(alpha / k) * jnp.eye(n, dtype=a.dtype), (*batch, k, n, n))
    rs = jnp.linalg.qr(jnp.concatenate([blocks, ridge], axis=-2), mode="r")  # (..., k, n, n)
    group = max(2, block // n)
    while k > 1:
        # Stacks of `g` whole Rs; zero padding (< g Rs) leaves every stack with a nonsingular R.
        g = min(group, k)
        kk = -(-k // g)
        rs = jnp.pad(rs, [(0, 0)] * len(batch) + [(0, kk * g - k), (0, 0), (0, 0)])
        rs = jnp.linalg.qr(rs.reshape(*batch, kk, g * n, n), mode="r")
        k = kk
    return rs[..., 0, :, :]


def rmi_lower_bound(
    onehot_labels: jax.Array,
    probs: jax.Array,
    *,
    radius: int = 3,
    pool_size: int = 4,
    pos_alpha: float = _RMI_POS_ALPHA,
    qr_block: int = _QR_BLOCK,
) -> jax.Array:
    """Region mutual information lower bound (the RMI term) -> scalar.

    Restates NVIDIA/semantic-segmentation `loss/rmi.py::RMILoss.rmi_lower_bound` (from
    ZJULearning/RMI) with `rmi_pool_way=1`, `_IS_SUM=1`:
      1. average-pool labels and probabilities (kernel = stride = pool_size, zero padding
         pool_size // 2 counted in the mean);
      2. for every class, stack the radius x radius neighbourhood of each position into
         d = radius^2 vectors (positions without a full neighbourhood are dropped):
         L, P of shape (d, N);
      3. centre over N; S_L = L L^T, S_P = P P^T, S_LP = L P^T;
         V = S_L - S_LP (S_P + a I)^-1 S_LP^T;  rmi = 0.5 * logdet(V + a I)   (a = pos_alpha);
      4. mean over the batch, divide by d, sum over classes.
    The logdet is `2 * sum(log(diag(L) + 1e-8))` with L the Cholesky factor of V + aI, as in the
    reference (here |diag(L)| comes from a QR factor, see below).

    Precision: the reference forms the covariances and inverts in float64. Here logdet(V + aI)
    comes from a Householder QR of the stacked, centred vectors (see the code), which is
    backward-stable, so float32 matches the float64 reference even for near-perfect predictions,
    where forming V in float32 loses it entirely. float64 is used when `jax_enable_x64` is on.

    Args:
      onehot_labels: (B, H, W, C) one-hot labels, zero at ignored pixels.
      probs: (B, H, W, C) probabilities (NVIDIA: sigmoid(logits) * valid + 1e-6).
      qr_block: rows per block of the blocked QR (a speed knob; the result does not depend on it).
    """
    dtype = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
    labels = _avg_pool_with_padding(jnp.asarray(onehot_labels, jnp.float32), pool_size)
    probs = _avg_pool_with_padding(jnp.asarray(probs, jnp.float32), pool_size)
    b, h, w, c = labels.shape
    nh, nw = h - (radius - 1), w - (radius - 1)
    if nh < 1 or nw < 1:
        raise ValueError(f"RMI needs a pooled map of at least {radius}x{radius}; got {h}x{w} "
                         f"(input {onehot_labels.shape[1:3]}, pool {pool_size})")
    d = radius * radius
    offsets = [(y, x) for y in range(radius) for x in range(radius)]

    def vectors(m):  # (B, H, W, C) -> (B, C, d, N)
        stacked = jnp.stack([m[:, y:y + nh, x:x + nw, :] for y, x in offsets], axis=-1)  # B nh nw C d
        return jnp.transpose(stacked, (0, 3, 4, 1, 2)).reshape(b, c, d, nh * nw).astype(dtype)

    la, pr = vectors(labels), vectors(probs)
    la = la - jnp.mean(la, axis=-1, keepdims=True)
    pr = pr - jnp.mean(pr, axis=-1, keepdims=True)
    # With Z = [P; L] (2d x N), Z Z^T + aI = [[S_P + aI, S_PL], [S_LP, S_L + aI]] = R^T R, where R
    # is the triangular factor of the QR decomposition of A = [Z^T; sqrt(a) I]. Its lower-right
    # d x d block R22 satisfies R22^T R22 = S_L + aI - S_LP (S_P + aI)^-1 S_PL = V + aI, so
    # |diag(R22)| is the Cholesky diagonal of V + aI. Householder QR of A never forms the
    # covariances, so float32 keeps the accuracy the reference gets from float64 normal equations.
    z = jnp.swapaxes(jnp.concatenate([pr, la], axis=2), -1, -2)               # (B, C, N, 2d)
    r = _ridge_r(z, pos_alpha, qr_block)                                     # (B, C, 2d, 2d)
    diag = jnp.abs(jnp.diagonal(r[..., d:, d:], axis1=-2, axis2=-1))         # (B, C, d)
    logdet = 2.0 * jnp.sum(jnp.log(diag + 1e-8), axis=-1)
    rmi_now = 0.5 * logdet                                  # (B, C)
    rmi_per_class = jnp.mean(rmi_now, axis=0) / d           # (C,)
    return jnp.sum(rmi_per_class).astype(jnp.float32)


def rmi_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    bce_weight: float = 0.5,
    ignore_index: int = 255,
    radius: int = 3,
    pool_size: int = 4,
    qr_block: int = _QR_BLOCK,
) -> jax.Array:
    """NVIDIA's RMI criterion: `bce_weight * BCE + (1 - bce_weight) * RMI` -> scalar.

    Restates NVIDIA/semantic-segmentation `loss/rmi.py::RMILoss.forward_sigmoid(do_rmi=True)`
    with `lambda_way=1`, `loss_weight_lambda=0.5`: BCE as in `sigmoid_bce`; RMI from
    `rmi_lower_bound(onehot * valid, sigmoid(logits) * valid + 1e-6)`. The RMI term is a scaled
    log-determinant of a conditional covariance and is usually negative, so the total can be
    negative; it decreases as predictions improve.
    """
    logits = resize_logits(logits, jnp.shape(labels)[1:3])
    bce = sigmoid_bce(logits, labels, ignore_index=ignore_index)
    onehot, valid = _onehot_and_mask(labels, logits.shape[-1], ignore_index)
    probs = jax.nn.sigmoid(logits) * valid[..., None] + _RMI_CLIP_MIN
    rmi = rmi_lower_bound(onehot, probs, radius=radius, pool_size=pool_size, qr_block=qr_block)
    return bce_weight * bce + (1.0 - bce_weight) * rmi


def hrnet_seg_loss(
    outputs: jax.Array | Sequence[jax.Array],
    labels: jax.Array,
    *,
    class_weights: Sequence[float] | None = CITYSCAPES_CLASS_WEIGHTS,
    aux_weight: float = 0.4,
    use_ohem: bool = False,
    ohem_thresh: float = 0.9,
    ohem_min_kept: int = 131072,
    ignore_index: int = 255,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """HRNet-Seg recipe loss -> (total, {'loss_main', 'loss_aux'}).

    Restates HRNet-Semantic-Segmentation (HRNet-OCR branch) `lib/core/criterion.py`
    `CrossEntropy.forward` / `OhemCrossEntropy.forward` with `LOSS.BALANCE_WEIGHTS [0.4, 1]`:
    total = main + aux_weight * aux, where main is the class-weighted CE (or OHEM CE if
    `use_ohem`) of the main logits and aux the class-weighted CE of the OCR soft-region logits.

    Args:
      outputs: HRNetV2 logits (B, h, w, C), or the OCR network's `(main_logits, aux_logits)`.
      labels: int (B, H, W).
    """
    if isinstance(outputs, (tuple, list)):
        main, aux = outputs
    else:
        main, aux = outputs, None
    if use_ohem:
        loss_main = ohem_cross_entropy(main, labels, class_weights=class_weights, thresh=ohem_thresh,
                                       min_kept=ohem_min_kept, ignore_index=ignore_index)
    else:
        loss_main = cross_entropy(main, labels, class_weights=class_weights, ignore_index=ignore_index)
    parts = {"loss_main": loss_main}
    total = loss_main
    if aux is not None:
        parts["loss_aux"] = cross_entropy(aux, labels, class_weights=class_weights, ignore_index=ignore_index)
        total = total + aux_weight * parts["loss_aux"]
    return total, parts


def nvidia_mscale_loss(
    outputs: Mapping[str, jax.Array],
    labels: jax.Array,
    *,
    aux_weight: float = 0.4,
    mscale_weight: float = 0.05,
    bce_weight: float = 0.5,
    aux_rmi: bool = False,
    ignore_index: int = 255,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """NVIDIA MscaleOCR two-scale training loss -> (total, parts).

    Restates NVIDIA/semantic-segmentation `network/ocrnet.py::MscaleOCR.two_scale_forward` with
    `RMILoss` as criterion (`--rmi_loss`), `LOSS.OCR_ALPHA 0.4`, `LOSS.OCR_AUX_RMI False`,
    `LOSS.SUPERVISED_MSCALE_WT 0.05`:

      total = RMI(pred) + 0.4 * BCE(aux) + 0.05 * (BCE(pred_lo) + BCE(pred_hi))

    where RMI(.) = 0.5 BCE + 0.5 RMI (`rmi_loss`) and BCE(.) = `sigmoid_bce` (the criterion with
    `do_rmi=False`).

    Args:
      outputs: dict with
        'pred'     joint (attention-combined) logits (B, h, w, C)
        'aux'      joint OCR aux logits
        'pred_lo'  logits of the 0.5x branch alone (any resolution; resized to the label)
        'pred_hi'  logits of the 1.0x branch alone
        'pred_lo' / 'pred_hi' may be absent (plain OCRNet under this criterion: no per-scale terms).
      labels: int (B, H, W).
    """
    missing = {"pred", "aux"} - set(outputs)
    if missing:
        raise KeyError(f"nvidia_mscale_loss needs outputs {sorted(missing)}; got keys {sorted(outputs)}")
    parts = {"loss_main": rmi_loss(outputs["pred"], labels, bce_weight=bce_weight, ignore_index=ignore_index)}
    if aux_rmi:
        parts["loss_aux"] = rmi_loss(outputs["aux"], labels, bce_weight=bce_weight, ignore_index=ignore_index)
    else:
        parts["loss_aux"] = sigmoid_bce(outputs["aux"], labels, ignore_index=ignore_index)
    total = parts["loss_main"] + aux_weight * parts["loss_aux"]
    for key in ("pred_lo", "pred_hi"):
        if key in outputs:
            parts[f"loss_{key[5:]}"] = sigmoid_bce(outputs[key], labels, ignore_index=ignore_index)
            total = total + mscale_weight * parts[f"loss_{key[5:]}"]
    return total, parts
