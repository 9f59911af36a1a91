"""Object-contextual representations (OCR; Yuan et al., ECCV 2020) on HRNetV2 features, NHWC.

Module names follow NVIDIA's `semantic-segmentation: network/ocrnet.py::OCR_block` and
`network/ocr_utils.py` (the structure of the released PSA checkpoints, keys `ocr.*`):

    conv3x3_ocr          3x3 conv 720->512 (+bias), BN, ReLU                   pixel features F
    aux_head             1x1 720->720 (+bias), BN, ReLU, 1x1 720->K (+bias)    soft object regions
    ocr_gather_head      softmax of the aux logits over positions, per class;
                         object vectors f_k = sum_n softmax_n(aux_k) F_n       (B, K, 512)
    ocr_distri_head      object attention: q = f_pixel(F), k = f_object(f), v = f_down(f) (256-d),
                         w = softmax_K(q.k / sqrt(256)), context = f_up(w v) (512-d);
                         conv_bn_dropout([context, F]) -> 512, Dropout2d(0.05)
    cls_head             1x1 512->K (+bias)

NVIDIA writes BN+ReLU as `BNReLU = Sequential(BN, ReLU)`, hence PyTorch keys like
`conv3x3_ocr.1.0.weight`; `torch_names` reproduces them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers.conv import Conv2d
from psa_jax.models.blocks import ModelOptions
from psa_jax.models.hrnet import HRNetBackbone, HRNetSpec, concat_branches

__all__ = ["ConvBNReLU", "OCRBlock", "OCRNet"]


class ConvBNReLU(nnx.Module):
    """conv -> BN -> ReLU, PyTorch `Sequential(conv, BNReLU(Sequential(BN, ReLU)))`."""

    torch_names = {"conv": "0", "bn": "1.0"}

    def __init__(self, cin: int, cout: int, k: int = 1, *, use_bias: bool = False, opts: ModelOptions,
                 rngs: nnx.Rngs):
        self.conv = Conv2d(cin, cout, k, use_bias=use_bias, dtype=opts.dtype, param_dtype=opts.param_dtype,
                           program=opts.program, rngs=rngs)
        self.bn = opts.bn(cout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class _SecondConvBNReLU(ConvBNReLU):
    """The second conv-BN-ReLU of a flat 4-child Sequential (children 2, 3.0)."""

    torch_names = {"conv": "2", "bn": "3.0"}


class _TwoConvBNReLU(nnx.Module):
    """Two 1x1 conv-BN-ReLU units: NVIDIA's `f_pixel` / `f_object` (children 0, 1.0, 2, 3.0)."""

    torch_names = {"first": None, "second": None}

    def __init__(self, cin: int, cout: int, *, opts: ModelOptions, rngs: nnx.Rngs):
        self.first = ConvBNReLU(cin, cout, opts=opts, rngs=rngs)
        self.second = _SecondConvBNReLU(cout, cout, opts=opts, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.second(self.first(x))


class _AuxHead(nnx.Module):
    """1x1 C->C (+bias), BN, ReLU, 1x1 C->K (+bias): keys 0, 1.0, 2."""

    torch_names = {"hidden": None, "cls": "2"}

    def __init__(self, cin: int, num_classes: int, *, opts: ModelOptions, rngs: nnx.Rngs):
        self.hidden = ConvBNReLU(cin, cin, use_bias=True, opts=opts, rngs=rngs)
        self.cls = Conv2d(cin, num_classes, 1, use_bias=True, dtype=opts.dtype, param_dtype=opts.param_dtype,
                          program=opts.program, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.cls(self.hidden(x))


class _ObjectAttention(nnx.Module):
    """`ObjectAttentionBlock2D`: pixels attend to the K object vectors (key/query width `key_channels`)."""

    def __init__(self, channels: int, key_channels: int, *, opts: ModelOptions, rngs: nnx.Rngs):
        self.key_channels = key_channels
        self.f_pixel = _TwoConvBNReLU(channels, key_channels, opts=opts, rngs=rngs)
        self.f_object = _TwoConvBNReLU(channels, key_channels, opts=opts, rngs=rngs)
        self.f_down = ConvBNReLU(channels, key_channels, opts=opts, rngs=rngs)
        self.f_up = ConvBNReLU(key_channels, channels, opts=opts, rngs=rngs)

    def __call__(self, feats: jax.Array, objects: jax.Array) -> jax.Array:
        """feats (B, H, W, C), objects (B, K, 1, C) -> context (B, H, W, C)."""
        b, h, w, _ = feats.shape
        query = self.f_pixel(feats).reshape(b, h * w, -1)
        key = self.f_object(objects)[:, :, 0, :]                                        # (B, K, key)
        value = self.f_down(objects)[:, :, 0, :]
        logits = jnp.einsum("bnd,bkd->bnk", query, key, preferred_element_type=jnp.float32)
        sim = jax.nn.softmax(logits * self.key_channels ** -0.5, axis=-1).astype(value.dtype)
        context = jnp.einsum("bnk,bkd->bnd", sim, value).reshape(b, h, w, -1)
        return self.f_up(context)


class _SpatialOCR(nnx.Module):
    """`SpatialOCR_Module`: object context, then conv-BN-ReLU-Dropout2d on [context, feats]."""

    def __init__(self, channels: int, key_channels: int, out_channels: int, *, dropout: float,
                 opts: ModelOptions, rngs: nnx.Rngs):
        self.object_context_block = _ObjectAttention(channels, key_channels, opts=opts, rngs=rngs)
        self.conv_bn_dropout = ConvBNReLU(2 * channels, out_channels, opts=opts, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, broadcast_dims=(1, 2), rngs=rngs)

    def __call__(self, feats: jax.Array, objects: jax.Array) -> jax.Array:
        context = self.object_context_block(feats, objects)
        return self.dropout(self.conv_bn_dropout(jnp.concatenate([context, feats], axis=-1)))


class OCRBlock(nnx.Module):
    """The OCR head on HRNetV2 features (NVIDIA `OCR_block`).

    Forward: (B, h, w, C_in) -> (cls_logits (B, h, w, K), aux_logits (B, h, w, K),
    ocr_features (B, h, w, mid)).
    """

    def __init__(self, in_channels: int, num_classes: int, *, mid_channels: int = 512, key_channels: int = 256,
                 dropout: float = 0.05, opts: ModelOptions, rngs: nnx.Rngs):
        self.conv3x3_ocr = ConvBNReLU(in_channels, mid_channels, 3, use_bias=True, opts=opts, rngs=rngs)
        self.ocr_distri_head = _SpatialOCR(mid_channels, key_channels, mid_channels, dropout=dropout, opts=opts,
                                           rngs=rngs)
        self.cls_head = Conv2d(mid_channels, num_classes, 1, use_bias=True, dtype=opts.dtype,
                               param_dtype=opts.param_dtype, program=opts.program, rngs=rngs)
        self.aux_head = _AuxHead(in_channels, num_classes, opts=opts, rngs=rngs)

    @staticmethod
    def gather_objects(feats: jax.Array, aux_logits: jax.Array) -> jax.Array:
        """`SpatialGather_Module`: (B, h, w, C), (B, h, w, K) -> object vectors (B, K, 1, C)."""
        b, h, w, k = aux_logits.shape
        probs = jax.nn.softmax(aux_logits.reshape(b, h * w, k).astype(jnp.float32), axis=1)
        objects = jnp.einsum("bnk,bnc->bkc", probs.astype(feats.dtype), feats.reshape(b, h * w, -1))
        return objects[:, :, None, :]

    def __call__(self, high_level: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        feats = self.conv3x3_ocr(high_level)
        aux = self.aux_head(high_level)
        ocr_feats = self.ocr_distri_head(feats, self.gather_objects(feats, aux))
        return self.cls_head(ocr_feats), aux, ocr_feats


class OCRNet(nnx.Module):
    """HRNetV2-OCR (NVIDIA `ocrnet.OCRNet` with the `hrnetv2` trunk; keys `backbone.*`, `ocr.*`).

    Forward: (B, H, W, 3) -> logits (B, H/4, W/4, K) in eval mode; `(logits, aux_logits)` in
    training mode (`model.train()`), the auxiliary output for the 0.4-weighted loss.
    `opts` carries dtypes, attention and the program (`ModelOptions`).
    """

    def __init__(self, spec: HRNetSpec, *, num_classes: int, align_corners: bool, opts: ModelOptions,
                 rngs: nnx.Rngs):
        self.align_corners = align_corners
        self.deterministic = False
        self.backbone = HRNetBackbone(spec, multi_scale_output=True, upsample="bilinear", align_corners=align_corners,
                                      opts=opts, rngs=rngs)
        self.ocr = OCRBlock(sum(spec.stages[-1].num_channels), num_classes, opts=opts, rngs=rngs)

    def features(self, images: jax.Array) -> jax.Array:
        """(B, H, W, 3) -> HRNetV2 features (B, H/4, W/4, 15C)."""
        return concat_branches(self.backbone(images), align_corners=self.align_corners)

    def __call__(self, images: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
        cls, aux, _ = self.ocr(self.features(images))
        return cls if self.deterministic else (cls, aux)

