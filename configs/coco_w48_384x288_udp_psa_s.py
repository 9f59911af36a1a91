r"""UDP-Pose-PSA(s) HRNet-W48, COCO 384x288: 79.4 AP reported by DeLightCMU/PSA's README.

No pose code or config was released with PSA (psa_module.md §5.3, §6.2); this follows the UDP
baseline it names: HuangJunJie2017/UDP-Pose mmpose branch configs/top_down/hrnet/coco/
hrnet_w32_coco_256x192_udp.py (Adam 3e-3 with 500-iteration linear warm-up from x0.001, x0.1 at
epochs 170/200, 210 epochs, 48 images per GPU, UDP warp and targets, flip test without shift),
with PSA_s after conv1-BN-ReLU of every stage 2-4 BasicBlock as in the official
segmentation code. The UDP README's W48 baseline: 77.2 (256x192) / 77.8 (384x288) AP with a
65.1-AP detector. Placement and schedule of the PSA pose runs could not be verified.
"""

from psa_jax.training.config_base import pose_config


def get_config():
    c = pose_config()
    c.model.width = "w48"
    c.model.attention = "psa_s"
    c.data.input_size = (384, 288)
    c.data.codec = "udp"
    c.batch_size = 192
    c.optimizer.lr = 3e-3
    c.schedule.warmup_steps = 500
    c.schedule.warmup_ratio = 0.001
    return c
