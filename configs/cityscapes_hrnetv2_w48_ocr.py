r"""HRNetV2-W48-OCR, Cityscapes train, HRNet-Seg recipe: 81.6 val mIoU (single scale, whole image).

Every value comes from HRNet/HRNet-Semantic-Segmentation, branch HRNet-OCR ("HRNet-Seg"):
  experiments/cityscapes/seg_hrnet_ocr_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml
        network, crop, loss weights, optimizer, epochs, batch, training and test settings
  lib/utils/utils.py::adjust_learning_rate     poly (1 - it / max_it) ** 0.9, every iteration
  lib/datasets/base_dataset.py::gen_sample     scale {0.5, ..., 2.1} x 2048, crop, flip
  lib/datasets/cityscapes.py, tools/train.py   class-weighted cross entropy (weights always passed)
  lib/config/default.py                        MODEL.ALIGN_CORNERS True (the yaml does not set it)
  README (Cityscapes table)                    81.6 val mIoU: train set, no multi-scale / flip test
The OCR head has NVIDIA's module layout (psa_jax.models.ocr), so NVIDIA OCR checkpoints load; those
were trained with align_corners=False: evaluate them with --config.model.align_corners=false.
Starts from the yaml's MODEL.PRETRAINED hrnetv2_w48_imagenet_pretrained.pth (HRNet-Image-Classification's
W48-C): put it in pretrained/ (README "Pretrained weights") or pass --config.init.pytorch=none.
"""

from psa_jax.training.config_schema import seg_config


def get_config():
    c = seg_config()
    # Network (yaml MODEL: seg_hrnet_ocr W48, NUM_OUTPUTS 2; OCR head in NVIDIA's layout;
    # default.py ALIGN_CORNERS True).
    c.model.name = "seg_hrnet"
    c.model.width = "w48"
    c.model.ocr = True
    c.model.attention = "none"
    c.model.align_corners = "true"
    # Crop and augmentation (yaml TRAIN: IMAGE_SIZE [1024, 512] (w, h), BASE_SIZE 2048,
    # MULTI_SCALE, SCALE_FACTOR 16, FLIP; gen_sample): the 'hrnet_seg' preset.
    c.data.crop_size = (512, 1024)
    c.data.augment = "hrnet_seg"
    # Loss (yaml LOSS: USE_OHEM false, BALANCE_WEIGHTS [0.4, 1] = aux, main; class weights).
    c.loss.recipe = "hrnet_seg"
    c.loss.class_weights = True
    c.loss.use_ohem = False
    c.loss.aux_weight = 0.4
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
