"""Polarized Self-Attention as the official code computes it, plus NumPy restatements.

Structure and numerics follow ``DeLightCMU/PSA: semantic-segmentation/network/PSA.py``
(code commit 588b370, 20 Jul 2021), classes ``PSA_p`` and ``PSA_s``. Written from that code,
not copied. Paper: H. Liu, F. Liu, X. Fan, D. Huang, "Polarized Self-Attention: Towards
High-quality Pixel-wise Regression", arXiv:2107.00782; docs/psa.md explains how code and paper
differ.

Tensor layout is NCHW. ``x: (B, C, H, W)``, ``IC = C // 2``, ``N = H * W``. Every conv is 1x1
(``kernel_size`` is accepted and ignored, exactly like the official code; ``stride`` goes to the
four q/v convs and is always 1 in practice).

state_dict keys (module attribute names are the official ones)::

    conv_q_right.weight (1, C, 1, 1)        conv_v_right.weight (IC, C, 1, 1)
    conv_q_left.weight  (IC, C, 1, 1)       conv_v_left.weight  (IC, C, 1, 1)
    PSA_p: conv_up.weight (C, IC, 1, 1)                       -- no bias, no norm
    PSA_s: conv_up.0.{weight (IC//4, IC, 1, 1), bias}         -- Conv, bias
           conv_up.1.{weight, bias} (IC//4, 1, 1)             -- LayerNorm([IC//4, 1, 1]), eps 1e-5
           conv_up.3.{weight (C, IC//4, 1, 1), bias}          -- Conv, bias (index 2 is ReLU)

Official method names are swapped w.r.t. the paper (DeLightCMU/PSA issue #5): the official
``spatial_pool`` is the paper's *channel-only* branch and ``channel_pool`` the *spatial-only*
branch. Here the methods carry the paper's names, :meth:`channel_only` and :meth:`spatial_only`.

* channel-only: ``Ach = sigmoid(conv_up(conv_v_right(x) @ softmax_N(conv_q_right(x))^T))``,
  output ``x * Ach`` (broadcast over H, W).
* spatial-only: ``G = mean_HW(conv_q_left(x))`` (no softmax on G in either variant),
  ``TH = conv_v_left(x)``; PSA_p: ``softmax_N(G @ TH)`` (softmax after the matmul);
  PSA_s: ``G @ softmax_N(TH)`` (softmax over N of each of the IC rows, before the matmul);
  ``Asp = sigmoid(.)``, output ``x * Asp`` (broadcast over C).
* PSA_p: ``y = x*Asp(x) + x*Ach(x)``; PSA_s: ``x1 = x*Ach(x); y = x1*Asp(x1)``. No residual.

Init (``reset_parameters``): kaiming_normal(fan_in, relu) on the four q/v convs, PyTorch default
on ``conv_up``, LayerNorm weight 1 bias 0 -- as the official code. (The NVIDIA seg pipeline then
overwrites all convs with N(0, 1e-3); parity tests use :func:`torch_reference.randomize_`.)
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["PSA_p", "PSA_s", "make_psa", "official_psa_numpy", "paper_psa_numpy",
           "random_paper_weights", "psa_param_count"]


def _conv1x1(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, padding=0, bias=bias)


class _PSABase(nn.Module):
    """Shared members of PSA_p / PSA_s (everything except ``conv_up`` and the composition)."""

    def __init__(self, inplanes: int, planes: int, kernel_size: int = 1, stride: int = 1):
        super().__init__()
        self.inplanes = inplanes
        self.inter_planes = planes // 2
        self.planes = planes
        self.kernel_size = kernel_size  # stored, unused (official behaviour)
        self.stride = stride
        # Attribute creation order = official order (it fixes the state_dict key order).
        self.conv_q_right = _conv1x1(inplanes, 1, stride)
        self.conv_v_right = _conv1x1(inplanes, self.inter_planes, stride)
        self.conv_up = self._make_conv_up()
        self.conv_q_left = _conv1x1(inplanes, self.inter_planes, stride)  # "g"
        self.conv_v_left = _conv1x1(inplanes, self.inter_planes, stride)  # "theta"
        self.reset_parameters()

    def _make_conv_up(self) -> nn.Module:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        if self.conv_q_right.weight.is_meta:  # shape-only build (torch.device('meta'))
            return
        for conv in (self.conv_q_right, self.conv_v_right, self.conv_q_left, self.conv_v_left):
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in", nonlinearity="relu")

    def channel_only(self, x: torch.Tensor) -> torch.Tensor:
        """Paper channel-only branch (official ``spatial_pool``): ``x * Ach``, (B, C, H, W)."""
        v = self.conv_v_right(x)                                   # (B, IC, H, W)
        b, ic, h, w = v.shape
        v = v.reshape(b, ic, h * w)                                # (B, IC, N)
        q = self.conv_q_right(x).reshape(b, 1, h * w)              # (B, 1, N)
        q = torch.softmax(q, dim=2)                                # softmax over positions
        z = torch.matmul(v, q.transpose(1, 2)).unsqueeze(-1)       # (B, IC, 1, 1)
        a_ch = torch.sigmoid(self.conv_up(z))                      # (B, C, 1, 1)
        return x * a_ch

    def _spatial_context(self, g: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def spatial_only(self, x: torch.Tensor) -> torch.Tensor:
        """Paper spatial-only branch (official ``channel_pool``): ``x * Asp``, (B, C, H, W)."""
        g = self.conv_q_left(x)                                    # (B, IC, H, W)
        b, ic, h, w = g.shape
        g = g.mean(dim=(2, 3)).reshape(b, 1, ic)                   # (B, 1, IC), no softmax
        theta = self.conv_v_left(x).reshape(b, self.inter_planes, h * w)  # (B, IC, N)
        ctx = self._spatial_context(g, theta).reshape(b, 1, h, w)  # (B, 1, H, W)
        return x * torch.sigmoid(ctx)


class PSA_p(_PSABase):
    """Official parallel PSA: ``y = x*Asp(x) + x*Ach(x)``. Params: ``2*C^2 + C`` (C = planes)."""

    def _make_conv_up(self) -> nn.Module:
        return _conv1x1(self.inter_planes, self.planes, 1, bias=False)

    def _spatial_context(self, g, theta):
        return torch.softmax(torch.matmul(g, theta), dim=2)       # softmax AFTER the matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context_channel = self.channel_only(x)
        context_spatial = self.spatial_only(x)
        return context_spatial + context_channel


class PSA_s(_PSABase):
    """Official sequential PSA: ``x1 = x*Ach(x); y = x1*Asp(x1)``.

    ``conv_up`` is the GCNet-style bottleneck ``Conv(IC->IC//4, bias) -> LayerNorm([IC//4,1,1])
    -> ReLU -> Conv(IC//4->C, bias)`` (official ``ratio = 4``). Params (C divisible by 8):
    ``C + 1.5C^2 + C^2/16 + C^2/8 + 3C/8 + C``.
    """

    ratio = 4

    def _make_conv_up(self) -> nn.Module:
        mid = self.inter_planes // self.ratio
        return nn.Sequential(
            _conv1x1(self.inter_planes, mid, 1, bias=True),
            nn.LayerNorm([mid, 1, 1]),
            nn.ReLU(inplace=True),
            _conv1x1(mid, self.planes, 1, bias=True),
        )

    def _spatial_context(self, g, theta):
        return torch.matmul(g, torch.softmax(theta, dim=2))       # softmax BEFORE the matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_only(self.channel_only(x))


def make_psa(kind: str | None, channels: int) -> nn.Module | None:
    """``'psa_p'`` -> ``PSA_p(C, C)``, ``'psa_s'`` -> ``PSA_s(C, C)``, ``None`` -> ``None``."""
    if kind is None:
        return None
    if kind == "psa_p":
        return PSA_p(channels, channels)
    if kind == "psa_s":
        return PSA_s(channels, channels)
    raise ValueError(f"unknown attention kind {kind!r}; expected 'psa_p', 'psa_s' or None")


def psa_param_count(kind: str, c: int) -> int:
    """Closed-form parameter count of the official block (the state_dict shapes of the module docstring)."""
    if kind == "psa_p":
        return 2 * c * c + c
    if kind == "psa_s":
        ic = c // 2
        mid = ic // 4
        return c + 3 * ic * c + (ic * mid + mid) + 2 * mid + (mid * c + c)
    raise ValueError(f"unknown attention kind {kind!r}")


# ----------------------------------------------------------------------------- NumPy restatements

def _softmax(a: np.ndarray, axis: int) -> np.ndarray:
    a = a - a.max(axis=axis, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _mat(w) -> np.ndarray:
    """A 1x1 conv weight (O, I, 1, 1) or a matrix (O, I) -> float64 (O, I)."""
    w = np.asarray(w, np.float64)
    return w.reshape(w.shape[0], w.shape[1])


def official_psa_numpy(x_nchw: np.ndarray, state: Mapping[str, np.ndarray], variant: str) -> np.ndarray:
    """Official PSA_p / PSA_s forward in float64 NumPy, from the module's state_dict.

    ``state`` has the keys listed in the module docstring (values as arrays, torch layout);
    ``variant`` is ``'psa_p'`` or ``'psa_s'``. Returns (B, C, H, W) float64. An independent
    restatement of the official forward pass (module docstring), used to check :class:`PSA_p` /
    :class:`PSA_s`.
    """
    x = np.asarray(x_nchw, np.float64)
    b, c, h, w = x.shape
    st = {k: np.asarray(v, np.float64) for k, v in state.items()}

    def a_ch(t):
        tf = t.reshape(b, c, h * w)
        v = np.einsum("oc,bcn->bon", _mat(st["conv_v_right.weight"]), tf)       # (B, IC, N)
        q = np.einsum("oc,bcn->bon", _mat(st["conv_q_right.weight"]), tf)[:, 0]  # (B, N)
        z = np.einsum("bin,bn->bi", v, _softmax(q, axis=1))                      # (B, IC)
        if variant == "psa_p":
            u = z @ _mat(st["conv_up.weight"]).T                                 # (B, C)
        else:
            m = z @ _mat(st["conv_up.0.weight"]).T + st["conv_up.0.bias"]        # (B, IC//4)
            mu = m.mean(axis=1, keepdims=True)
            var = m.var(axis=1, keepdims=True)
            m = (m - mu) / np.sqrt(var + 1e-5)
            m = m * st["conv_up.1.weight"].reshape(-1) + st["conv_up.1.bias"].reshape(-1)
            m = np.maximum(m, 0.0)
            u = m @ _mat(st["conv_up.3.weight"]).T + st["conv_up.3.bias"]         # (B, C)
        return _sigmoid(u)[:, :, None, None]

    def a_sp(t):
        tf = t.reshape(b, c, h * w)
        g = np.einsum("oc,bcn->bon", _mat(st["conv_q_left.weight"]), tf).mean(axis=2)  # (B, IC)
        th = np.einsum("oc,bcn->bon", _mat(st["conv_v_left.weight"]), tf)              # (B, IC, N)
        if variant == "psa_p":
            ctx = _softmax(np.einsum("bi,bin->bn", g, th), axis=1)
        else:
            ctx = np.einsum("bi,bin->bn", g, _softmax(th, axis=2))
        return _sigmoid(ctx).reshape(b, 1, h, w)

    if variant == "psa_p":
        return x * a_sp(x) + x * a_ch(x)
    if variant == "psa_s":
        x1 = x * a_ch(x)
        return x1 * a_sp(x1)
    raise ValueError(f"unknown variant {variant!r}; expected 'psa_p' or 'psa_s'")


def random_paper_weights(c: int, seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Random float64 weights in the layout :func:`paper_psa_numpy` expects (see there)."""
    rng = np.random.default_rng(seed)
    ic = c // 2

    def lin(o, i):
        return rng.normal(0.0, scale / np.sqrt(i), size=(o, i))

    return {
        "ch_wv": lin(ic, c), "ch_wq": lin(1, c), "ch_wz": lin(c, ic),
        "ch_ln_weight": rng.uniform(0.5, 1.5, size=c), "ch_ln_bias": rng.normal(0.0, 0.2, size=c),
        "sp_wv": lin(ic, c), "sp_wq": lin(ic, c),
    }


def paper_psa_numpy(x_nchw: np.ndarray, weights: Mapping[str, np.ndarray], layout: str) -> np.ndarray:
    """PSA as the PAPER formulates it, float64 NumPy.

    Paper: arXiv:2107.00782; the same formulation as the port
    ``xmu-xiaoma666/External-Attention-pytorch: model/attention/PolarizedSelfAttention.py``.

    ``x_nchw``: (B, C, H, W). ``layout``: ``'parallel'`` or ``'sequential'``.

    Weight layout (all 1x1 convs bias-free, given as plain matrices ``(out, in)``; a conv weight
    ``(out, in, 1, 1)`` is accepted too)::

        ch_wv (C/2, C)   channel branch value  W_v
        ch_wq (1, C)     channel branch query  W_q
        ch_wz (C, C/2)   channel branch up-projection W_z
        ch_ln_weight (C,), ch_ln_bias (C,)   LayerNorm over the C entries, eps 1e-5
        sp_wv (C/2, C)   spatial branch value  W_v
        sp_wq (C/2, C)   spatial branch query  W_q

    Formulas (N = H*W)::

        Ach(x) = sigmoid( LN_C( W_z ( W_v x . softmax_N(W_q x) ) ) )          (B, C, 1, 1)
        Asp(x) = sigmoid( softmax_{C/2}( GAP(W_q x) ) . W_v x )               (B, 1, H, W)
        parallel   : y = x*Ach(x) + x*Asp(x)
        sequential : x1 = x*Ach(x);  y = x1*Asp(x1)     (spatial weights read x1)

    Returns (B, C, H, W) float64.
    """
    x = np.asarray(x_nchw, np.float64)
    b, c, h, w = x.shape
    wv_c, wq_c, wz = _mat(weights["ch_wv"]), _mat(weights["ch_wq"]), _mat(weights["ch_wz"])
    gamma = np.asarray(weights["ch_ln_weight"], np.float64).reshape(c)
    beta = np.asarray(weights["ch_ln_bias"], np.float64).reshape(c)
    wv_s, wq_s = _mat(weights["sp_wv"]), _mat(weights["sp_wq"])

    def a_ch(t):
        tf = t.reshape(b, c, h * w)
        v = np.einsum("oc,bcn->bon", wv_c, tf)                     # (B, C/2, N)
        q = _softmax(np.einsum("oc,bcn->bon", wq_c, tf)[:, 0], axis=1)  # (B, N)
        z = np.einsum("bin,bn->bi", v, q) @ wz.T                   # (B, C)
        mu = z.mean(axis=1, keepdims=True)
        var = z.var(axis=1, keepdims=True)
        z = (z - mu) / np.sqrt(var + 1e-5) * gamma + beta
        return _sigmoid(z)[:, :, None, None]

    def a_sp(t):
        tf = t.reshape(b, c, h * w)
        q = np.einsum("oc,bcn->bon", wq_s, tf).mean(axis=2)        # GAP -> (B, C/2)
        q = _softmax(q, axis=1)                                    # softmax over C/2
        v = np.einsum("oc,bcn->bon", wv_s, tf)                     # (B, C/2, N)
        return _sigmoid(np.einsum("bi,bin->bn", q, v)).reshape(b, 1, h, w)

    if layout == "parallel":
        return x * a_ch(x) + x * a_sp(x)
    if layout == "sequential":
        x1 = x * a_ch(x)
        return x1 * a_sp(x1)
    raise ValueError(f"unknown layout {layout!r}; expected 'parallel' or 'sequential'")
