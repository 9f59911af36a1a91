"""JointsMSELoss in jax.numpy against HRNet's PyTorch module restated."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from psa_jax.tasks.pose_losses import joints_mse_loss


class _JointsMSELoss(torch.nn.Module):
    """HRNet lib/core/loss.py::JointsMSELoss (NCHW), restated."""

    def __init__(self, use_target_weight):
        super().__init__()
        self.criterion = torch.nn.MSELoss(reduction="mean")
        self.use_target_weight = use_target_weight

    def forward(self, output, target, target_weight):
        b, k = output.shape[:2]
        pred = output.reshape((b, k, -1)).split(1, 1)
        gt = target.reshape((b, k, -1)).split(1, 1)
        loss = 0
        for idx in range(k):
            p, g = pred[idx].squeeze(), gt[idx].squeeze()
            if self.use_target_weight:
                loss += 0.5 * self.criterion(p.mul(target_weight[:, idx]), g.mul(target_weight[:, idx]))
            else:
                loss += 0.5 * self.criterion(p, g)
        return loss / k


@pytest.mark.parametrize("use_weight", [True, False])
def test_matches_hrnet_joints_mse_loss(use_weight):
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(3, 16, 12, 17)).astype(np.float32)
    target = rng.random((3, 16, 12, 17)).astype(np.float32)
    weight = (rng.random((3, 17)) > 0.3).astype(np.float32)
    ref = _JointsMSELoss(use_weight)(torch.from_numpy(pred).permute(0, 3, 1, 2),
                                     torch.from_numpy(target).permute(0, 3, 1, 2),
                                     torch.from_numpy(weight)[..., None]).item()
    ours = joints_mse_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(weight) if use_weight else None)
    assert float(ours) == pytest.approx(ref, rel=1e-5)


def test_half_factor_mask_and_dtype():
    pred = jnp.ones((2, 4, 4, 2), jnp.bfloat16)
    target = jnp.zeros((2, 4, 4, 2))
    w = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    # squared error 1 where weighted: 6 of 8 joint maps -> 0.5 * 6 / 8
    assert float(joints_mse_loss(pred, target, w)) == pytest.approx(0.5 * 6 / 8)
    assert joints_mse_loss(pred, target, w).dtype == jnp.float32
    # mask out example 1: only example 0 (1 of 2 maps weighted) counts
    assert float(joints_mse_loss(pred, target, w, mask=jnp.array([True, False]))) == pytest.approx(0.25)
    assert float(joints_mse_loss(pred, target, w, mask=jnp.array([False, False]))) == 0.0
    with pytest.raises(ValueError):
        joints_mse_loss(pred, jnp.zeros((2, 4, 4, 3)), None)


def test_mask_mean_over_several_masked_in_examples():
    """Normalisation: per example, mean over (h, w, K) of ((pred - gt) * w_k)^2 (all K joints, zero-weight
    ones included, in the denominator); then the mean over the masked-in examples; times 0.5."""
    pred = jnp.stack([jnp.full((2, 2, 2), 1.0), jnp.full((2, 2, 2), 2.0), jnp.full((2, 2, 2), 3.0)])
    target = jnp.zeros((3, 2, 2, 2))
    w = jnp.array([[1.0, 0.0], [1.0, 0.5], [1.0, 1.0]])
    # example 0: (1 + 0) / 2 = 0.5; example 1: (4 * 1 + 4 * 0.25) / 2 = 2.5; example 2: 9
    assert float(joints_mse_loss(pred, target, w, mask=jnp.array([True, True, False]))) == pytest.approx(
        0.5 * (0.5 + 2.5) / 2)
    assert float(joints_mse_loss(pred, target, w, mask=jnp.array([1.0, 1.0, 1.0]))) == pytest.approx(
        0.5 * (0.5 + 2.5 + 9.0) / 3)
    # no mask: the same as all examples masked in
    assert float(joints_mse_loss(pred, target, w)) == pytest.approx(0.5 * 12.0 / 3)
