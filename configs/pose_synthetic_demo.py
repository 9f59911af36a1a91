r"""The embedded default of train.py: a pose run that trains and evaluates on a CPU in minutes.

Synthetic stick-figure scenes in COCO's layout (`psa_jax.data.synthetic_coco`) go through exactly
the path real COCO takes: the tfds `coco_keypoints` builder, the grain pipeline with HRNet's
augmentation, HRNet-W18-small + PSA_p, JointsMSELoss, then flip-test decoding, OKS-NMS and
pycocotools AP with ground-truth and detector boxes.

    python train.py --workdir=workdirs/demo
    python train.py --workdir=workdirs/demo_none --config.model.attention=none
"""

from psa_jax.training.config_schema import pose_config


def get_config():
    c = pose_config()
    c.model.width = "w18_small"
    c.model.attention = "psa_p"
    c.data.synthetic.enabled = True
    c.data.synthetic.num_train = 300
    c.data.synthetic.num_val = 40
    c.data.synthetic.image_size = (192, 192)
    c.data.input_size = (128, 96)
    c.data.codec = "udp"
    c.batch_size = 16
    c.num_steps = 360
    c.num_epochs = 210                # not used (num_steps > 0); the value this demo always carried
    c.log_every_steps = 20
    c.optimizer.lr = 2e-3
    c.schedule.name = "constant"
    c.schedule.milestones = (170, 200)  # not used by 'constant'; the value this demo always carried
    c.schedule.warmup_steps = 30
    c.eval.every_steps = 180
    c.eval.batch_size = 32
    c.checkpoint.keep_latest = 1
    # Random initialisation on purpose: the demo needs no download (README "Pretrained weights").
    c.init.pytorch = "none"
    return c
