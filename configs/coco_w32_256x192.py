r"""HRNet-W32 pose, COCO 256x192, HRNet-pose recipe (MSRA targets): 74.4 AP (val2017, 56.4-AP detector).

Source: leoxiaobin/deep-high-resolution-net.pytorch experiments/coco/hrnet/w32_256x192_adam_lr1e-3.yaml.
Adam 1e-3 without weight decay, x0.1 at epochs 170 and 200, 210 epochs, 32 images x 4 GPUs.

    python train.py --config=configs/coco_w32_256x192.py --workdir=... --config.data.manual_dir=/data/coco
"""

from psa_jax.training.config_schema import pose_config


def get_config():
    c = pose_config()
    c.model.width = "w32"
    c.data.input_size = (256, 192)
    c.data.codec = "msra"
    c.batch_size = 128
    return c
