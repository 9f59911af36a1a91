"""Training-mode BatchNorm statistics where a channel's mean is large against its spread.

The one-pass variance E[x^2] - E[x]^2 in fp32 cancels catastrophically there (output errors of
0.17 at mean 100 / std 0.5 and 2.6 at mean 1000 on these inputs); `_batch_stats` shifts by a
sample of each channel. Checked against `torch.nn.BatchNorm2d` (fp32, training mode; tolerances
allow for PyTorch's own fp32 rounding of the mean, which grows with mean / std) and against the
float64 formulas, for both programs (autodiff and the hand-written VJP).
"""
import numpy as np
import pytest
import torch

import jax.numpy as jnp
from flax import nnx

from psa_jax.layers.norm import BatchNorm

C = 3
SHAPE = (4, 8, 8, C)
EPS, MOMENTUM = 1e-5, 0.1           # BatchNorm's momentum is PyTorch's convention: same value
CHANNEL_MEAN = np.array([1.0, -1.0, 0.5])     # times the case's mean
CHANNEL_STD = np.array([1.0, 0.5, 2.0])       # times the case's std
CASES = [(0.0, 0.5), (1.0, 0.5), (100.0, 0.5), (1000.0, 0.5), (1e4, 1.0)]
NAMES = ("y", "running_mean", "running_var", "dx", "d_scale", "d_bias")


def _inputs(mean, std, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(SHAPE) * std * CHANNEL_STD + mean * CHANNEL_MEAN).astype(np.float32)
    g = rng.standard_normal(SHAPE).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, C).astype(np.float32)
    bias = rng.standard_normal(C).astype(np.float32)
    return x, g, scale, bias


def _float64(x, g, scale, bias):
    """The training-mode forward, running statistics and gradient of sum(y * g), in float64."""
    x, g, scale, bias = (v.astype(np.float64) for v in (x, g, scale, bias))
    axes, n = (0, 1, 2), x.size // C
    mean, var = x.mean(axes), x.var(axes)
    std = np.sqrt(var + EPS)
    x_hat = (x - mean) / std
    d_bias, d_scale = g.sum(axes), (g * x_hat).sum(axes)
    dx = scale / std * (g - d_bias / n - x_hat * d_scale / n)
    running_var = (1 - MOMENTUM) * 1.0 + MOMENTUM * var * n / (n - 1)
    return dict(zip(NAMES, (x_hat * scale + bias, MOMENTUM * mean, running_var, dx, d_scale, d_bias)))


def _torch(x, g, scale, bias):
    bn = torch.nn.BatchNorm2d(C, eps=EPS, momentum=MOMENTUM).train()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(scale))
        bn.bias.copy_(torch.from_numpy(bias))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    y = bn(xt)
    (y * torch.from_numpy(g.transpose(0, 3, 1, 2).copy())).sum().backward()
    nhwc = lambda t: t.detach().permute(0, 2, 3, 1).numpy()        # noqa: E731
    return dict(zip(NAMES, (nhwc(y), bn.running_mean.numpy(), bn.running_var.numpy(), nhwc(xt.grad),
                            bn.weight.grad.numpy(), bn.bias.grad.numpy())))


def _ours(x, g, scale, bias, program, dtype=None):
    bn = BatchNorm(C, program=program, epsilon=EPS, momentum=MOMENTUM, dtype=dtype)
    bn.scale.set_value(jnp.asarray(scale))
    bn.bias.set_value(jnp.asarray(bias))
    gj = jnp.asarray(g)

    def loss(m, v):
        y = m(v)
        return jnp.sum(y.astype(jnp.float32) * gj), y

    (_, y), (grads, dx) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(bn, jnp.asarray(x, dtype or jnp.float32))
    return dict(zip(NAMES, (np.asarray(y, np.float32), np.asarray(bn.mean[...]), np.asarray(bn.var[...]),
                            np.asarray(dx, np.float32), np.asarray(grads.scale[...]), np.asarray(grads.bias[...]))))


def _ratio(mean, std):
    """max over channels of |mean| / std: PyTorch's fp32 rounding of the mean scales with it."""
    return float(np.max(np.abs(mean * CHANNEL_MEAN) / (std * CHANNEL_STD)))


def _check(got, want, tol, err):
    for name in NAMES:
        rtol, atol = tol[name]
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol * max(1.0, float(np.abs(want[name]).max())),
                                   err_msg=f"{name} ({err})")


@pytest.mark.parametrize("program", ["plain", "xla_cpu"])
@pytest.mark.parametrize("mean,std", CASES)
def test_batchnorm_training_matches_float64(mean, std, program):
    """Within a few fp32 roundings of the exact values, whatever the mean (old code: y off by 0.17
    at mean 100, 2.6 at mean 1000)."""
    args = _inputs(mean, std)
    tol = dict(y=(0, 1e-5), running_mean=(2e-6, 1e-7), running_var=(1e-6, 1e-7), dx=(0, 1e-5),
               d_scale=(0, 1e-5), d_bias=(0, 1e-5))
    _check(_ours(*args, program), _float64(*args), tol, f"mean {mean}, std {std}, {program}")


@pytest.mark.parametrize("program", ["plain", "xla_cpu"])
@pytest.mark.parametrize("mean,std", CASES)
def test_batchnorm_training_matches_torch(mean, std, program):
    """As PyTorch's `BatchNorm2d`: tolerances of our fp32 rounding plus PyTorch's, whose rounding of
    the mean grows with |mean| / std (at |mean| / std = 2e4: 1.2e-2 in y, 0.28 in d_scale against
    float64)."""
    args = _inputs(mean, std)
    k = _ratio(mean, std)
    tol = dict(y=(0, 1e-5 + 2e-6 * k), running_mean=(2e-6, 1e-7), running_var=(1e-5, 1e-7),
               dx=(0, 1e-5 + 2e-6 * k), d_scale=(0, 1e-5 + 4e-5 * k), d_bias=(0, 1e-5))
    _check(_ours(*args, program), _torch(*args), tol, f"mean {mean}, std {std}, {program}")


@pytest.mark.parametrize("mean,std", CASES)
def test_batchnorm_programs_agree_at_large_means(mean, std):
    """Autodiff and the hand-written VJP: the same forward numbers, gradients to fp32 rounding."""
    args = _inputs(mean, std)
    plain, fused = _ours(*args, "plain"), _ours(*args, "xla_cpu")
    for name in ("y", "running_mean", "running_var"):
        np.testing.assert_array_equal(fused[name], plain[name], err_msg=name)
    for name in ("dx", "d_scale", "d_bias"):
        np.testing.assert_allclose(fused[name], plain[name], rtol=2e-5,
                                   atol=2e-5 * max(1.0, float(np.abs(plain[name]).max())), err_msg=name)


@pytest.mark.parametrize("program", ["plain", "xla_cpu"])
def test_batchnorm_bfloat16_statistics_in_float32(program):
    """bf16 compute: the statistics are the fp32 ones of the same (bf16-representable) values, and
    the output is within bf16 rounding of the float64 one even at mean 100."""
    x, g, scale, bias = _inputs(100.0, 0.5)
    x = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
    low = _ours(x, g, scale, bias, program, dtype=jnp.bfloat16)
    full = _ours(x, g, scale, bias, program)
    np.testing.assert_allclose(low["running_mean"], full["running_mean"], rtol=1e-7)
    np.testing.assert_allclose(low["running_var"], full["running_var"], rtol=1e-7)
    want = _float64(x, g, scale, bias)
    for name in ("y", "d_scale", "d_bias"):
        np.testing.assert_allclose(low[name], want[name], rtol=0, atol=0.02 * float(np.abs(want[name]).max()),
                                   err_msg=name)


def test_default_momentum_is_pytorchs_default():
    """A BatchNorm built without `momentum` updates its running statistics as a default
    `torch.nn.BatchNorm2d` (momentum 0.1) does after one training forward on the same input."""
    x = _inputs(2.0, 1.5, seed=3)[0]
    bn = BatchNorm(C)
    bn(jnp.asarray(x))
    ref = torch.nn.BatchNorm2d(C).train()
    with torch.no_grad():
        ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(np.asarray(bn.mean[...]), ref.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var[...]), ref.running_var.numpy(), rtol=1e-5, atol=1e-6)
