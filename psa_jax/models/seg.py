"""Segmentation networks: HRNetV2 (HRNet-Seg head) and HRNetV2-OCR, behind `seg_hrnet`.

* `SegHRNetV2`: `HRNet/HRNet-Semantic-Segmentation: lib/models/seg_hrnet.py`: all four branches
  upsampled bilinearly to 1/4 and concatenated (15C channels: 720 for W48), then `last_layer` =
  1x1 conv (+bias), BN, ReLU, 1x1 conv (+bias) to the classes. PyTorch keys are the backbone's own
  plus `last_layer.{0,1,3}.*`.
* `OCRNet` (`psa_jax.models.ocr`): NVIDIA's HRNetV2-OCR, keys `backbone.*`, `ocr.*`.

Both return logits at 1/4 of the input resolution; losses and evaluators resize them to the label
size. Any input size works (fuse layers resize to the exact branch size).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers.xla_cpu import ProgramOptions
from psa_jax.models.blocks import ModelOptions
from psa_jax.models.hrnet import HRNetBackbone, HRNetSpec, concat_branches, hrnet_spec
from psa_jax.models.ocr import OCRNet
from psa_jax.models.options import Placement, model_options

__all__ = ["SegHRNetV2", "seg_hrnet"]


class _LastLayer(nnx.Module):
    """`last_layer`: Sequential(conv 1x1 (+b), BN, ReLU, conv 1x1 (+b)): children 0, 1, 3."""

    torch_names = {"conv": "0", "bn": "1", "cls": "3"}

    def __init__(self, channels: int, num_classes: int, *, opts: ModelOptions, rngs: nnx.Rngs):
        self.conv = opts.conv(channels, channels, 1, use_bias=True, rngs=rngs)
        self.bn = opts.bn(channels, rngs=rngs)
        self.cls = opts.conv(channels, num_classes, 1, use_bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.cls(jax.nn.relu(self.bn(self.conv(x))))


class SegHRNetV2(nnx.Module):
    """HRNetV2 segmentation network. Forward: (B, H, W, 3) -> logits (B, ceil(H/4), ceil(W/4), K).

    `opts` carries dtypes, attention and the program (`ModelOptions`).
    """

    torch_names = {"backbone": None}

    def __init__(self, spec: HRNetSpec, *, num_classes: int, align_corners: bool, opts: ModelOptions,
                 rngs: nnx.Rngs):
        self.align_corners = align_corners
        self.backbone = HRNetBackbone(spec, multi_scale_output=True, upsample="bilinear", align_corners=align_corners,
                                      opts=opts, rngs=rngs)
        self.last_layer = _LastLayer(sum(spec.stages[-1].num_channels), num_classes, opts=opts, rngs=rngs)

    def features(self, images: jax.Array) -> jax.Array:
        """(B, H, W, 3) -> HRNetV2 features (B, H/4, W/4, 15C)."""
        return concat_branches(self.backbone(images), align_corners=self.align_corners)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.last_layer(self.features(images))


def seg_hrnet(width: int | str, *, num_classes: int = 19, ocr: bool = False, attention: str = "none",
              placement: Placement = "basic", align_corners: bool | None = None, dtype: jnp.dtype | None = None,
              param_dtype: jnp.dtype = jnp.float32, program: str | ProgramOptions = "plain",
              rngs: nnx.Rngs | None = None) -> SegHRNetV2 | OCRNet:
    """Builds HRNetV2 (`ocr=False`) or HRNetV2-OCR (`ocr=True`).

    Args:
      width: 18, 32, 48 or 'w18_small'.
      num_classes: K (19 Cityscapes trainIds).
      ocr: add the OCR head (NVIDIA layout); training-mode output is then `(logits, aux_logits)`.
      attention, placement: as in `pose_hrnet`.
      align_corners: bilinear convention of the fuse layers and the branch concatenation; default
        per reference: False for HRNetV2 (`ALIGN_CORNERS: False` in HRNet-Seg's HRNetV2-W48
        Cityscapes yaml), False for OCR (NVIDIA's layout and code; HRNet-Seg's own OCR branch
        defaults to True, which its config in configs/ sets explicitly).
      dtype, param_dtype, program, rngs: as in `pose_hrnet`.
    Initialisation: backbone and head convs N(0, 1e-3) (`init_weights`); the OCR head keeps
    PyTorch's defaults, as NVIDIA's code does.
    """
    opts = model_options(attention, placement, dtype, param_dtype, program)
    spec = hrnet_spec(width)
    rngs = rngs or nnx.Rngs(0)
    if ocr:
        return OCRNet(spec, num_classes=num_classes, align_corners=bool(align_corners), opts=opts, rngs=rngs)
    return SegHRNetV2(spec, num_classes=num_classes, align_corners=bool(align_corners),
                      opts=opts, rngs=rngs)
