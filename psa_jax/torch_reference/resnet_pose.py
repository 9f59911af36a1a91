"""SimpleBaseline ResNet pose network, optionally with PSA in every Bottleneck.

Follows ``leoxiaobin/deep-high-resolution-net.pytorch: lib/models/pose_resnet.py`` (commit
6f69e46; the same file as microsoft/human-pose-estimation.pytorch), ``PoseResNet`` with the COCO
``res50_*`` configs: ``NUM_DECONV_LAYERS 3``, ``NUM_DECONV_FILTERS [256,256,256]``,
``NUM_DECONV_KERNELS [4,4,4]``, ``DECONV_WITH_BIAS false``, ``FINAL_CONV_KERNEL 1``. Written from
those facts, not copied.

Structure (torchvision ResNet names; BN momentum 0.1, eps 1e-5; convs bias-free unless noted)::

    conv1 7x7 s2 3->64, bn1, relu, maxpool 3x3 s2 p1                       (1/4)
    layer1..layer4: [3, 4, 6, 3] Bottlenecks (depth 50), planes 64/128/256/512, stride 1/2/2/2
        on the 3x3 conv2 ("ResNet v1.5"), downsample = Seq(1x1 conv stride s, BN)
    deconv_layers: 3 x [ConvTranspose2d(k4, s2, p1, output_padding 0, no bias) -> 256, BN, ReLU]
        keys deconv_layers.{0,3,6}.weight (Cin, 256, 4, 4), deconv_layers.{1,4,7}.* (BN)
    final_layer: 1x1 conv 256 -> num_joints with bias

PSA (``attention in {'psa_p', 'psa_s', None}``): attribute ``deattn`` in every Bottleneck after
``conv2 -> bn2 -> relu`` (C = planes), i.e. after the first 3x3 conv of each residual block (the
paper's sentence, quoted in DeLightCMU/PSA issue #10; the Bottleneck example of
``sithu31296/semantic-segmentation: semseg/models/modules/psa.py``). No official code exists.
Keys e.g. ``layer1.0.deattn.conv_q_right.weight`` (1, 64, 1, 1).

Forward: (B, 3, H, W) -> heatmaps (B, num_joints, H/4, W/4) for H, W divisible by 32
(256x192 -> 64x48). Init (official ``init_weights`` without a pretrained file): conv and deconv
weights N(0, 0.001), BN 1 / 0, conv biases PyTorch default. Params for depth 50, 17 joints,
no attention: 33,999,697 (= ResNet-50 without fc 23,508,032 + deconvs 10,485,760 + deconv BN
1,536 + final 4,369).
"""
from __future__ import annotations

import torch
from torch import nn

from .hrnet_pose import BN_MOMENTUM, Bottleneck, make_res_layer

__all__ = ["PoseResNet", "RESNET_SPEC", "POSE_RESNET50_PARAMS"]

RESNET_SPEC = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
POSE_RESNET50_PARAMS = 33_999_697


class PoseResNet(nn.Module):
    """``PoseResNet(depth=50, num_joints=17, attention=None, num_deconv_filters=(256,)*3)``."""

    def __init__(self, depth: int = 50, num_joints: int = 17, attention: str | None = None,
                 num_deconv_filters: tuple[int, ...] = (256, 256, 256)):
        super().__init__()
        if depth not in RESNET_SPEC:
            raise ValueError(f"depth must be one of {sorted(RESNET_SPEC)}, got {depth}")
        layers = RESNET_SPEC[depth]
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for idx, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
            setattr(self, f"layer{idx + 1}", make_res_layer(Bottleneck, inplanes, planes,
                                                           layers[idx], stride, attention=attention))
            inplanes = planes * Bottleneck.expansion
        deconv = []
        for planes in num_deconv_filters:
            deconv += [nn.ConvTranspose2d(inplanes, planes, kernel_size=4, stride=2, padding=1,
                                          output_padding=0, bias=False),
                       nn.BatchNorm2d(planes, momentum=BN_MOMENTUM),
                       nn.ReLU(inplace=True)]
            inplanes = planes
        self.deconv_layers = nn.Sequential(*deconv)
        self.final_layer = nn.Conv2d(inplanes, num_joints, kernel_size=1, stride=1, padding=0)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        if self.conv1.weight.is_meta:  # shape-only build
            return
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.final_layer(self.deconv_layers(x))
