"""Top-down pose network: HRNet + a 1x1 heatmap head (SimpleBaseline's head without deconvs).

`leoxiaobin/deep-high-resolution-net.pytorch: lib/models/pose_hrnet.py::PoseHighResolutionNet`:
the highest-resolution branch (1/4 of the input) goes through `final_layer`, a 1x1 conv with bias,
to K keypoint heatmaps. PyTorch keys are the backbone's own (`conv1`, `layer1`, `stage4`, ...) and
`final_layer.*`, so `torch_names` flattens the `backbone` attribute.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers import initializers as inits
from psa_jax.layers.conv import Conv2d
from psa_jax.layers.xla_cpu import ProgramOptions
from psa_jax.models.blocks import ModelOptions
from psa_jax.models.hrnet import HRNetBackbone, HRNetSpec, hrnet_spec
from psa_jax.models.options import Placement, model_options

__all__ = ["PoseHRNet", "pose_hrnet"]


class PoseHRNet(nnx.Module):
    """HRNet pose network. Forward: (B, H, W, 3) -> heatmaps (B, H/4, W/4, K), H and W multiples of 32.

    `opts` carries dtypes, attention and the program (`ModelOptions`).
    """

    torch_names = {"backbone": None}

    def __init__(self, spec: HRNetSpec, *, num_keypoints: int, opts: ModelOptions,
                 rngs: nnx.Rngs):
        self.num_keypoints = num_keypoints
        self.backbone = HRNetBackbone(spec, multi_scale_output=False, upsample="nearest", opts=opts, rngs=rngs)
        self.final_layer = Conv2d(spec.width, num_keypoints, 1, use_bias=True, kernel_init=inits.hrnet_normal,
                                  bias_init=inits.zeros, dtype=opts.dtype, param_dtype=opts.param_dtype,
                                  program=opts.program, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4:
            raise ValueError(f"images must be NHWC (B, H, W, 3), got shape {images.shape}")
        h, w = images.shape[1:3]
        if h % 32 or w % 32:
            raise ValueError(f"pose HRNet input height and width must be multiples of 32 (fuse layers "
                             f"upsample by exact factors), got {h}x{w}; use e.g. 256x192 or 384x288")
        return self.final_layer(self.backbone(images)[0])


def pose_hrnet(width: int | str, *, num_keypoints: int = 17, attention: str = "none",
               placement: Placement = "basic", dtype: jnp.dtype | None = None,
               param_dtype: jnp.dtype = jnp.float32, program: str | ProgramOptions = "plain",
               rngs: nnx.Rngs | None = None) -> PoseHRNet:
    """Builds a pose HRNet.

    Args:
      width: 18, 32, 48 or 'w18_small'.
      num_keypoints: K (17 for COCO).
      attention: a `psa_jax.layers.ATTENTION_NAMES` entry ('none', 'psa_p', 'psa_s', ...).
      placement: 'basic' or 'all_residual' (see `psa_jax.models.options.model_options`).
      dtype: compute dtype (None: the input's; jnp.bfloat16 on accelerators); params in param_dtype.
      program: 'plain' (default), 'xla_cpu' or a `psa_jax.layers.xla_cpu.ProgramOptions`: the
        program variant to build (same values; 'xla_cpu' compiles to a faster XLA:CPU program,
        `psa_jax.layers.xla_cpu.program_for_platform` picks it for a platform).
      rngs: initialisation randomness (default `nnx.Rngs(0)`).
    Initialisation follows `pose_hrnet.py::init_weights`: conv weights N(0, 1e-3), BN 1/0, zero biases.
    """
    opts = model_options(attention, placement, dtype, param_dtype, program)
    return PoseHRNet(hrnet_spec(width), num_keypoints=num_keypoints, opts=opts, rngs=rngs or nnx.Rngs(0))
