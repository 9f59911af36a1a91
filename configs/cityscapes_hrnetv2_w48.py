r"""HRNetV2-W48, Cityscapes train, HRNet-Seg recipe: 80.9 val mIoU (single scale, whole image).

Source: HRNet/HRNet-Semantic-Segmentation experiments/cityscapes/seg_hrnet_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml:
SGD 0.01 (momentum 0.9, wd 5e-4), poly 0.9 per iteration, 484 epochs, 12 images of 512x1024,
class-weighted cross entropy, bilinear upsampling with align_corners=True.
"""

from psa_jax.training.config_schema import seg_config


def get_config():
    c = seg_config()
    c.model.width = "w48"
    return c
