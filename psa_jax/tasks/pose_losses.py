"""Heatmap regression loss for top-down pose (jax.numpy).

HRNet `lib/core/loss.py::JointsMSELoss` (`LOSS.USE_TARGET_WEIGHT: true`): for each joint k,
`0.5 * mean over (batch, pixels) of (pred_k * w_k - gt_k * w_k)^2`, summed over joints and
divided by K; equivalently `0.5 * mean((pred - gt)^2 * w^2)` over every element. mmpose's
`KeypointMSELoss` has no 0.5 (twice this value). OHKM is off in all HRNet COCO configs.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["joints_mse_loss"]


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
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ")
    diff = pred - target
    if target_weight is not None:
        diff = diff * target_weight.astype(jnp.float32)[:, None, None, :]
    per_example = jnp.mean(jnp.square(diff), axis=(1, 2, 3))
    if mask is None:
        return 0.5 * jnp.mean(per_example)
    m = mask.astype(jnp.float32)
    return 0.5 * jnp.sum(per_example * m) / jnp.maximum(jnp.sum(m), 1.0)
