"""HRNet-W48 + PSA_s pose, COCO 384x288, mmpose UDP recipe (UDP Gaussian targets); twin: coco_w48_384x288_udp.py.

The mmpose UDP HRNet-W48 recipe with PSA_s added, and nothing else changed.
No number has been published for this recipe with PSA.
The recipe, and where each value comes from, is the twin's: configs/coco_w48_384x288_udp.py.
PSA_s sits after conv1-BN-ReLU of every stage 2-4 BasicBlock, as in DeLightCMU/PSA
semantic-segmentation/network/hrnetv2.py (the only released PSA code; no pose code or config was
released). Everything else equals the twin without attention, configs/coco_w48_384x288_udp.py
(tests/test_configs.py checks it): compare against that twin's 77.2 AP.
DeLightCMU/PSA's README reports 79.4 AP for UDP-Pose-PSA(s) HRNet-W48 384x288, reached with
UDP-Pose's own recipe (HuangJunJie2017/UDP-Pose: combined offset targets; its README's W48 baseline
is 77.8 AP with a person detector of 65.1 AP): a different recipe and detector, not this one's.

    python train.py --config=configs/coco_w48_384x288_udp_psa_s.py --workdir=... --config.data.manual_dir=/data/coco
"""

from psa_jax.training.config_schema import sibling_config


def get_config():
    c = sibling_config(__file__, "coco_w48_384x288_udp.py")  # the whole recipe, without attention
    c.model.attention = "psa_s"  # after conv1-BN-ReLU of every stage 2-4 BasicBlock (placement 'basic')
    return c
