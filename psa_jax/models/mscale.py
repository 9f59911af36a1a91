"""Hierarchical multi-scale attention network (Tao, Sapra, Catanzaro, arXiv 2005.10821) on HRNetV2-OCR.

This is NVIDIA's `semantic-segmentation: network/ocrnet.py::MscaleOCR` (arch `ocrnet.HRNet_Mscale`),
the network of the released PSA Cityscapes checkpoints (`DeLightCMU/PSA: semantic-segmentation`). Keys:
`backbone.*` (HRNetV2-W48 trunk, PSA under `...branches.b.k.deattn`), `ocr.*`, `scale_attn.*`.

One scale (`single_scale`): trunk -> OCR -> (cls, aux, ocr features); `scale_attn` (3x3 conv-BN-ReLU,
3x3 conv-BN-ReLU, 1x1 conv to 1 channel, sigmoid) predicts a per-pixel attention from the OCR
features; cls, aux and attention are resized bilinearly (align_corners=False) to the input size.

Two-scale training (`two_scale`): predictions at 0.5x (lo) and 1x (hi) are merged with the lo
scale's attention a: `joint = resize(a * p_lo) + (1 - resize(a)) * p_hi` (same for aux).

n-scale inference (`nscale`, e.g. scales 0.5/1.0/2.0, largest first): the running prediction is
merged with each new scale s as `p = a_s * p_s + (1 - a_s) * p` for s >= 1 (after resizing p to
p_s) and `p = resize(a_s * p_s) + (1 - resize(a_s)) * p` for s < 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers.conv import Conv2d
from psa_jax.layers.resize import resize_bilinear
from psa_jax.layers.xla_cpu import ProgramOptions
from psa_jax.models.blocks import ModelOptions
from psa_jax.models.hrnet import HRNetBackbone, HRNetSpec, concat_branches, hrnet_spec
from psa_jax.models.ocr import OCRBlock
from psa_jax.models.options import Placement, model_options

__all__ = ["ScaleAttentionHead", "MscaleOCR", "mscale_ocr"]


class ScaleAttentionHead(nnx.Module):
    """NVIDIA `make_attn_head`: conv0 3x3, bn0, ReLU, conv1 3x3, bn1, ReLU, conv2 1x1 -> 1, sigmoid."""

    def __init__(self, in_channels: int, *, bottleneck: int = 256, opts: ModelOptions, rngs: nnx.Rngs):
        kw = dict(dtype=opts.dtype, param_dtype=opts.param_dtype, program=opts.program, rngs=rngs)
        self.conv0 = Conv2d(in_channels, bottleneck, 3, **kw)
        self.bn0 = opts.bn(bottleneck, rngs=rngs)
        self.conv1 = Conv2d(bottleneck, bottleneck, 3, **kw)
        self.bn1 = opts.bn(bottleneck, rngs=rngs)
        self.conv2 = Conv2d(bottleneck, 1, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, h, w, C) -> attention in (0, 1), (B, h, w, 1)."""
        x = jax.nn.relu(self.bn0(self.conv0(x)))
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        return jax.nn.sigmoid(self.conv2(x).astype(jnp.float32))


def _resize_to(x: jax.Array, like: jax.Array) -> jax.Array:
    return resize_bilinear(x, like.shape[1:3], align_corners=False)


def _rescale(images: jax.Array, scale: float) -> jax.Array:
    """NVIDIA `ResizeX`: bilinear resize by `scale` to floor(H * s) x floor(W * s)."""
    if scale == 1.0:
        return images
    h, w = images.shape[1:3]
    return resize_bilinear(images, (int(h * scale), int(w * scale)), align_corners=False)


class MscaleOCR(nnx.Module):
    """HRNetV2-OCR with hierarchical multi-scale attention.

    Forward (training mode): `two_scale(images)`, a dict of (B, H, W, K) logits:
    'pred' (joint), 'aux' (joint auxiliary), 'pred_lo' (0.5x prediction resized to 1x),
    'pred_hi' (1x prediction) — the inputs of the NVIDIA/PSA loss (`psa_jax.tasks.seg_losses`).
    Forward (eval mode, `model.eval()`): `nscale(images, eval_scales)`, logits (B, H, W, K).

    Args:
      train_lo_scale: the low training scale (`MSCALE_LO_SCALE`, 0.5).
      eval_scales: inference scales (`n_scales "0.5,1.0,2.0"`); must contain 1.0.
      opts: block options (dtypes, attention, program).
    """

    def __init__(self, spec: HRNetSpec, *, num_classes: int, train_lo_scale: float = 0.5,
                 eval_scales: Sequence[float] = (0.5, 1.0, 2.0), opts: ModelOptions, rngs: nnx.Rngs):
        if 1.0 not in tuple(eval_scales):
            raise ValueError(f"eval_scales={tuple(eval_scales)} must contain 1.0 (hierarchical merging starts there)")
        self.train_lo_scale = train_lo_scale
        self.eval_scales = tuple(float(s) for s in eval_scales)
        self.deterministic = False
        self.backbone = HRNetBackbone(spec, multi_scale_output=True, upsample="bilinear", align_corners=False,
                                      opts=opts, rngs=rngs)
        self.ocr = OCRBlock(sum(spec.stages[-1].num_channels), num_classes, opts=opts, rngs=rngs)
        self.scale_attn = ScaleAttentionHead(512, opts=opts, rngs=rngs)

    def single_scale(self, images: jax.Array) -> dict[str, jax.Array]:
        """NVIDIA `_fwd`: (B, H, W, 3) -> {'cls', 'aux', 'attn'} all resized to (B, H, W, .)."""
        feats = concat_branches(self.backbone(images), align_corners=False)
        cls, aux, ocr_feats = self.ocr(feats)
        attn = self.scale_attn(ocr_feats)
        size = images.shape[1:3]
        up = lambda t: resize_bilinear(t, size, align_corners=False)  # noqa: E731
        return {"cls": up(cls), "aux": up(aux), "attn": up(attn.astype(cls.dtype))}

    def two_scale(self, images: jax.Array) -> dict[str, jax.Array]:
        """NVIDIA `two_scale_forward` (training): see the class docstring."""
        lo = self.single_scale(_rescale(images, self.train_lo_scale))
        hi = self.single_scale(images)
        attn = lo["attn"]
        p_lo = _resize_to(attn * lo["cls"], hi["cls"])
        aux_lo = _resize_to(attn * lo["aux"], hi["cls"])
        attn = _resize_to(attn, hi["cls"])
        return {"pred": p_lo + (1 - attn) * hi["cls"], "aux": aux_lo + (1 - attn) * hi["aux"],
                "pred_lo": _resize_to(lo["cls"], hi["cls"]), "pred_hi": hi["cls"]}

    def nscale(self, images: jax.Array, scales: Sequence[float] | None = None) -> jax.Array:
        """NVIDIA `nscale_forward` (inference): (B, H, W, 3) -> merged logits (B, H, W, K)."""
        scales = sorted(self.eval_scales if scales is None else tuple(scales), reverse=True)
        if 1.0 not in scales:
            raise ValueError(f"scales={scales} must contain 1.0")
        pred = None
        for s in scales:
            out = self.single_scale(_rescale(images, s))
            cls, attn = out["cls"], out["attn"]
            if pred is None:
                pred = cls
            elif s >= 1.0:
                pred = _resize_to(pred, cls)
                pred = attn * cls + (1 - attn) * pred
            else:
                cls = _resize_to(attn * cls, pred)
                attn = _resize_to(attn, pred)
                pred = cls + (1 - attn) * pred
        return _resize_to(pred, images)

    def __call__(self, images: jax.Array) -> jax.Array | dict[str, jax.Array]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be NHWC RGB (B, H, W, 3), got shape {images.shape}")
        return self.nscale(images) if self.deterministic else self.two_scale(images)


def mscale_ocr(width: int | str = 48, *, num_classes: int = 19, attention: str = "none",
               placement: Placement = "basic", eval_scales: Sequence[float] = (0.5, 1.0, 2.0),
               dtype: jnp.dtype | None = None, param_dtype: jnp.dtype = jnp.float32,
               program: str | ProgramOptions = "plain", rngs: nnx.Rngs | None = None) -> MscaleOCR:
    """Builds NVIDIA's HRNet_Mscale (the released PSA checkpoints: width 48, attention 'psa_p'/'psa_s').

    attention, placement, dtype, param_dtype, program, rngs: as in `psa_jax.models.pose.pose_hrnet`.
    """
    opts = model_options(attention, placement, dtype, param_dtype, program)
    return MscaleOCR(hrnet_spec(width), num_classes=num_classes, eval_scales=eval_scales, opts=opts,
                     rngs=rngs or nnx.Rngs(0))
