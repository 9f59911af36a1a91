"""HRNet-W48 pose, COCO 384x288, mmpose UDP recipe (UDP Gaussian targets): 77.2 AP (val2017, 56.4-AP detector).

The like-for-like baseline of the PSA configs at this size (configs/coco_w48_384x288_udp_psa_p.py,
configs/coco_w48_384x288_udp_psa_s.py): the same file with model.attention = 'none'.
Every recipe value comes from one source, open-mmlab/mmpose (0.x), whose UDP configs use the UDP
Gaussian targets psa_jax implements:
  configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/coco/hrnet_w48_coco_384x288_udp.py
        network, input, UDP warp and targets (sigma 3), Adam lr 5e-4, linear warm-up, steps,
        epochs, 32 images per GPU, augmentation, flip test without shift, detector boxes, pretrained
  mmpose/datasets/pipelines/top_down_transform.py   TopDownGetRandomScaleRotation rot_prob 0.6
  mmpose 1.x's name of the same recipe, td-hm_hrnet-w48_udp-8xb32-210e_coco-384x288: 8 GPUs
  configs/.../coco/hrnet_udp_coco.md   77.2 AP for this recipe without attention, COCO val2017,
                                       person detector of 56.4 AP, flip test

    python train.py --config=configs/coco_w48_384x288_udp.py --workdir=... --config.data.manual_dir=/data/coco
"""

from psa_jax.training.config_schema import pose_config


def get_config():
    c = pose_config()
    # Network (mmpose config `model`: HRNet W48, TopdownHeatmapSimpleHead, no attention).
    c.model.name = "pose_hrnet"
    c.model.width = "w48"
    c.model.attention = "none"
    c.model.placement = "basic"
    # Input and targets (data_cfg image_size [288, 384] (w, h); TopDownAffine(use_udp=True);
    # TopDownGenerateTarget(sigma=3, encoding='UDP', target_type='GaussianHeatmap')).
    c.data.input_size = (384, 288)
    c.data.codec = "udp"
    c.data.sigma = 0.0                # 0 picks 3 at 384x288
    # Optimizer (`optimizer`): Adam lr 5e-4, no weight decay, PyTorch's betas/eps; no clipping.
    c.optimizer.name = "adam"
    c.optimizer.lr = 5e-4
    c.optimizer.weight_decay = 0.0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.grad_clip_norm = 0.0
    # Schedule (`lr_config`): linear warm-up over 500 iterations from x0.001, then x0.1 at epochs
    # 170 and 200 (mmcv's step policy reads the 0-based epoch before each epoch: the drop applies
    # from index 170, as our 'multistep').
    c.schedule.name = "multistep"
    c.schedule.milestones = (170, 200)
    c.schedule.gamma = 0.1
    c.schedule.warmup_steps = 500
    c.schedule.warmup_ratio = 0.001
    # Length and batch (`total_epochs`; samples_per_gpu 32 x 8 GPUs).
    c.num_epochs = 210
    c.batch_size = 256
    # Augmentation (train_pipeline): TopDownRandomFlip 0.5, TopDownHalfBodyTransform (8 joints, 0.3),
    # TopDownGetRandomScaleRotation (rot_factor 40, scale_factor 0.5, default rot_prob 0.6).
    c.data.augment.half_body_prob = 0.3
    c.data.augment.num_joints_half_body = 8
    c.data.augment.scale_factor = 0.5
    c.data.augment.rotation_factor = 40.0
    c.data.augment.rotation_prob = 0.6
    c.data.augment.flip = True
    c.data.augment.flip_prob = 0.5
    # Evaluation (test_cfg flip_test, shift_heatmap False: the udp codec's flip; data_cfg
    # use_gt_bbox False, det_bbox_thr 0.0, COCO_val2017_detections_AP_H_56_person.json for the final
    # number); ground-truth boxes for the periodic validation.
    c.eval.boxes = "gt"
    c.eval.final_boxes = "det"
    c.eval.det_score_threshold = 0.0
    c.eval.flip_test = True
    # Initialisation (`model.pretrained`: https://download.openmmlab.com/mmpose/pretrain_models/
    # hrnet_w48-8ef0771d.pth, HRNet pose's ImageNet W48 classifier) into the backbone.
    c.init.pytorch = "pretrained/hrnet_w48-8ef0771d.pth"
    c.init.pytorch_layout = "imagenet"
    return c
