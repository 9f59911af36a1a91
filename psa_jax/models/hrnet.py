"""HRNet backbone (Sun et al., CVPR 2019; Wang et al., TPAMI 2020), NHWC, Flax NNX.

Structure and attribute names follow `leoxiaobin/deep-high-resolution-net.pytorch:
lib/models/pose_hrnet.py` (pose) and `HRNet/HRNet-Semantic-Segmentation: lib/models/seg_hrnet.py`
(segmentation; NVIDIA's `network/hrnetv2.py` is the same trunk):

    stem      conv1 3x3/2 (3->64) bn1 relu, conv2 3x3/2 (64->64) bn2 relu           -> 1/4
    layer1    Bottlenecks (64 planes, 256 out)
    transitionK, stageK (K = 2, 3, 4): HighResolutionModules of BasicBlock branches with widths
              (C, 2C, 4C, 8C) at 1/4 ... 1/32, each ending in fuse layers that exchange
              information between every pair of branches

Fuse layers upsample lower-resolution branches with 'nearest' (pose, an integer factor) or
'bilinear' to the exact target size (segmentation; `align_corners` per reference: False in NVIDIA's
code, True in HRNet-Seg's Cityscapes configs). The pose network's last module outputs only the
highest-resolution branch (`multi_scale_output=False`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers.resize import resize_bilinear, upsample_nearest
from psa_jax.layers.xla_cpu import materialize
from psa_jax.models.blocks import BasicBlock, Bottleneck, ConvBN, ModelOptions

__all__ = ["StageSpec", "HRNetSpec", "HRNET_SPECS", "HighResolutionModule", "HRNetBackbone", "hrnet_spec"]

Upsample = Literal["nearest", "bilinear"]


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One of stages 2-4: `num_modules` HighResolutionModules with these branches."""

    num_modules: int
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class HRNetSpec:
    """An HRNet configuration (the `MODEL.EXTRA` block of the reference yaml files)."""

    name: str
    stage1_blocks: int
    stage1_planes: int
    stages: tuple[StageSpec, StageSpec, StageSpec]

    @property
    def width(self) -> int:
        return self.stages[0].num_channels[0]


def _standard(c: int) -> HRNetSpec:
    return HRNetSpec(f"w{c}", 4, 64, (StageSpec(1, (4, 4), (c, 2 * c)),
                                       StageSpec(4, (4, 4, 4), (c, 2 * c, 4 * c)),
                                       StageSpec(3, (4, 4, 4, 4), (c, 2 * c, 4 * c, 8 * c))))


HRNET_SPECS: dict[str, HRNetSpec] = {
    # HRNet-W18-Small-v2 (HRNet-Semantic-Segmentation seg_hrnet_w18_small_v2 yaml): for CPU runs and tests.
    "w18_small": HRNetSpec("w18_small", 2, 64, (StageSpec(1, (2, 2), (18, 36)),
                                                 StageSpec(3, (2, 2, 2), (18, 36, 72)),
                                                 StageSpec(2, (2, 2, 2, 2), (18, 36, 72, 144)))),
    "w18": _standard(18),
    "w32": _standard(32),
    "w48": _standard(48),
}


def hrnet_spec(width: int | str) -> HRNetSpec:
    """`18`, `32`, `48`, `'w18_small'` (or 'w18', 'w32', 'w48') -> the HRNet configuration."""
    key = f"w{width}" if isinstance(width, int) else str(width).lower()
    if not key.startswith("w"):
        key = "w" + key
    if key not in HRNET_SPECS:
        raise ValueError(f"unknown HRNet width {width!r}; valid: 18, 32, 48, 'w18_small' "
                         f"(names: {', '.join(HRNET_SPECS)})")
    return HRNET_SPECS[key]


def _make_transition(pre: tuple[int, ...], cur: tuple[int, ...], opts: ModelOptions, rngs: nnx.Rngs) -> nnx.List:
    """`_make_transition_layer`: adapt existing branches' widths; grow new branches from the last one."""
    layers = []
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(ConvBN(pre[i], c, 3, opts=opts, rngs=rngs) if c != pre[i] else None)
        else:
            steps = i + 1 - len(pre)
            layers.append(nnx.List([
                ConvBN(pre[-1], c if j == steps - 1 else pre[-1], 3, stride=2, opts=opts, rngs=rngs)
                for j in range(steps)]))
    return nnx.List(layers)


def _apply_transition(transition: nnx.List, ys: list[jax.Array]) -> list[jax.Array]:
    out = []
    for i, layer in enumerate(transition):
        if i < len(ys):
            out.append(ys[i] if layer is None else layer(ys[i]))
        else:
            x = ys[-1]
            for step in layer:
                x = step(x)
            out.append(x)
    return out


class HighResolutionModule(nnx.Module):
    """Parallel BasicBlock branches followed by all-to-all fusion.

    Args:
      num_inchannels: input width of each branch.
      num_blocks, num_channels: blocks and width per branch.
      multi_scale_output: fuse into every branch (True) or only the highest-resolution one.
      upsample: 'nearest' (pose) or 'bilinear' (segmentation).
      align_corners: for bilinear upsampling.
      opts: block options; with `opts.program.materialize` every fuse output passes through
        `xla_cpu.materialize` (a buffer boundary for XLA:CPU, as on residual-block outputs).
    Forward: list of (B, H/2^i, W/2^i, C_i) -> list of the same shapes (or just branch 0).
    """

    def __init__(self, num_inchannels: tuple[int, ...], num_blocks: tuple[int, ...], num_channels: tuple[int, ...],
                 *, multi_scale_output: bool, upsample: Upsample, align_corners: bool, opts: ModelOptions,
                 rngs: nnx.Rngs):
        nb = len(num_channels)
        if not len(num_inchannels) == len(num_blocks) == nb:
            raise ValueError(f"branch lists disagree: inchannels {num_inchannels}, blocks {num_blocks}, "
                             f"channels {num_channels}")
        self.upsample = upsample
        self.align_corners = align_corners
        self.materialize_output = opts.program.materialize
        branches = []
        for b in range(nb):
            blocks = [BasicBlock(num_inchannels[b] if k == 0 else num_channels[b], num_channels[b], opts=opts, rngs=rngs)
                      for k in range(num_blocks[b])]
            branches.append(nnx.List(blocks))
        self.branches = nnx.List(branches)
        fuse = []
        for i in range(nb if multi_scale_output else 1):
            row = []
            for j in range(nb):
                if j > i:
                    row.append(ConvBN(num_channels[j], num_channels[i], 1, relu=False, opts=opts, rngs=rngs))
                elif j == i:
                    row.append(None)
                else:
                    row.append(nnx.List([
                        ConvBN(num_channels[j], num_channels[i] if k == i - j - 1 else num_channels[j], 3, stride=2,
                               relu=k != i - j - 1, opts=opts, rngs=rngs)
                        for k in range(i - j)]))
            fuse.append(nnx.List(row))
        self.fuse_layers = nnx.List(fuse) if nb > 1 else None

    def _up(self, x: jax.Array, like: jax.Array, factor: int) -> jax.Array:
        if self.upsample == "nearest":
            y = upsample_nearest(x, factor)
            if y.shape[1:3] != like.shape[1:3]:
                raise ValueError(f"nearest upsampling of a {x.shape[1:3]} branch by {factor} gives {y.shape[1:3]}, "
                                 f"not {like.shape[1:3]}: the input height and width must be multiples of 32")
            return y
        return resize_bilinear(x, like.shape[1:3], align_corners=self.align_corners)

    def __call__(self, xs: list[jax.Array]) -> list[jax.Array]:
        ys = []
        for x, branch in zip(xs, self.branches):
            for block in branch:
                x = block(x)
            ys.append(x)
        if self.fuse_layers is None:
            return ys
        out = []
        for i, row in enumerate(self.fuse_layers):
            acc = None
            for j, layer in enumerate(row):
                if j == i:
                    term = ys[j]
                elif j > i:
                    term = self._up(layer(ys[j]), ys[i], 2 ** (j - i))
                else:
                    term = ys[j]
                    for step in layer:
                        term = step(term)
                acc = term if acc is None else acc + term
            y = jax.nn.relu(acc)
            out.append(materialize(y) if self.materialize_output else y)
        return out


class HRNetBackbone(nnx.Module):
    """The HRNet trunk: stem, stage 1 of Bottlenecks, stages 2-4 of HighResolutionModules.

    Args:
      spec: an `HRNetSpec` (see `hrnet_spec`).
      multi_scale_output: the last module keeps all branches (segmentation) or only the
        highest-resolution one (pose).
      upsample, align_corners: fuse-layer upsampling.
      opts: dtypes, initialisation, attention placement and program (`ModelOptions`).
    Forward: (B, H, W, 3) -> list of branch features [(B, H/4, W/4, C), (B, H/8, W/8, 2C), ...]
    (one element when `multi_scale_output=False`).
    """

    def __init__(self, spec: HRNetSpec, *, multi_scale_output: bool, upsample: Upsample,
                 align_corners: bool = False, opts: ModelOptions, rngs: nnx.Rngs):
        self.spec = spec
        self.conv1 = opts.conv(3, 64, 3, stride=2, rngs=rngs)
        self.bn1 = opts.bn(64, rngs=rngs)
        self.conv2 = opts.conv(64, 64, 3, stride=2, rngs=rngs)
        self.bn2 = opts.bn(64, rngs=rngs)
        planes = spec.stage1_planes
        self.layer1 = nnx.List([Bottleneck(64 if k == 0 else planes * 4, planes, opts=opts, rngs=rngs)
                                for k in range(spec.stage1_blocks)])
        pre: tuple[int, ...] = (planes * Bottleneck.expansion,)
        for k, stage in enumerate(spec.stages, start=2):
            setattr(self, f"transition{k - 1}", _make_transition(pre, stage.num_channels, opts, rngs))
            modules = []
            inch = stage.num_channels
            for m in range(stage.num_modules):
                last = k == 4 and m == stage.num_modules - 1
                modules.append(HighResolutionModule(
                    inch, stage.num_blocks, stage.num_channels, multi_scale_output=multi_scale_output or not last,
                    upsample=upsample, align_corners=align_corners, opts=opts, rngs=rngs))
            setattr(self, f"stage{k}", nnx.List(modules))
            pre = stage.num_channels

    @property
    def out_channels(self) -> tuple[int, ...]:
        return self.spec.stages[-1].num_channels

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"HRNet expects NHWC RGB images (B, H, W, 3), got shape {x.shape}")
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = jax.nn.relu(self.bn2(self.conv2(x)))
        for block in self.layer1:
            x = block(x)
        ys = [x]
        for k in (2, 3, 4):
            xs = _apply_transition(getattr(self, f"transition{k - 1}"), ys)
            for module in getattr(self, f"stage{k}"):
                xs = module(xs)
            ys = xs
        return ys


def concat_branches(ys: list[jax.Array], *, align_corners: bool) -> jax.Array:
    """HRNetV2 representation: upsample every branch bilinearly to branch 0 and concatenate.

    [(B, H, W, C), (B, H/2, W/2, 2C), ...] -> (B, H, W, C + 2C + 4C + 8C) (720 for W48).
    """
    size = ys[0].shape[1:3]
    return jnp.concatenate([ys[0]] + [resize_bilinear(y, size, align_corners=align_corners) for y in ys[1:]], axis=-1)
