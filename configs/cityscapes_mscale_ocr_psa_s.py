r"""HRNetV2-W48 MscaleOCR + PSA_s (NVIDIA HRNet_Mscale recipe), Cityscapes train; twin: cityscapes_mscale_ocr.py.

NVIDIA's train_cityscapes.yml recipe with PSA_s added, and nothing else changed.
The recipe, and where each value comes from, is the twin's: configs/cityscapes_mscale_ocr.py.
PSA_s sits after conv1-BN-ReLU of every BasicBlock (DeLightCMU/PSA network/hrnetv2.py, which
hard-wires PSA_s; its README reports both variants). Everything else equals the twin without
attention, configs/cityscapes_mscale_ocr.py (tests/test_configs.py checks it): compare with its 84.7.
DeLightCMU/PSA's README reports 86.72 Cityscapes val mIoU for its released HRNetV2-OCR+PSA(s)
checkpoint; it does not say which recipe reached it (it is above NVIDIA's 86.8 of the sota recipe,
not 84.7 of this one). To evaluate that checkpoint:

    python -m psa_jax.tools.convert PSA_s.pth /ckpt/psa_s --config=configs/cityscapes_mscale_ocr_psa_s.py
    python eval.py --config=configs/cityscapes_mscale_ocr_psa_s.py --workdir=/ckpt/psa_s \
        --config.data.manual_dir=/data/cityscapes --step=latest
"""

from psa_jax.training.config_schema import sibling_config


def get_config():
    c = sibling_config(__file__, "cityscapes_mscale_ocr.py")  # the whole recipe, without attention
    c.model.attention = "psa_s"  # after conv1-BN-ReLU of every BasicBlock (placement 'basic')
    return c
