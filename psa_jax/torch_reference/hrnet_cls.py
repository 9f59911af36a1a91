"""ImageNet HRNet-C classifier: only to produce its state_dict key layout for converter tests.

Follows ``HRNet/HRNet-Image-Classification: lib/models/cls_hrnet.py`` (commit f760c98),
``HighResolutionNet`` with ``experiments/cls_hrnet_w{18,32,48}_*.yaml``; written from those facts,
not copied. ``timm/models/hrnet.py`` (``hrnet_w18 ... hrnet_w64``, ``head='classification'``) gives
the **same** keys: it replaces ``None`` transitions / identity fuse entries with parameter-free
``nn.Identity``, names its ReLUs ``act1/act2/fuse_act`` (no parameters), and its ``classifier`` is an
``nn.Linear(2048, 1000)`` -- so one layout serves both (timm's ``head_conv_bias`` default True =
official biased head convs). The HRNet-Seg / NVIDIA init loaders additionally strip a ``model.``
prefix (``k.replace('model.', '')``), which some ImageNet checkpoint files carry.

Backbone: the shared HRNet trunk with **nearest** fuse upsampling and stage 4 keeping all four
outputs (``multi_scale_output=True``), so its keys equal the segmentation HRNet backbone keys, and
the pose HRNet keys are a subset (pose lacks ``stage4.2.fuse_layers.{1,2,3}``).

Classification head (keys the converter must report / ignore, :data:`HEAD_PREFIXES`)::

    incre_modules.{i}.0.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0,downsample.1}.*
        one Bottleneck per branch, C_i -> 32/64/128/256 planes (x4 = 128/256/512/1024 ch)
    downsamp_modules.{i}.0.{weight,bias} (3x3 s2, bias), .1.* (BN)     i = 0, 1, 2
    final_layer.0.{weight (2048,1024,1,1), bias}, final_layer.1.* (BN)
    classifier.{weight (1000, 2048), bias}

Beware: ``final_layer`` is the *pose* head name too (1x1 C -> 17 conv); in a cls checkpoint it is
the 1024 -> 2048 head conv + BN and must not be loaded into a pose head.

Conventions: BN momentum 0.1, eps 1e-5; fuse upsampling ``nn.Upsample(scale_factor=2**(j-i),
mode='nearest')``; global average pool then ``classifier``. Init: PyTorch defaults (the official
``init_weights`` uses kaiming_normal fan_out; irrelevant for a key-layout reference).

Forward: (B, 3, H, W) -> logits (B, num_classes); H, W divisible by 32.
Published sizes (README): W18-C 21.3M, W32-C 41.2M, W48-C 77.5M params.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hrnet_pose import BN_MOMENTUM, Bottleneck, HRNetBackbone, make_res_layer

__all__ = ["HRNetCls", "HEAD_PREFIXES", "backbone_state_dict"]

HEAD_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
HEAD_CHANNELS = (32, 64, 128, 256)


class HRNetCls(HRNetBackbone):
    """``HRNetCls(width=48, num_classes=1000)``: HRNet-W{width}-C ImageNet classifier."""

    def __init__(self, width: int = 48, num_classes: int = 1000):
        super().__init__(width=width, attention=None, fuse_upsample="nearest",
                         align_corners=None, last_multi_scale=True)
        self.incre_modules = nn.ModuleList(
            make_res_layer(Bottleneck, c, HEAD_CHANNELS[i], 1, stride=1)
            for i, c in enumerate(self.pre_stage_channels))
        self.downsamp_modules = nn.ModuleList()
        for i in range(len(self.pre_stage_channels) - 1):
            cin = HEAD_CHANNELS[i] * Bottleneck.expansion
            cout = HEAD_CHANNELS[i + 1] * Bottleneck.expansion
            self.downsamp_modules.append(nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1),
                nn.BatchNorm2d(cout, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True)))
        self.final_layer = nn.Sequential(
            nn.Conv2d(HEAD_CHANNELS[3] * Bottleneck.expansion, 2048, kernel_size=1, stride=1, padding=0),
            nn.BatchNorm2d(2048, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True))
        self.classifier = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = self.forward_features(x)
        y = self.incre_modules[0](ys[0])
        for i, down in enumerate(self.downsamp_modules):
            y = self.incre_modules[i + 1](ys[i + 1]) + down(y)
        y = self.final_layer(y)
        y = F.avg_pool2d(y, kernel_size=y.shape[2:]).flatten(1)
        return self.classifier(y)


def backbone_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a cls state_dict that are not classification-head entries."""
    return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
