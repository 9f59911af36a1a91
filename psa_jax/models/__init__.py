"""Networks (NHWC, Flax NNX): HRNet backbones, pose and segmentation heads, counters."""

from psa_jax.models.hrnet import HRNET_SPECS, HRNetBackbone, HRNetSpec, hrnet_spec
from psa_jax.models.mscale import MscaleOCR, mscale_ocr
from psa_jax.models.ocr import OCRNet
from psa_jax.models.options import PLACEMENTS
from psa_jax.models.pose import PoseHRNet, pose_hrnet
from psa_jax.models.seg import SegHRNetV2, seg_hrnet
from psa_jax.models.simple_baseline import PoseResNet, pose_resnet
from psa_jax.models.summary import count_params, summary

__all__ = [
    "pose_hrnet", "seg_hrnet", "mscale_ocr", "pose_resnet", "PoseResNet", "summary", "count_params", "PoseHRNet", "SegHRNetV2", "OCRNet",
    "MscaleOCR", "HRNetBackbone", "HRNetSpec", "HRNET_SPECS", "hrnet_spec", "PLACEMENTS",
]
