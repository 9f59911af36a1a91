r"""HRNet-W48 pose, COCO 384x288, HRNet-pose recipe (MSRA targets, sigma 3): 76.3 AP (val2017, 56.4-AP detector).

Every value comes from leoxiaobin/deep-high-resolution-net.pytorch ("HRNet-pose"):
  experiments/coco/hrnet/w48_384x288_adam_lr1e-3.yaml   network, input, targets, optimizer,
                                                         schedule, epochs, batch, augmentation, test
  lib/utils/utils.py::get_optimizer                      Adam gets no weight decay (WD is SGD's)
  lib/dataset/JointsDataset.py::__getitem__              rotation probability 0.6, flip probability 0.5
  lib/core/function.py::validate                         flip test (heatmaps shifted by 1 px)
  tools/train.py                                         MultiStepLR stepped at the start of each epoch
  README (Results on COCO val2017)                       the AP above, flip test, person detector of
                                                         56.4 AP (COCO_val2017_detections_AP_H_56_person.json)
Starts from the ImageNet classifier the yaml's MODEL.PRETRAINED names,
models/pytorch/imagenet/hrnet_w48-8ef0771d.pth:
put it in pretrained/ (README "Pretrained weights") or pass --config.init.pytorch=none.
"""

from psa_jax.training.config_schema import pose_config


def get_config():
    c = pose_config()
    # Network (yaml MODEL): pose_hrnet W48, no attention.
    c.model.name = "pose_hrnet"
    c.model.width = "w48"
    c.model.attention = "none"
    # Input and targets (yaml MODEL): IMAGE_SIZE [288, 384] (w, h), TARGET_TYPE gaussian, SIGMA 3.
    c.data.input_size = (384, 288)
    c.data.codec = "msra"
    c.data.sigma = 0.0                # 0 picks 3 at 384x288 (SIGMA: 3)
    # Optimizer (yaml TRAIN, utils.py::get_optimizer): Adam, LR 0.001, PyTorch's betas/eps; the
    # yaml's WD 0.0001 and MOMENTUM 0.9 are passed to SGD only.
    c.optimizer.name = "adam"
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 0.0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.grad_clip_norm = 0.0
    # Schedule (yaml TRAIN): MultiStepLR, LR_STEP [170, 200], LR_FACTOR 0.1, no warm-up. tools/train.py
    # builds it with last_epoch=-1 (its constructor steps once, to 0) and calls lr_scheduler.step()
    # at the start of every epoch, so the epoch with 0-based index e trains at last_epoch = e + 1 and
    # the x0.1 takes effect from index 169 and 199 (the 170th and 200th epochs). Our 'multistep'
    # multiplies from the start of epoch index m, hence (169, 199) (tests/test_optimizers.py).
    c.schedule.name = "multistep"
    c.schedule.milestones = (169, 199)
    c.schedule.gamma = 0.1
    c.schedule.warmup_steps = 0
    # Length and batch (yaml TRAIN): END_EPOCH 210; BATCH_SIZE_PER_GPU 24 x GPUS (0,1,2,3).
    c.num_epochs = 210
    c.batch_size = 96
    # Augmentation (yaml DATASET; JointsDataset.py): PROB_HALF_BODY 0.3, NUM_JOINTS_HALF_BODY 8,
    # SCALE_FACTOR 0.35, ROT_FACTOR 45 with probability 0.6, FLIP with probability 0.5.
    c.data.augment.half_body_prob = 0.3
    c.data.augment.num_joints_half_body = 8
    c.data.augment.scale_factor = 0.35
    c.data.augment.rotation_factor = 45.0
    c.data.augment.rotation_prob = 0.6
    c.data.augment.flip = True
    c.data.augment.flip_prob = 0.5
    # Evaluation (yaml TEST): per-epoch validation on ground-truth boxes (USE_GT_BBOX: true); the
    # published AP with COCO_val2017_detections_AP_H_56_person.json, IMAGE_THRE 0.0; FLIP_TEST true.
    c.eval.boxes = "gt"
    c.eval.final_boxes = "det"
    c.eval.det_score_threshold = 0.0
    c.eval.flip_test = True
    # Initialisation (yaml MODEL.PRETRAINED, PRETRAINED_LAYERS = the backbone): ImageNet HRNet-C.
    c.init.pytorch = "pretrained/hrnet_w48-8ef0771d.pth"
    c.init.pytorch_layout = "imagenet"
    return c
