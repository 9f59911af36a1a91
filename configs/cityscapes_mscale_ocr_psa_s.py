r"""HRNetV2-OCR + PSA_s (NVIDIA HRNet_Mscale): 86.72 Cityscapes val mIoU reported by DeLightCMU/PSA.

Network and recipe: `psa_jax.training.config_schema.nvidia_mscale_psa_config`.

    python -m psa_jax.tools.convert PSA_s.pth /ckpt/psa_s --config=configs/cityscapes_mscale_ocr_psa_s.py
    python eval.py --config=configs/cityscapes_mscale_ocr_psa_s.py --workdir=/ckpt/psa_s \
        --config.data.manual_dir=/data/cityscapes --step=latest
"""

from psa_jax.training.config_schema import nvidia_mscale_psa_config


def get_config():
    return nvidia_mscale_psa_config("psa_s")
