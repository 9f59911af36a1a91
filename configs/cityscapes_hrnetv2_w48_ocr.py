r"""HRNetV2-W48-OCR, Cityscapes train, HRNet-Seg recipe: 81.6 val mIoU (single scale).

Source: HRNet/HRNet-Semantic-Segmentation (HRNet-OCR branch) experiments/cityscapes/
seg_hrnet_ocr_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml; auxiliary loss weight 0.4.
The OCR head has NVIDIA's module layout (psa_jax.models.ocr), so NVIDIA OCR checkpoints load.
"""

from psa_jax.training.config_schema import seg_config


def get_config():
    c = seg_config()
    c.model.width = "w48"
    c.model.ocr = True
    c.model.align_corners = "false"
    return c
