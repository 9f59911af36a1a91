"""Heatmap regression losses for top-down pose (jax.numpy).

`joints_mse_loss`: HRNet `lib/core/loss.py::JointsMSELoss` (`LOSS.USE_TARGET_WEIGHT: true`): for
each joint k, `0.5 * mean over (batch, pixels) of (pred_k * w_k - gt_k * w_k)^2`, summed over
joints and divided by K; equivalently `0.5 * mean((pred - gt)^2 * w^2)` over every element.
mmpose's `KeypointMSELoss` has no 0.5 (twice this value). OHKM is off in all HRNet COCO configs.

`combined_target_mse_loss`: mmpose `CombinedTargetMSELoss` (0.x `models/losses/mse_loss.py`,
1.x `models/losses/heatmap_loss.py`; the loss of UDP-Pose's combined-target configs) for the
'udp_combined' codec's `(B, h, w, 3K)` maps (channel `3k` classification C, `3k + 1` x offset
X, `3k + 2` y offset Y; `psa_jax.data.pose_targets`). With `w_k` the target weight (1 without
`use_target_weight`) and the means over (batch, pixels):

    L = (1 / K) sum_k 0.5 * [ mean((w_k C^pred_k - w_k C^gt_k)^2)
                              + mean((w_k C^gt_k (X^pred_k - X^gt_k))^2)
                              + mean((w_k C^gt_k (Y^pred_k - Y^gt_k))^2) ]

i.e. the offsets are only trained inside the target disk (C^gt = 1) of weighted joints.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["joints_mse_loss", "combined_target_mse_loss"]


def joints_mse_loss(pred: jnp.ndarray, target: jnp.ndarray, target_weight: jnp.ndarray | None = None,
                    *, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """HRNet's JointsMSELoss on NHWC heatmaps, computed in float32.

    Args:
      pred: `(B, h, w, K)` predicted heatmaps (any float dtype).
      target: `(B, h, w, K)` target heatmaps.
      target_weight: `(B, K)` per-joint weights (None: all ones, `USE_TARGET_WEIGHT: false`).
      mask: optional `(B,)` example mask (e.g. `valid`); the mean then runs over the masked-in
        examples only (all-zero mask -> 0).

    Returns:
      scalar float32 loss.
    """
    pred, target = _float32_pair(pred, target)
    diff = pred - target
    if target_weight is not None:
        diff = diff * target_weight.astype(jnp.float32)[:, None, None, :]
    per_example = jnp.mean(jnp.square(diff), axis=(1, 2, 3))
    if mask is None:
        return 0.5 * jnp.mean(per_example)
    m = mask.astype(jnp.float32)
    return 0.5 * jnp.sum(per_example * m) / jnp.maximum(jnp.sum(m), 1.0)


def _float32_pair(pred: jnp.ndarray, target: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Both maps as float32, after checking they have the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ")
    return pred.astype(jnp.float32), target.astype(jnp.float32)


def combined_target_mse_loss(pred: jnp.ndarray, target: jnp.ndarray, target_weight: jnp.ndarray | None = None,
                             *, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """mmpose's CombinedTargetMSELoss on NHWC combined maps (module doc), computed in float32.

    Args:
      pred: `(B, h, w, 3K)` network output (any float dtype), channels as the target.
      target: `(B, h, w, 3K)` 'udp_combined' targets.
      target_weight: `(B, K)` per-joint weights (None: all ones, `use_target_weight=False`).
      mask: optional `(B,)` example mask; the mean then runs over the masked-in examples only.

    Returns:
      scalar float32 loss.
    """
    pred, target = _float32_pair(pred, target)
    if pred.ndim != 4 or pred.shape[-1] % 3:
        raise ValueError(f"combined maps must be NHWC (B, h, w, 3K) with 3 channels per joint, got {pred.shape}; "
                         "build the network with 3 * num_keypoints outputs for codec 'udp_combined'")
    b, h, w, c = pred.shape
    pred = pred.reshape(b, h, w, c // 3, 3)
    target = target.reshape(b, h, w, c // 3, 3)
    cls_gt = target[..., 0]
    cls_pred = pred[..., 0]
    if target_weight is not None:
        tw = target_weight.astype(jnp.float32)[:, None, None, :]
        cls_gt = cls_gt * tw
        cls_pred = cls_pred * tw
    sq = (jnp.square(cls_pred - cls_gt)
          + jnp.square(cls_gt * (pred[..., 1] - target[..., 1]))
          + jnp.square(cls_gt * (pred[..., 2] - target[..., 2])))
    per_example = jnp.mean(sq, axis=(1, 2, 3))
    if mask is None:
        return 0.5 * jnp.mean(per_example)
    m = mask.astype(jnp.float32)
    return 0.5 * jnp.sum(per_example * m) / jnp.maximum(jnp.sum(m), 1.0)
