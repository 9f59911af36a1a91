"""UDP-Pose-PSA(p) HRNet-W48, COCO 256x192: 78.9 AP reported by DeLightCMU/PSA's README.

Recipe and its sources: `psa_jax.training.config_schema.udp_psa_pose_config`. The UDP README's W48
baseline: 77.2 (256x192) / 77.8 (384x288) AP with a 65.1-AP detector.
"""

from psa_jax.training.config_schema import udp_psa_pose_config


def get_config():
    return udp_psa_pose_config("psa_p", (256, 192))
