r"""HRNetV2-OCR + PSA_s (NVIDIA HRNet_Mscale): 86.72 Cityscapes val mIoU reported by DeLightCMU/PSA.

The released PSA checkpoints are this network (psa_module.md §5.1, §8). Recipe: NVIDIA
semantic-segmentation scripts/train_cityscapes.yml as the PSA repository ships it (psa_module.md
§6.1): MscaleOCR two-scale training (0.5x / 1.0x), 0.5 BCE + 0.5 RMI on the joint prediction, 0.4
auxiliary, 0.05 per-scale supervision; SGD 5e-3 (8 GPUs, 1 image each), momentum 0.9, weight
decay 1e-4, poly exponent 2 stepped per epoch, 175 epochs; crops 1024x2048, scale 0.5-2.0, colour
jitter 0.25; evaluation with hierarchical multi-scale attention at 0.5/1.0/2.0, no flip.
Not reproduced here: NVIDIA's class-uniform crop sampling and the Mapillary pre-training
(`--snapshot`); start from ImageNet HRNet-W48 with config.init.pytorch.

    python -m psa_jax.convert PSA_s.pth /ckpt/psa_s --config=configs/cityscapes_mscale_ocr_psa_s.py
    python eval.py --config=configs/cityscapes_mscale_ocr_psa_s.py --workdir=/ckpt/psa_s \\
        --config.data.manual_dir=/data/cityscapes --step=latest
"""

from psa_jax.training.config_base import seg_config


def get_config():
    c = seg_config()
    c.model.name = "mscale_ocr"
    c.model.width = "w48"
    c.model.attention = "psa_s"
    c.model.align_corners = "false"
    c.data.augment = "nvidia"
    c.data.crop_size = (1024, 2048)
    c.data.cache_dir = "auto"
    c.loss.recipe = "nvidia_mscale"
    c.batch_size = 8
    c.num_epochs = 175
    c.optimizer.lr = 5e-3
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "poly_epoch"
    c.schedule.power = 2.0
    c.eval.mode = "mscale"
    c.eval.scales = (0.5, 1.0, 2.0)
    c.eval.batch_size = 1
    c.eval.every_epochs = 25
    return c
