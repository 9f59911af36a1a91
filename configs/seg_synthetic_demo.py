r"""A segmentation run that trains and evaluates on a CPU in minutes.

Fake Cityscapes zips in the stock tfds builder's layout (`psa_jax.data.fake_cityscapes`: scenes of
road, sky, building, vegetation, car and person regions) go through the real path: tfds's
`cityscapes` builder, the grain pipeline with HRNet-Seg augmentation, HRNetV2-W18-small + PSA_p,
the HRNet-Seg loss, whole-image inference and the confusion-matrix mIoU.

    python train.py --config=configs/seg_synthetic_demo.py --workdir=workdirs/seg_demo
"""

from psa_jax.training.config_schema import seg_config


def get_config():
    c = seg_config()
    c.model.width = "w18_small"
    c.model.attention = "psa_p"
    c.model.align_corners = "false"
    c.data.synthetic.enabled = True
    c.data.synthetic.num_train = 64
    c.data.synthetic.num_val = 8
    c.data.synthetic.height = 96
    c.data.synthetic.width = 192
    c.data.crop_size = (96, 192)
    c.loss.class_weights = False
    c.batch_size = 8
    c.num_steps = 240
    c.num_epochs = 484                # not used (num_steps > 0); the value this demo always carried
    c.log_every_steps = 20
    c.optimizer.name = "adam"
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 0.0
    c.schedule.name = "poly"
    c.eval.every_steps = 120
    c.eval.batch_size = 4
    c.checkpoint.keep_latest = 1
    # Random initialisation on purpose: the demo needs no download (README "Pretrained weights").
    c.init.pytorch = "none"
    return c
