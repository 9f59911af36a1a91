r"""HRNetV2-W48, Cityscapes train, HRNet-Seg recipe: 80.9 val mIoU (single scale, whole image).

Every value comes from HRNet/HRNet-Semantic-Segmentation ("HRNet-Seg"), branch HRNet-OCR:
  experiments/cityscapes/seg_hrnet_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml
        network, ALIGN_CORNERS False, crop, optimizer, epochs, batch, flip / multi-scale training,
        test settings (the master branch's copy sets no ALIGN_CORNERS and upsamples with
        F.upsample/F.interpolate's default, also align_corners=False; its MODEL.PRETRAINED is the
        ImageNet file below, the HRNet-OCR copy names an unpublished `..._top1_21.pth`)
  lib/utils/utils.py::adjust_learning_rate     poly (1 - it / max_it) ** 0.9, every iteration
  lib/datasets/base_dataset.py::gen_sample     scale {0.5, ..., 2.1} x 2048, crop, flip
  lib/datasets/cityscapes.py, tools/train.py   class-weighted cross entropy (weights always passed)
  README (Cityscapes table)                    80.9 val mIoU: train set, no multi-scale / flip test
Not reproduced: the README's remark "we use align_corners = True" contradicts the yaml; the yaml wins.
Starts from hrnetv2_w48_imagenet_pretrained.pth (HRNet-Image-Classification's W48-C): put it in
pretrained/ (README "Pretrained weights") or pass --config.init.pytorch=none.
"""

from psa_jax.training.config_schema import seg_config


def get_config():
    c = seg_config()
    # Network (yaml MODEL: seg_hrnet W48, ALIGN_CORNERS False).
    c.model.name = "seg_hrnet"
    c.model.width = "w48"
    c.model.ocr = False
    c.model.attention = "none"
    c.model.align_corners = "false"
    # Crop and augmentation (yaml TRAIN: IMAGE_SIZE [1024, 512] (w, h), BASE_SIZE 2048,
    # MULTI_SCALE, SCALE_FACTOR 16, FLIP; gen_sample): the 'hrnet_seg' preset.
    c.data.crop_size = (512, 1024)
    c.data.augment = "hrnet_seg"
    # Loss (yaml LOSS: USE_OHEM false; cityscapes.py class weights).
    c.loss.recipe = "hrnet_seg"
    c.loss.class_weights = True
    c.loss.use_ohem = False
    # Optimizer (yaml TRAIN): SGD, LR 0.01, MOMENTUM 0.9, WD 0.0005, NESTEROV false.
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.optimizer.nesterov = False
    c.optimizer.grad_clip_norm = 0.0
    # Schedule (utils.py::adjust_learning_rate): poly 0.9 per iteration, no warm-up.
    c.schedule.name = "poly"
    c.schedule.power = 0.9
    c.schedule.warmup_steps = 0
    # Length and batch (yaml TRAIN): END_EPOCH 484; BATCH_SIZE_PER_GPU 3 x GPUS (0,1,2,3).
    c.num_epochs = 484
    c.batch_size = 12
    # Evaluation (yaml TEST: IMAGE_SIZE [2048, 1024], MULTI_SCALE false, FLIP_TEST false): the whole
    # image at one scale, no flip.
    c.eval.mode = "whole"
    c.eval.scales = ()
    c.eval.flip = False
    # Initialisation (yaml MODEL.PRETRAINED): the ImageNet HRNet-W48-C classifier into the backbone.
    c.init.pytorch = "pretrained/hrnetv2_w48_imagenet_pretrained.pth"
    c.init.pytorch_layout = "imagenet"
    return c
