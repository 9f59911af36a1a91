"""HRNet building blocks shared by every HRNet reference, and the pose HRNet.

Pose network: ``leoxiaobin/deep-high-resolution-net.pytorch: lib/models/pose_hrnet.py``
(commit 6f69e46), ``PoseHighResolutionNet`` with ``experiments/coco/hrnet/w{32,48}_*.yaml``.
Written from that code and its configs, not copied.

The same classes, configured differently, build the HRNet-Seg / NVIDIA trunks
(``hrnet_seg.py``) and the ImageNet classifier (``hrnet_cls.py``); the structural facts are
identical in ``HRNet/HRNet-Semantic-Segmentation`` (HRNet-OCR branch 0bbb288,
``lib/models/seg_hrnet.py``), ``NVIDIA/semantic-segmentation`` (7726b14, ``network/hrnetv2.py``)
and ``HRNet/HRNet-Image-Classification`` (f760c98, ``lib/models/cls_hrnet.py``).

Structure (width C = 18 / 32 / 48; all convs bias-free; BN momentum 0.1, eps 1e-5)::

    conv1 3x3 s2 3->64, bn1, relu, conv2 3x3 s2 64->64, bn2, relu        (1/4 resolution)
    layer1: 4 Bottleneck(planes 64, expansion 4) -> 256 ch; layer1.0.downsample = 1x1 conv + BN
    transition1: [Seq(conv3x3 s1 256->C, BN, ReLU), Seq(Seq(conv3x3 s2 256->2C, BN, ReLU))]
    stage2: 1 module, 2 branches; transition2: [None, None, Seq(Seq(conv s2 2C->4C, BN, ReLU))]
    stage3: 4 modules, 3 branches; transition3: [None]*3 + [Seq(Seq(conv s2 4C->8C, BN, ReLU))]
    stage4: 3 modules, 4 branches; 4 BasicBlocks per branch everywhere; channels C, 2C, 4C, 8C.

``HighResolutionModule`` fuse (output branch i, input branch j, summed in j order then ReLU):
j > i: ``Seq(conv1x1 (no bias), BN[, Upsample])`` then upsample to branch i; j == i: identity
(``None`` entry); j < i: ``i-j`` steps of ``Seq(conv3x3 s2, BN[, ReLU])`` (ReLU on all but the last).

Upsampling in the fuse layers (``fuse_upsample``):

* ``'nearest'`` -- pose and classification HRNet: ``nn.Upsample(scale_factor=2**(j-i),
  mode='nearest')`` stored as index 2 of the j>i Sequential (no parameters, so keys are .0/.1).
* ``'bilinear'`` -- segmentation HRNet: ``F.interpolate(size=branch_i_size, mode='bilinear',
  align_corners=...)`` in the module's forward (HRNet-Seg: True; NVIDIA/PSA: False).

The last stage-4 module has ``multi_scale_output=False`` for pose (only ``fuse_layers.0``
exists there); seg and cls keep all four outputs.

Attention (PSA, attribute ``deattn``; ``attention in {'psa_p', 'psa_s', None}``):

* every stage 2-4 ``BasicBlock``: ``conv1 -> bn1 -> relu -> deattn -> conv2 -> bn2 (+res) -> relu``
  (as ``DeLightCMU/PSA: semantic-segmentation/network/hrnetv2.py``);
* ``attention_placement='all_residual'`` also puts it into the stage-1 ``Bottleneck`` s after
  ``conv2 -> bn2 -> relu`` (C = 64), i.e. "after the first 3x3 conv of every residual block"
  (the paper's sentence, quoted in DeLightCMU/PSA issue #10). No official pose code exists (the
  DeLightCMU/PSA README lists it as "to be uploaded"; issue #12).

Init (:meth:`HRNetBackbone.init_weights`, called by the constructors like the official
``get_pose_net`` / ``get_seg_model``): every conv weight N(0, 0.001), conv bias 0, BN weight 1 bias 0
(this also overwrites PSA convs, as in the NVIDIA pipeline). Parity tests use ``randomize_``.

Param counts (asserted by :func:`self_check`): pose W32 28,536,113; pose W48 63,595,745.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import count_params
from .psa import make_psa

__all__ = ["BN_MOMENTUM", "BasicBlock", "Bottleneck", "HighResolutionModule", "HRNetBackbone",
           "PoseHighResolutionNet", "hrnet_stage_config", "self_check"]

BN_MOMENTUM = 0.1


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=BN_MOMENTUM)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """3x3-3x3 residual block; optional PSA ``deattn`` after conv1-bn1-relu. (B,Cin,H,W)->(B,C,H',W')."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, attention: str | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.deattn = make_psa(attention, planes)  # None -> no keys
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        if self.deattn is not None:
            out = self.deattn(out)
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 residual block (expansion 4, stride on the 3x3); optional ``deattn``
    after conv2-bn2-relu (the 'all_residual' placement). (B,Cin,H,W)->(B,4*planes,H',W')."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, attention: str | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.deattn = make_psa(attention, planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = _bn(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        if self.deattn is not None:
            out = self.deattn(out)
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


def make_res_layer(block: type, inplanes: int, planes: int, blocks: int, stride: int = 1,
                   attention: str | None = None) -> nn.Sequential:
    """``_make_layer`` of all reference repos: first block gets a 1x1 conv+BN downsample
    when the stride or channel count changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            _bn(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample, attention=attention)]
    inplanes = planes * block.expansion
    for _ in range(1, blocks):
        layers.append(block(inplanes, planes, attention=attention))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """One HRNet exchange unit: parallel branches of BasicBlocks + all-to-all fusion.

    Input/output: list of ``num_branches`` tensors (B, C_k, H/2^k, W/2^k); with
    ``multi_scale_output=False`` only the highest-resolution output is returned.
    """

    def __init__(self, num_branches: int, block: type, num_blocks: Sequence[int],
                 num_inchannels: Sequence[int], num_channels: Sequence[int],
                 multi_scale_output: bool = True, fuse_upsample: str = "nearest",
                 align_corners: bool | None = None, attention: str | None = None):
        super().__init__()
        if not (num_branches == len(num_blocks) == len(num_channels) == len(num_inchannels)):
            raise ValueError(f"num_branches={num_branches} but num_blocks={list(num_blocks)}, "
                             f"num_channels={list(num_channels)}, num_inchannels={list(num_inchannels)}")
        if fuse_upsample not in ("nearest", "bilinear"):
            raise ValueError(f"fuse_upsample must be 'nearest' or 'bilinear', got {fuse_upsample!r}")
        self.num_branches = num_branches
        self.num_inchannels = list(num_inchannels)
        self.multi_scale_output = multi_scale_output
        self.fuse_upsample = fuse_upsample
        self.align_corners = align_corners
        self.branches = nn.ModuleList()
        for k in range(num_branches):
            self.branches.append(make_res_layer(block, self.num_inchannels[k], num_channels[k],
                                                num_blocks[k], attention=attention))
            self.num_inchannels[k] = num_channels[k] * block.expansion
        self.fuse_layers = self._make_fuse_layers()
        self.relu = nn.ReLU(inplace=True)

    def _make_fuse_layers(self) -> nn.ModuleList | None:
        if self.num_branches == 1:
            return None
        ch = self.num_inchannels
        fuse_layers = nn.ModuleList()
        for i in range(self.num_branches if self.multi_scale_output else 1):
            row = nn.ModuleList()
            for j in range(self.num_branches):
                if j > i:
                    parts = [nn.Conv2d(ch[j], ch[i], 1, 1, 0, bias=False), _bn(ch[i])]
                    if self.fuse_upsample == "nearest":
                        parts.append(nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"))
                    row.append(nn.Sequential(*parts))
                elif j == i:
                    row.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        if k == i - j - 1:
                            steps.append(nn.Sequential(
                                nn.Conv2d(ch[j], ch[i], 3, 2, 1, bias=False), _bn(ch[i])))
                        else:
                            steps.append(nn.Sequential(
                                nn.Conv2d(ch[j], ch[j], 3, 2, 1, bias=False), _bn(ch[j]),
                                nn.ReLU(inplace=True)))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(row)
        return fuse_layers

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        x = [branch(t) for branch, t in zip(self.branches, x)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = x[0] if i == 0 else row[0](x[0])
            for j in range(1, self.num_branches):
                if j == i:
                    y = y + x[j]
                elif j > i and self.fuse_upsample == "bilinear":
                    y = y + F.interpolate(row[j](x[j]), size=[x[i].shape[-2], x[i].shape[-1]],
                                          mode="bilinear", align_corners=self.align_corners)
                else:
                    z = row[j](x[j])
                    if z.shape[-2:] != y.shape[-2:]:
                        raise ValueError(
                            f"HRNet fuse: branch {j} gives {tuple(z.shape[-2:])} after its fixed "
                            f"x{2 ** (j - i)} nearest upsampling but branch {i} is "
                            f"{tuple(y.shape[-2:])}; like the official pose/cls HRNet this needs "
                            f"input height and width divisible by 32")
                    y = y + z
            out.append(self.relu(y))
        return out


def hrnet_stage_config(width: int) -> dict:
    """Stage layout of HRNet-W{width} (18/32/48/...): modules, branches, blocks, channels."""
    return {
        "stage1": dict(num_modules=1, num_branches=1, block=Bottleneck, num_blocks=[4], num_channels=[64]),
        "stage2": dict(num_modules=1, num_branches=2, block=BasicBlock, num_blocks=[4] * 2,
                       num_channels=[width * 2 ** k for k in range(2)]),
        "stage3": dict(num_modules=4, num_branches=3, block=BasicBlock, num_blocks=[4] * 3,
                       num_channels=[width * 2 ** k for k in range(3)]),
        "stage4": dict(num_modules=3, num_branches=4, block=BasicBlock, num_blocks=[4] * 4,
                       num_channels=[width * 2 ** k for k in range(4)]),
    }


class HRNetBackbone(nn.Module):
    """HRNet trunk (stem, layer1, transition1-3, stage2-4). Keys at top level: ``conv1.*``, ...

    :meth:`forward_features` maps images (B, 3, H, W) to the list of stage-4 outputs
    [(B, C, H/4, W/4), (B, 2C, H/8, W/8), (B, 4C, H/16, W/16), (B, 8C, H/32, W/32)]
    (only the first one when ``last_multi_scale=False``). Spatial sizes are ceil-halved.
    """

    def __init__(self, width: int = 32, attention: str | None = None,
                 attention_placement: str = "basic", fuse_upsample: str = "nearest",
                 align_corners: bool | None = None, last_multi_scale: bool = True):
        super().__init__()
        if attention_placement not in ("basic", "all_residual"):
            raise ValueError(f"attention_placement must be 'basic' or 'all_residual', "
                             f"got {attention_placement!r}")
        self.width = width
        self.attention = attention
        self.attention_placement = attention_placement
        self.fuse_upsample = fuse_upsample
        self.align_corners = align_corners
        cfg = hrnet_stage_config(width)
        self.stage_cfg = cfg

        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        s1 = cfg["stage1"]
        self.layer1 = make_res_layer(s1["block"], 64, s1["num_channels"][0], s1["num_blocks"][0],
                                     attention=attention if attention_placement == "all_residual" else None)
        pre = [s1["block"].expansion * s1["num_channels"][0]]

        self.transition1 = self._make_transition_layer(pre, cfg["stage2"]["num_channels"])
        self.stage2, pre = self._make_stage(cfg["stage2"], cfg["stage2"]["num_channels"])
        self.transition2 = self._make_transition_layer(pre, cfg["stage3"]["num_channels"])
        self.stage3, pre = self._make_stage(cfg["stage3"], cfg["stage3"]["num_channels"])
        self.transition3 = self._make_transition_layer(pre, cfg["stage4"]["num_channels"])
        self.stage4, pre = self._make_stage(cfg["stage4"], cfg["stage4"]["num_channels"],
                                            multi_scale_output=last_multi_scale)
        self.pre_stage_channels = list(pre)

    @staticmethod
    def _make_transition_layer(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
        layers = nn.ModuleList()
        for i in range(len(cur)):
            if i < len(pre):
                if cur[i] != pre[i]:
                    layers.append(nn.Sequential(nn.Conv2d(pre[i], cur[i], 3, 1, 1, bias=False),
                                                _bn(cur[i]), nn.ReLU(inplace=True)))
                else:
                    layers.append(None)
            else:
                steps = []
                for j in range(i + 1 - len(pre)):
                    cin = pre[-1]
                    cout = cur[i] if j == i - len(pre) else cin
                    steps.append(nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), _bn(cout),
                                               nn.ReLU(inplace=True)))
                layers.append(nn.Sequential(*steps))
        return layers

    def _make_stage(self, scfg: dict, num_inchannels: Sequence[int],
                    multi_scale_output: bool = True) -> tuple[nn.Sequential, list[int]]:
        modules = []
        num_inchannels = list(num_inchannels)
        for m in range(scfg["num_modules"]):
            msm = multi_scale_output or m < scfg["num_modules"] - 1
            mod = HighResolutionModule(scfg["num_branches"], scfg["block"], scfg["num_blocks"],
                                       num_inchannels, scfg["num_channels"], msm,
                                       fuse_upsample=self.fuse_upsample,
                                       align_corners=self.align_corners, attention=self.attention)
            modules.append(mod)
            num_inchannels = mod.num_inchannels
        return nn.Sequential(*modules), num_inchannels

    @staticmethod
    def _transition(transition: nn.ModuleList, y_list: list[torch.Tensor]) -> list[torch.Tensor]:
        # New branches read the lowest-resolution output; existing ones keep theirs
        # (NVIDIA / HRNet-OCR formulation; identical to pose_hrnet.py for these configs).
        out = []
        for i, t in enumerate(transition):
            if t is None:
                out.append(y_list[i])
            else:
                out.append(t(y_list[i] if i < len(y_list) else y_list[-1]))
        return out

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        y = self.stage2(self._transition(self.transition1, [x]))
        y = self.stage3(self._transition(self.transition2, y))
        return self.stage4(self._transition(self.transition3, y))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(x)

    @torch.no_grad()
    def init_weights(self, skip_name_parts: Sequence[str] = ()) -> None:
        """Official HRNet init: conv N(0, 0.001) (bias 0), BN weight 1 / bias 0.

        Modules whose name contains one of ``skip_name_parts`` keep their PyTorch default
        (the seg code skips names with 'cls', 'aux', 'ocr'). No-op for a shape-only build on
        ``torch.device('meta')``.
        """
        if self.conv1.weight.is_meta:
            return
        for name, m in self.named_modules():
            if any(part in name for part in skip_name_parts):
                continue
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class PoseHighResolutionNet(HRNetBackbone):
    """leoxiaobin pose HRNet: images (B, 3, H, W) -> heatmaps (B, num_joints, H/4, W/4).

    ``PoseHighResolutionNet(width=32, num_joints=17, attention=None, attention_placement='basic')``.
    Nearest fuse upsampling (``scale_factor=2**(j-i)``, so H and W must be divisible by 32 as in
    the official code), last stage-4 module ``multi_scale_output=False``, head
    ``final_layer`` = 1x1 conv C -> num_joints with bias on the 1/4 branch.
    Keys: ``conv1.weight``, ``layer1.0.downsample.0.weight``, ``transition1.1.0.0.weight``,
    ``stage4.2.fuse_layers.0.3.0.weight``, ``stage2.0.branches.0.0.deattn.conv_q_right.weight``
    (with attention), ``final_layer.{weight,bias}``.
    """

    def __init__(self, width: int = 32, num_joints: int = 17, attention: str | None = None,
                 attention_placement: str = "basic"):
        super().__init__(width=width, attention=attention, attention_placement=attention_placement,
                         fuse_upsample="nearest", align_corners=None, last_multi_scale=False)
        self.num_joints = num_joints
        self.final_layer = nn.Conv2d(self.pre_stage_channels[0], num_joints, kernel_size=1,
                                     stride=1, padding=0)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.forward_features(x)[0])


POSE_PARAM_COUNTS = {32: 28_536_113, 48: 63_595_745}


def self_check() -> dict[int, int]:
    """Build pose W32 and W48 without attention (shape-only, on the meta device) and assert the
    published exact param counts. Returns ``{width: count}``."""
    counts = {}
    for width, expected in POSE_PARAM_COUNTS.items():
        with torch.device("meta"):
            net = PoseHighResolutionNet(width=width)
        n = count_params(net)
        if n != expected:
            raise AssertionError(f"pose HRNet-W{width}: {n:,} params, expected {expected:,}")
        counts[width] = n
    return counts
