"""UDP-Pose-PSA(s) HRNet-W48, COCO 384x288: 79.4 AP reported by DeLightCMU/PSA's README.

No pose code or config was released with PSA; the recipe is the UDP baseline the README names, as
written in HuangJunJie2017/UDP-Pose, branch mmpose:
  configs/top_down/hrnet/coco/hrnet_w32_coco_256x192_udp.py   optimizer, warm-up and schedule,
        epochs, images per GPU, UDP warp and targets, augmentation, flip test without shift
        (the branch has this W32 256x192 file only; its values are applied to W48 at 384x288)
  mmpose/datasets/pipelines/top_down_transform.py              rotation probability 0.6
PSA_s sits after conv1-BN-ReLU of every stage 2-4 BasicBlock, as in DeLightCMU/PSA
semantic-segmentation/network/hrnetv2.py (the only released PSA code); the placement and schedule
of the PSA pose runs could not be verified. The UDP README's W48 baseline: 77.2 (256x192) /
77.8 (384x288) AP with a 65.1-AP detector.
"""

from psa_jax.training.config_schema import pose_config


def get_config():
    c = pose_config()
    # Network (DeLightCMU/PSA README: HRNet-W48; hrnetv2.py: PSA in every BasicBlock).
    c.model.name = "pose_hrnet"
    c.model.width = "w48"
    c.model.attention = "psa_s"
    c.model.placement = "basic"
    # Input: 384x288 as the PSA README row. Targets (UDP config: TopDownAffine(use_udp=True), UDP
    # encoding): UDP's combined (offset) targets are not implemented, so UDP Gaussian targets.
    c.data.input_size = (384, 288)
    c.data.codec = "udp"
    c.data.sigma = 0.0                # 0 picks 3 at 384x288
    # Optimizer (UDP config `optimizer`): Adam lr 3e-3, no weight decay, PyTorch's betas/eps.
    c.optimizer.name = "adam"
    c.optimizer.lr = 3e-3
    c.optimizer.weight_decay = 0.0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.grad_clip_norm = 0.0
    # Schedule (UDP config `lr_config`): linear warm-up over 500 iterations from x0.001, then x0.1
    # at epochs 170 and 200.
    c.schedule.name = "multistep"
    c.schedule.milestones = (170, 200)
    c.schedule.gamma = 0.1
    c.schedule.warmup_steps = 500
    c.schedule.warmup_ratio = 0.001
    # Length and batch (UDP config `total_epochs`, `samples_per_gpu`): 210 epochs; 48 images per
    # GPU x 4 GPUs (the GPU count is not stated there; 4 as HRNet-pose).
    c.num_epochs = 210
    c.batch_size = 192
    # Augmentation (UDP config train_pipeline): TopDownRandomFlip 0.5, TopDownHalfBodyTransform
    # (8 joints, 0.3), TopDownGetRandomScaleRotation (rot_factor 45, scale_factor 0.35, rot_prob 0.6).
    c.data.augment.half_body_prob = 0.3
    c.data.augment.num_joints_half_body = 8
    c.data.augment.scale_factor = 0.35
    c.data.augment.rotation_factor = 45.0
    c.data.augment.rotation_prob = 0.6
    c.data.augment.flip = True
    c.data.augment.flip_prob = 0.5
    # Evaluation (UDP config test_cfg / data_cfg): flip test without heatmap shift (the udp codec's
    # flip), detector boxes COCO_val2017_detections_AP_H_56_person.json for the final number;
    # ground-truth boxes for the periodic validation.
    c.eval.boxes = "gt"
    c.eval.final_boxes = "det"
    c.eval.det_score_threshold = 0.0
    c.eval.flip_test = True
    return c
