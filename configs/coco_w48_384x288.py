r"""HRNet-W48 pose, COCO 384x288, HRNet-pose recipe (MSRA targets, sigma 3): 76.3 AP (val2017).

Source: leoxiaobin/deep-high-resolution-net.pytorch experiments/coco/hrnet/w48_384x288_adam_lr1e-3.yaml
(24 images x 4 GPUs).
"""

from psa_jax.training.config_schema import pose_config


def get_config():
    c = pose_config()
    c.model.width = "w48"
    c.data.input_size = (384, 288)
    c.data.codec = "msra"
    c.batch_size = 96
    return c
