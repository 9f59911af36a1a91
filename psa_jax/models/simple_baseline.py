"""SimpleBaseline pose network (Xiao, Wu, Wei, ECCV 2018): ResNet + three deconvolutions + 1x1 head.

`leoxiaobin/deep-high-resolution-net.pytorch: lib/models/pose_resnet.py::PoseResNet` with the COCO
`res50` settings: conv1 7x7/2, max-pool 3x3/2, layer1-4 Bottlenecks ([3, 4, 6, 3] for ResNet-50,
stride on the 3x3 conv), `deconv_layers` = 3 x (ConvTranspose 4x4/2, pad 1, no bias, 256 ch, BN,
ReLU), `final_layer` 1x1 (+bias) to K heatmaps at 1/4 of the input. PSA (the paper's other pose
baseline) sits in every Bottleneck after the 3x3 conv-BN-ReLU (`deattn`), the paper's placement.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers import initializers as inits
from psa_jax.layers.conv import ConvTranspose2d
from psa_jax.layers.xla_cpu import ProgramOptions
from psa_jax.models.blocks import Bottleneck, ModelOptions
from psa_jax.models.options import model_options

__all__ = ["PoseResNet", "pose_resnet", "RESNET_DEPTHS"]

# Bottleneck counts per stage; 26 (2, 2, 2, 2) is the small bottleneck ResNet used for quick runs and tests.
RESNET_DEPTHS: dict[int, tuple[int, int, int, int]] = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                                                     152: (3, 8, 36, 3)}


class PoseResNet(nnx.Module):
    """SimpleBaseline. Forward: (B, H, W, 3) -> heatmaps (B, H/4, W/4, K), H and W multiples of 32.

    `opts` carries dtypes, attention and the program (`ModelOptions`).
    """

    def __init__(self, depth: int, *, num_keypoints: int, deconv_filters: tuple[int, ...] = (256, 256, 256),
                 opts: ModelOptions, rngs: nnx.Rngs):
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"unknown ResNet depth {depth}; valid: {sorted(RESNET_DEPTHS)}")
        self.conv1 = opts.conv(3, 64, 7, stride=2, rngs=rngs)
        self.bn1 = opts.bn(64, rngs=rngs)
        inplanes = 64
        for i, (planes, blocks, stride) in enumerate(zip((64, 128, 256, 512), RESNET_DEPTHS[depth], (1, 2, 2, 2))):
            layer = []
            for k in range(blocks):
                layer.append(Bottleneck(inplanes, planes, stride=stride if k == 0 else 1, opts=opts, rngs=rngs))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nnx.List(layer))
        # PyTorch's flat Sequential(deconv, BN, ReLU, deconv, ...): ReLU slots are None here.
        deconvs = []
        for cout in deconv_filters:
            deconvs += [ConvTranspose2d(inplanes, cout, 4, stride=2, padding=1, kernel_init=inits.hrnet_normal,
                                        dtype=opts.dtype, param_dtype=opts.param_dtype, rngs=rngs),
                        opts.bn(cout, rngs=rngs), None]
            inplanes = cout
        self.deconv_layers = nnx.List(deconvs)
        self.final_layer = opts.conv(inplanes, num_keypoints, 1, use_bias=True, rngs=rngs,
                                     kernel_init=inits.hrnet_normal)

    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be NHWC RGB (B, H, W, 3), got shape {images.shape}")
        if images.shape[1] % 32 or images.shape[2] % 32:
            raise ValueError(f"SimpleBaseline input height and width must be multiples of 32, got "
                             f"{images.shape[1]}x{images.shape[2]}")
        x = jax.nn.relu(self.bn1(self.conv1(images)))
        x = nnx.max_pool(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf), (3, 3), (2, 2))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            for block in getattr(self, name):
                x = block(x)
        for i in range(0, len(self.deconv_layers), 3):
            x = jax.nn.relu(self.deconv_layers[i + 1](self.deconv_layers[i](x)))
        return self.final_layer(x)


def pose_resnet(depth: int = 50, *, num_keypoints: int = 17, attention: str = "none", dtype: jnp.dtype | None = None,
                param_dtype: jnp.dtype = jnp.float32, program: str | ProgramOptions = "plain",
                rngs: nnx.Rngs | None = None) -> PoseResNet:
    """Builds SimpleBaseline ResNet-`depth` with `attention` in every Bottleneck.

    dtype, param_dtype, program, rngs: as in `psa_jax.models.pose.pose_hrnet`.
    """
    opts = model_options(attention, "all_residual", dtype, param_dtype, program)
    return PoseResNet(depth, num_keypoints=num_keypoints, opts=opts, rngs=rngs or nnx.Rngs(0))
