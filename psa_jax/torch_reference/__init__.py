"""PyTorch re-creations of the reference networks, used only by the test suite.

They are the parity reference for the Flax networks in ``psa_jax`` and the source of
checkpoint-shaped ``state_dict`` s for the converter tests. Each module re-creates (in its own
compact code) the structure, attribute names, order and numerics of one public codebase, named in
its docstring:

* ``psa``          -- official ``PSA_p`` / ``PSA_s`` (DeLightCMU/PSA) + NumPy restatements
                      (official and paper formulation).
* ``hrnet_pose``   -- HRNet building blocks shared by all HRNet references + the
                      leoxiaobin pose HRNet (optionally with PSA ``deattn``).
* ``hrnet_seg``    -- HRNet-Seg HRNetV2 / HRNetV2-OCR and the NVIDIA ``MscaleOCR``
                      (the network behind the official PSA Cityscapes checkpoints).
* ``hrnet_cls``    -- ImageNet HRNet-C key layout (HRNet-Image-Classification = timm).
* ``resnet_pose``  -- SimpleBaseline ResNet pose net (optionally with PSA ``deattn``).

This file only holds two helpers used everywhere: :func:`randomize_` (non-trivial random weights
and BN statistics for parity tests) and :func:`count_params`. It deliberately imports no
sub-module, so ``from psa_jax.torch_reference import hrnet_seg`` stays cheap.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["randomize_", "count_params"]


def count_params(module: nn.Module) -> int:
    """Number of trainable parameter values (BN running statistics are buffers, not counted).

    This is the convention of HRNet's ``get_model_summary`` and of the published "#Params".
    """
    return sum(p.numel() for p in module.parameters())


def _fan_in(m: nn.Module, weight: torch.Tensor) -> int:
    if isinstance(m, nn.ConvTranspose2d):
        # Each output of a stride-s transposed conv sees in_ch * (k/s)^2 inputs.
        k = m.kernel_size[0] * m.kernel_size[1]
        s = m.stride[0] * m.stride[1]
        return max(1, m.in_channels * k // s)
    return max(1, weight[0].numel())


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, conv_gain: float = 1.0) -> nn.Module:
    """Overwrite every parameter and BN/LN statistic of ``module`` with seeded random values.

    The goal is a parity test on *non-trivial* weights (under the official inits, e.g. the
    N(0, 0.001) convolutions of the HRNet pipelines, both PSA gates sit near sigmoid(0) = 0.5 and
    PSA_p is nearly an identity map), at a scale that keeps a 100-layer HRNet's activations
    finite in fp32 and PSA's sigmoids/softmaxes away from saturation:

    * Conv / ConvTranspose / Linear weight ~ N(0, (conv_gain / sqrt(fan_in))^2); bias ~ N(0, 0.1^2).
    * BatchNorm: weight ~ U(0.5, 1.0), bias ~ N(0, 0.1^2), running_mean ~ N(0, 0.1^2),
      running_var ~ U(0.5, 2.0) (strictly positive); ``num_batches_tracked`` left as is.
    * LayerNorm: weight ~ U(0.5, 1.5), bias ~ N(0, 0.2^2).
    * Any other floating parameter/buffer ~ N(0, 0.1^2).

    Deterministic: the same ``seed`` on the same architecture gives the same values (modules are
    visited in ``named_modules`` order with one ``torch.Generator``). Returns ``module``.
    """
    gen = torch.Generator().manual_seed(int(seed))

    def normal_(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=gen).mul_(std))

    def uniform_(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen).mul_(hi - lo).add_(lo))

    seen: set[int] = set()
    for _, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            normal_(m.weight, conv_gain / math.sqrt(_fan_in(m, m.weight)))
            if m.bias is not None:
                normal_(m.bias, 0.1)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                uniform_(m.weight, 0.5, 1.0)
                normal_(m.bias, 0.1)
            if m.running_mean is not None:
                normal_(m.running_mean, 0.1)
                uniform_(m.running_var, 0.5, 2.0)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                uniform_(m.weight, 0.5, 1.5)
            if m.bias is not None:
                normal_(m.bias, 0.2)
        else:
            continue
        seen.update(id(t) for t in m.parameters(recurse=False))
        seen.update(id(t) for t in m.buffers(recurse=False))
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen and t.is_floating_point():
            normal_(t, 0.1)
    return module
