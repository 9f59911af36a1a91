"""Segmentation HRNets: HRNet-Seg HRNetV2(-OCR) and NVIDIA's MscaleOCR (official PSA checkpoints).

Written from the public code named below (a)-(c), not copied.
Shared HRNet blocks come from :mod:`torch_reference.hrnet_pose`. All BN are plain
``nn.BatchNorm2d`` (momentum 0.1, eps 1e-5; the originals use SyncBN / apex SyncBN, identical in
eval mode). Tensors are NCHW.

(a) :class:`HRNetV2Seg` -- ``HRNet/HRNet-Semantic-Segmentation`` branch ``HRNet-OCR`` (0bbb288),
    ``lib/models/seg_hrnet.py``. Stage 4 keeps all four outputs; fuse upsampling bilinear with
    ``align_corners = MODEL.ALIGN_CORNERS`` (default **True**); the same ``align_corners`` in the
    HRNetV2 concat (branches 1-3 upsampled to branch 0 -> 720 ch for W48). Head ``last_layer`` =
    ``Seq(conv1x1 720->720 +bias, BN, ReLU, conv1x1 720->num_classes +bias)``; output logits at
    1/4 resolution (the loss upsamples). 65,859,379 params for W48 / 19 classes.
    Keys: ``conv1.weight`` ... ``stage4.2.fuse_layers.3.2.1.running_var``, ``last_layer.0.weight``
    (720,720,1,1), ``last_layer.1.*`` (BN), ``last_layer.3.{weight (19,720,1,1), bias}``.

(b) :class:`HRNetOCRSeg` -- same repo/branch, ``lib/models/seg_hrnet_ocr.py``. Its keys DIFFER from
    NVIDIA's: no ``backbone.`` / ``ocr.`` prefixes (``conv1.weight``, ``conv3x3_ocr.0.weight``), the
    BN of ``conv3x3_ocr`` is ``conv3x3_ocr.1.*`` (NVIDIA: ``.1.0.*``) and ``aux_head`` is
    ``aux_head.{0 conv, 1 BN, 3 conv}`` (NVIDIA: ``.{0, 1.0, 2}``). OCR block keys
    (``ocr_distri_head.object_context_block.f_pixel.0.weight`` ...) are the same. align_corners
    True. ``forward`` returns ``[aux_logits, cls_logits]``, both (B, K, H/4, W/4) (official order).

(c) NVIDIA ``NVIDIA/semantic-segmentation`` (7726b14) ``network/ocrnet.py::MscaleOCR``
    (``HRNet_Mscale``), ``network/ocr_utils.py``, ``network/utils.py::make_attn_head``,
    ``network/mynn.py``, with the PSA change of ``DeLightCMU/PSA: semantic-segmentation/network/
    hrnetv2.py`` (``deattn`` in every stage 2-4 BasicBlock; PSA_s hard-coded there, PSA_p for the
    released PSA(p) checkpoint; ``attention=None`` gives NVIDIA's plain HRNet-OCR). Config defaults
    (``config.py``): ``ALIGN_CORNERS False`` everywhere (fuse, HRNetV2 concat, ``Upsample``,
    ``scale_as``, ``ResizeX``), ``OCR.MID_CHANNELS 512``, ``OCR.KEY_CHANNELS 256``,
    ``SEGATTN_BOT_CH 256``, ``MSCALE_INNER_3x3 True``, ``MSCALE_DROPOUT False``,
    ``MSCALE_OLDARCH False``, ``MSCALE_LO_SCALE 0.5``, ``OCR_ASPP False``, Dropout2d(0.05) in the OCR.
    Keys (those of the official PSA checkpoints, which NVIDIA's trainer saves from the DDP-wrapped
    network; shown without the ``module.`` prefix)::

        backbone.conv1.weight (64,3,3,3) ... backbone.stage{2,3,4}.{m}.branches.{b}.{k}.deattn.*
        ocr.conv3x3_ocr.0.{weight (512,720,3,3), bias}, ocr.conv3x3_ocr.1.0.* (BN)
        ocr.ocr_distri_head.object_context_block.{f_pixel,f_object}.{0,2}.weight, .{1,3}.0.* (BN)
        ocr.ocr_distri_head.object_context_block.{f_down,f_up}.0.weight, .1.0.*
        ocr.ocr_distri_head.conv_bn_dropout.0.weight (512,1024,1,1), .1.0.*
        ocr.cls_head.{weight (19,512,1,1), bias}
        ocr.aux_head.0.{weight (720,720,1,1), bias}, .1.0.* (BN), .2.{weight (19,720,1,1), bias}
        scale_attn.conv0.weight (256,512,3,3), scale_attn.bn0.*, scale_attn.conv1.weight
        (256,256,3,3), scale_attn.bn1.*, scale_attn.conv2.weight (1,256,1,1)   (no biases)

    Multi-scale conventions: an input is resized by ``ResizeX`` = ``F.interpolate(scale_factor=s,
    mode='bilinear', align_corners=False, recompute_scale_factor=True)`` (output size
    ``floor(H*s)``); every per-scale output (cls, aux, attention) is resized bilinearly to that
    scale's input size inside ``_fwd``; ``scale_as`` resizes bilinearly to another tensor's size.

Init: backbones use the official N(0, 0.001) conv / BN(1, 0) init (``get_seg_model``; NVIDIA's
also overwrites PSA convs); OCR heads and ``scale_attn`` keep PyTorch defaults (NVIDIA
``INIT_DECODER False``, ``init_attn`` commented out). Parity tests use ``randomize_``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .hrnet_pose import BN_MOMENTUM, HRNetBackbone

__all__ = ["HRNetV2Seg", "HRNetOCRSeg", "HRNetV2Trunk", "SpatialGather", "ObjectAttentionBlock",
           "SpatialOCR", "OCRBlock", "make_scale_attn_head", "MscaleOCR", "resize_x", "scale_as",
           "two_scale_loss", "SEG_W48_PARAMS"]

SEG_W48_PARAMS = 65_859_379


def _bn(c: int, momentum: float = BN_MOMENTUM) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=momentum)


def _bn_relu(c: int) -> nn.Sequential:
    """NVIDIA ``BNReLU`` / HRNet-Seg ``ModuleHelper.BNReLU``: ``Seq(BN, ReLU)`` (keys ``.0.*``)."""
    return nn.Sequential(_bn(c), nn.ReLU())


def hrnetv2_concat(x: Sequence[torch.Tensor], align_corners: bool) -> torch.Tensor:
    """HRNetV2 representation: upsample branches 1.. bilinearly to branch 0, concat on C."""
    h, w = x[0].shape[-2:]
    ups = [x[0]] + [F.interpolate(t, size=(h, w), mode="bilinear", align_corners=align_corners)
                    for t in x[1:]]
    return torch.cat(ups, dim=1)


# ----------------------------------------------------------------------------- HRNet-Seg

class HRNetV2Seg(HRNetBackbone):
    """HRNet-Seg HRNetV2 segmentation net: (B, 3, H, W) -> logits (B, K, ceil(H/4), ceil(W/4)).

    ``HRNetV2Seg(num_classes=19, width=48, align_corners=True, attention=None)``.
    """

    def __init__(self, num_classes: int = 19, width: int = 48, align_corners: bool = True,
                 attention: str | None = None, final_conv_kernel: int = 1):
        super().__init__(width=width, attention=attention, fuse_upsample="bilinear",
                         align_corners=align_corners, last_multi_scale=True)
        c = sum(self.pre_stage_channels)
        self.last_layer = nn.Sequential(
            nn.Conv2d(c, c, kernel_size=1, stride=1, padding=0),
            _bn(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, num_classes, kernel_size=final_conv_kernel, stride=1,
                      padding=1 if final_conv_kernel == 3 else 0),
        )
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = hrnetv2_concat(self.forward_features(x), self.align_corners)
        return self.last_layer(feats)


class SpatialGather(nn.Module):
    """Soft object regions -> object vectors. feats (B, C, H, W), probs (B, K, H, W)
    -> (B, C, K, 1). ``softmax_HW(scale * probs) @ feats``. No parameters."""

    def __init__(self, cls_num: int = 0, scale: float = 1.0):
        super().__init__()
        self.cls_num = cls_num
        self.scale = scale

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        b, k = probs.shape[:2]
        probs = torch.softmax(self.scale * probs.reshape(b, k, -1), dim=2)   # (B, K, HW)
        feats = feats.reshape(b, feats.shape[1], -1).permute(0, 2, 1)          # (B, HW, C)
        return torch.matmul(probs, feats).permute(0, 2, 1).unsqueeze(3)        # (B, C, K, 1)


class ObjectAttentionBlock(nn.Module):
    """OCR object-contextual attention (scale 1). x (B, Cin, H, W), proxy (B, Cin, K, 1)
    -> context (B, Cin, H, W). ``softmax_K(key_ch^-0.5 * q.k) @ v`` then ``f_up``."""

    def __init__(self, in_channels: int, key_channels: int, scale: int = 1):
        super().__init__()
        if scale != 1:
            raise ValueError("only scale=1 is used by HRNet-OCR / MscaleOCR")
        self.scale = scale
        self.in_channels = in_channels
        self.key_channels = key_channels

        def two_layer() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_channels, key_channels, 1, 1, 0, bias=False), _bn_relu(key_channels),
                nn.Conv2d(key_channels, key_channels, 1, 1, 0, bias=False), _bn_relu(key_channels))

        self.f_pixel = two_layer()
        self.f_object = two_layer()
        self.f_down = nn.Sequential(nn.Conv2d(in_channels, key_channels, 1, 1, 0, bias=False),
                                    _bn_relu(key_channels))
        self.f_up = nn.Sequential(nn.Conv2d(key_channels, in_channels, 1, 1, 0, bias=False),
                                  _bn_relu(in_channels))

    def forward(self, x: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        query = self.f_pixel(x).reshape(b, self.key_channels, -1).permute(0, 2, 1)   # (B, HW, Ck)
        key = self.f_object(proxy).reshape(b, self.key_channels, -1)                 # (B, Ck, K)
        value = self.f_down(proxy).reshape(b, self.key_channels, -1).permute(0, 2, 1)  # (B, K, Ck)
        sim = torch.softmax((self.key_channels ** -0.5) * torch.matmul(query, key), dim=-1)
        context = torch.matmul(sim, value).permute(0, 2, 1).contiguous()
        return self.f_up(context.reshape(b, self.key_channels, h, w))


class SpatialOCR(nn.Module):
    """``SpatialOCR_Module``: ``conv_bn_dropout(cat[context, feats])``. (B, Cin, H, W) -> (B, Cout, H, W)."""

    def __init__(self, in_channels: int, key_channels: int, out_channels: int, scale: int = 1,
                 dropout: float = 0.05):
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(in_channels, key_channels, scale)
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(2 * in_channels, out_channels, kernel_size=1, padding=0, bias=False),
            _bn_relu(out_channels),
            nn.Dropout2d(dropout),
        )

    def forward(self, feats: torch.Tensor, proxy_feats: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(feats, proxy_feats)
        return self.conv_bn_dropout(torch.cat([context, feats], dim=1))


class HRNetOCRSeg(HRNetBackbone):
    """HRNet-Seg HRNetV2-OCR: (B, 3, H, W) -> ``[aux_logits, cls_logits]`` at 1/4 resolution.

    ``HRNetOCRSeg(num_classes=19, width=48, align_corners=True, attention=None,
    ocr_mid_channels=512, ocr_key_channels=256)``. Forward order as ``seg_hrnet_ocr.py``:
    ``aux_head(feats)``, ``conv3x3_ocr(feats)``, gather, distribute, ``cls_head``.
    """

    def __init__(self, num_classes: int = 19, width: int = 48, align_corners: bool = True,
                 attention: str | None = None, ocr_mid_channels: int = 512,
                 ocr_key_channels: int = 256):
        super().__init__(width=width, attention=attention, fuse_upsample="bilinear",
                         align_corners=align_corners, last_multi_scale=True)
        c = sum(self.pre_stage_channels)
        self.conv3x3_ocr = nn.Sequential(
            nn.Conv2d(c, ocr_mid_channels, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(ocr_mid_channels),
            nn.ReLU(inplace=True),
        )
        self.ocr_gather_head = SpatialGather(num_classes)
        self.ocr_distri_head = SpatialOCR(ocr_mid_channels, ocr_key_channels, ocr_mid_channels,
                                          scale=1, dropout=0.05)
        self.cls_head = nn.Conv2d(ocr_mid_channels, num_classes, kernel_size=1, stride=1,
                                  padding=0, bias=True)
        self.aux_head = nn.Sequential(
            nn.Conv2d(c, c, kernel_size=1, stride=1, padding=0),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, num_classes, kernel_size=1, stride=1, padding=0, bias=True),
        )
        self.init_weights(skip_name_parts=("cls", "aux", "ocr"))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = hrnetv2_concat(self.forward_features(x), self.align_corners)
        out_aux = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        context = self.ocr_gather_head(feats, out_aux)
        feats = self.ocr_distri_head(feats, context)
        return [out_aux, self.cls_head(feats)]


# ----------------------------------------------------------------------------- NVIDIA MscaleOCR

def scale_as(x: torch.Tensor, y: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """NVIDIA ``mynn.scale_as``: bilinear resize of ``x`` to ``y``'s (H, W)."""
    return F.interpolate(x, size=(y.shape[2], y.shape[3]), mode="bilinear",
                         align_corners=align_corners)


def upsample_to(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """NVIDIA ``mynn.Upsample``: bilinear resize to ``size`` (H, W)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def resize_x(x: torch.Tensor, scale: float, align_corners: bool = False) -> torch.Tensor:
    """NVIDIA ``mynn.ResizeX`` (torch >= 1.5 path): output size ``floor(H*scale)``; the
    interpolation uses the recomputed ratio in/out (``recompute_scale_factor=True``)."""
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=align_corners,
                         recompute_scale_factor=True)


class HRNetV2Trunk(HRNetBackbone):
    """NVIDIA/PSA ``hrnetv2.HighResolutionNet``: (B, 3, H, W) -> ``(None, None, feats)``,
    feats (B, 15C, H/4, W/4) (720 ch for W48). Bilinear fuse/concat, ``align_corners`` False.
    ``attention``: ``'psa_s'`` (as the released PSA code), ``'psa_p'``, or ``None`` (NVIDIA)."""

    def __init__(self, width: int = 48, attention: str | None = "psa_s", align_corners: bool = False):
        super().__init__(width=width, attention=attention, fuse_upsample="bilinear",
                         align_corners=align_corners, last_multi_scale=True)
        self.high_level_ch = sum(self.pre_stage_channels)
        self.init_weights(skip_name_parts=("cls", "aux", "ocr"))

    def forward(self, x: torch.Tensor):
        return None, None, hrnetv2_concat(self.forward_features(x), self.align_corners)


class OCRBlock(nn.Module):
    """NVIDIA ``OCR_block``: feats (B, 720, h, w) -> ``(cls_out, aux_out, ocr_feats)`` with
    shapes (B, K, h, w), (B, K, h, w), (B, 512, h, w)."""

    def __init__(self, high_level_ch: int = 720, num_classes: int = 19, mid_channels: int = 512,
                 key_channels: int = 256):
        super().__init__()
        self.conv3x3_ocr = nn.Sequential(
            nn.Conv2d(high_level_ch, mid_channels, kernel_size=3, stride=1, padding=1),
            _bn_relu(mid_channels),
        )
        self.ocr_gather_head = SpatialGather(num_classes)
        self.ocr_distri_head = SpatialOCR(mid_channels, key_channels, mid_channels, scale=1,
                                          dropout=0.05)
        self.cls_head = nn.Conv2d(mid_channels, num_classes, kernel_size=1, stride=1, padding=0,
                                  bias=True)
        self.aux_head = nn.Sequential(
            nn.Conv2d(high_level_ch, high_level_ch, kernel_size=1, stride=1, padding=0),
            _bn_relu(high_level_ch),
            nn.Conv2d(high_level_ch, num_classes, kernel_size=1, stride=1, padding=0, bias=True),
        )

    def forward(self, high_level_features: torch.Tensor):
        feats = self.conv3x3_ocr(high_level_features)
        aux_out = self.aux_head(high_level_features)
        context = self.ocr_gather_head(feats, aux_out)
        ocr_feats = self.ocr_distri_head(feats, context)
        return self.cls_head(ocr_feats), aux_out, ocr_feats


def make_scale_attn_head(in_ch: int = 512, out_ch: int = 1, bot_ch: int = 256) -> nn.Sequential:
    """NVIDIA ``make_attn_head`` with default config: conv0 3x3, bn0, re0, conv1 3x3, bn1, re1,
    conv2 1x1, sig (all convs bias-free). (B, 512, h, w) -> (B, 1, h, w) in (0, 1)."""
    return nn.Sequential(OrderedDict([
        ("conv0", nn.Conv2d(in_ch, bot_ch, kernel_size=3, padding=1, bias=False)),
        ("bn0", nn.BatchNorm2d(bot_ch)),
        ("re0", nn.ReLU(inplace=True)),
        ("conv1", nn.Conv2d(bot_ch, bot_ch, kernel_size=3, padding=1, bias=False)),
        ("bn1", nn.BatchNorm2d(bot_ch)),
        ("re1", nn.ReLU(inplace=True)),
        ("conv2", nn.Conv2d(bot_ch, out_ch, kernel_size=1, bias=False)),
        ("sig", nn.Sigmoid()),
    ]))


def fmt_scale(prefix: str, scale: float) -> str:
    """NVIDIA ``fmt_scale``: ``'pred', 0.5 -> 'pred_0.5x'`` (its ``replace('.', '')`` is a no-op)."""
    return f"{prefix}_{float(scale)}x"


class MscaleOCR(nn.Module):
    """NVIDIA ``ocrnet.MscaleOCR`` (= ``HRNet_Mscale``, the architecture of the PSA checkpoints).

    ``MscaleOCR(num_classes=19, attention='psa_s', width=48, n_scales=None,
    mscale_lo_scale=0.5, align_corners=False)``. Attributes ``backbone``, ``ocr``, ``scale_attn``.
    Inputs are images (B, 3, H, W) (a tensor, not NVIDIA's ``{'images': ...}`` dict).

    * :meth:`single_scale_forward` (= NVIDIA ``_fwd``): dict ``cls_out``, ``aux_out``,
      ``logit_attn`` (attention in (0,1), despite the name), each resized to (H, W).
    * :meth:`nscale_forward` (eval inference; scales sorted high -> low; 1.0 required): dict with
      ``pred_{s}x`` for every scale, ``attn_{s}x`` for every scale != 2.0, and ``pred`` (the
      hierarchical combination), all (B, ·, H·s, W·s) per scale and (B, K, H, W) for ``pred``.
      ``return_aux=True`` adds ``aux`` (combined the same way; NVIDIA uses it only for its loss).
    * :meth:`two_scale_forward` (training path; its eval dict in NVIDIA is the subset
      ``pred, pred_05x, pred_10x, attn_05x``): dict
      ``pred`` joint logits (B,K,H,W) [main loss], ``aux`` joint aux logits (B,K,H,W) [aux loss,
      weight OCR_ALPHA 0.4], ``pred_05x`` lo-scale logits at the lo input size,
      ``pred_05x_up`` = ``scale_as(pred_05x, pred_10x)`` [loss_lo, weight 0.05],
      ``pred_10x`` 1x logits [loss_hi, weight 0.05], ``attn_05x`` lo-scale attention at lo size.
      ``joint = up(a_lo * p_lo) + (1 - up(a_lo)) * p_1x`` (same for aux).
    * :meth:`forward`: training -> ``two_scale_forward``; eval -> ``nscale_forward(n_scales)``
      if ``n_scales`` is set, else ``two_scale_forward`` (NVIDIA's dispatch).
    """

    def __init__(self, num_classes: int = 19, attention: str | None = "psa_s", width: int = 48,
                 n_scales: Sequence[float] | None = None, mscale_lo_scale: float = 0.5,
                 align_corners: bool = False, ocr_mid_channels: int = 512,
                 ocr_key_channels: int = 256, segattn_bot_ch: int = 256):
        super().__init__()
        self.align_corners = align_corners
        self.n_scales = list(n_scales) if n_scales else None
        self.mscale_lo_scale = mscale_lo_scale
        self.backbone = HRNetV2Trunk(width=width, attention=attention, align_corners=align_corners)
        self.ocr = OCRBlock(self.backbone.high_level_ch, num_classes, ocr_mid_channels,
                            ocr_key_channels)
        self.scale_attn = make_scale_attn_head(ocr_mid_channels, 1, segattn_bot_ch)

    def single_scale_forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[2:]
        _, _, high_level_features = self.backbone(x)
        cls_out, aux_out, ocr_mid_feats = self.ocr(high_level_features)
        attn = self.scale_attn(ocr_mid_feats)
        ac = self.align_corners
        return {"cls_out": upsample_to(cls_out, size, ac), "aux_out": upsample_to(aux_out, size, ac),
                "logit_attn": upsample_to(attn, size, ac)}

    _fwd = single_scale_forward

    def nscale_forward(self, images: torch.Tensor, scales: Sequence[float],
                       return_aux: bool = False) -> dict[str, torch.Tensor]:
        if 1.0 not in scales:
            raise ValueError(f"scales {list(scales)} must contain 1.0, the target scale")
        ac = self.align_corners
        pred = aux = None
        out: dict[str, torch.Tensor] = {}
        for s in sorted(scales, reverse=True):
            o = self.single_scale_forward(resize_x(images, s, ac))
            cls_out, attn_out, aux_out = o["cls_out"], o["logit_attn"], o["aux_out"]
            out[fmt_scale("pred", s)] = cls_out
            if s != 2.0:
                out[fmt_scale("attn", s)] = attn_out
            if pred is None:
                pred, aux = cls_out, aux_out
            elif s >= 1.0:
                # downscale the previous (higher-resolution) combination to this scale
                pred = attn_out * cls_out + (1 - attn_out) * scale_as(pred, cls_out, ac)
                aux = attn_out * aux_out + (1 - attn_out) * scale_as(aux, cls_out, ac)
            else:
                # s < 1: upscale the attention-weighted current prediction
                cls_up = scale_as(attn_out * cls_out, pred, ac)
                aux_up = scale_as(attn_out * aux_out, pred, ac)
                attn_up = scale_as(attn_out, pred, ac)
                pred = cls_up + (1 - attn_up) * pred
                aux = aux_up + (1 - attn_up) * aux
        out["pred"] = pred
        if return_aux:
            out["aux"] = aux
        return out

    def two_scale_forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        ac = self.align_corners
        lo = self.single_scale_forward(resize_x(images, self.mscale_lo_scale, ac))
        hi = self.single_scale_forward(images)
        pred_05x, aux_lo, attn_05x = lo["cls_out"], lo["aux_out"], lo["logit_attn"]
        pred_10x, aux_1x = hi["cls_out"], hi["aux_out"]
        p_lo = scale_as(attn_05x * pred_05x, pred_10x, ac)
        a_lo = scale_as(attn_05x * aux_lo, pred_10x, ac)
        attn_up = scale_as(attn_05x, pred_10x, ac)
        return {
            "pred": p_lo + (1 - attn_up) * pred_10x,
            "aux": a_lo + (1 - attn_up) * aux_1x,
            "pred_05x": pred_05x,
            "pred_05x_up": scale_as(pred_05x, pred_10x, ac),
            "pred_10x": pred_10x,
            "attn_05x": attn_05x,
        }

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.n_scales and not self.training:
            return self.nscale_forward(images, self.n_scales)
        return self.two_scale_forward(images)


def two_scale_loss(outputs: Mapping[str, torch.Tensor], gts: torch.Tensor,
                   criterion: Callable[..., torch.Tensor], ocr_alpha: float = 0.4,
                   supervised_mscale_wt: float = 0.05, aux_rmi: bool = False) -> torch.Tensor:
    """The loss NVIDIA's ``two_scale_forward`` computes in training, from its outputs dict.

    ``criterion(logits, gts, do_rmi=bool)``. Total =
    ``ocr_alpha * crit(aux, do_rmi=aux_rmi) + crit(pred, do_rmi=True)
    + wt * crit(pred_05x_up, do_rmi=False) + wt * crit(pred_10x, do_rmi=False)`` (the last two
    only when ``supervised_mscale_wt`` is non-zero; the recipe sets 0.05).
    """
    loss = ocr_alpha * criterion(outputs["aux"], gts, do_rmi=aux_rmi) + \
        criterion(outputs["pred"], gts, do_rmi=True)
    if supervised_mscale_wt:
        loss = loss + supervised_mscale_wt * criterion(outputs["pred_05x_up"], gts, do_rmi=False)
        loss = loss + supervised_mscale_wt * criterion(outputs["pred_10x"], gts, do_rmi=False)
    return loss
