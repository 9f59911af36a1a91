r"""HRNetV2-W48 MscaleOCR (NVIDIA HRNet_Mscale), Cityscapes train: 84.7 val mIoU (NVIDIA's README).

The like-for-like baseline of cityscapes_mscale_ocr_psa_p.py and cityscapes_mscale_ocr_psa_s.py: the same
file with model.attention = 'none'.
Every recipe value comes from NVIDIA/semantic-segmentation (DeLightCMU/PSA's semantic-segmentation/
is that tree with PSA added to the HRNet BasicBlock, its recipe files unchanged). Paths in that tree:
  network/ocrnet.py, config.py       MscaleOCR (HRNetV2-W48 + OCR + scale attention), two-scale
                                     training 0.5x / 1.0x, ALIGN_CORNERS False, OCR_ALPHA 0.4
  scripts/train_cityscapes.yml       crop 1024x2048, 1 image per GPU on 8 GPUs, lr 5e-3, poly_exp 2,
                                     max_epoch 175, rmi_loss, supervised_mscale_loss_wt 0.05,
                                     n_scales 0.5,1.0,2.0, fp16 (apex), the Mapillary-pretrained
                                     snapshot ocrnet.HRNet_industrious-chicken.pth
  train.py (argument defaults)       SGD momentum 0.9, weight decay 1e-4, scale 0.5-2.0, colour
                                     jitter 0.25, no flip at evaluation
  loss/optimizer.py                  poly schedule stepped once per epoch, no warm-up;
                                     restore_net / forgiving_state_restore: the snapshot's tensors
                                     whose key and size match are loaded, the rest skipped
  README ("Train cityscapes")        this recipe "should deliver a model that achieves 84.7 IOU"
                                     (Cityscapes val; the 86.8 of "Train SOTA" is another recipe,
                                     train_cityscapes_sota.yml: 16 GPUs, lr 1e-2, auto-labelled
                                     coarse data, max_cu_epoch 150 -- not this one)
NVIDIA trains in fp16 (apex amp); we compute in bfloat16 (parameters and optimizer in float32), which
needs no loss scaling; pass --config.model.dtype=float32 for full precision.
Not reproduced: NVIDIA's class-uniform crop sampling.
"""

from psa_jax.training.config_schema import seg_config


def get_config():
    c = seg_config()
    # Network (ocrnet.py HRNet_Mscale, config.py).
    c.model.name = "mscale_ocr"
    c.model.width = "w48"
    c.model.attention = "none"
    c.model.placement = "basic"
    c.model.align_corners = "false"
    c.model.eval_scales = (0.5, 1.0, 2.0)
    # train_cityscapes.yml fp16 + apex: half-precision compute, here bfloat16.
    c.model.dtype = "bfloat16"
    # Crop and augmentation (train_cityscapes.yml crop_size; train.py scale_min/max, color_aug):
    # the 'nvidia' preset (scale 0.5-2.0, flip, ColorJitter 0.25) at 1024x2048.
    c.data.crop_size = (1024, 2048)
    c.data.augment = "nvidia"
    c.data.cache_dir = "auto"         # full-size crops: decode from the training cache
    # Loss (train_cityscapes.yml rmi_loss, supervised_mscale_loss_wt 0.05; config.py OCR_ALPHA
    # 0.4): 0.5 BCE + 0.5 RMI on the joint prediction, 0.4 auxiliary, 0.05 per scale.
    c.loss.recipe = "nvidia_mscale"
    c.loss.aux_weight = 0.4
    # Optimizer (train_cityscapes.yml lr; train.py momentum, weight_decay): SGD 5e-3, momentum 0.9,
    # weight decay 1e-4 on every parameter, no Nesterov.
    c.optimizer.name = "sgd"
    c.optimizer.lr = 5e-3
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.nesterov = False
    c.optimizer.grad_clip_norm = 0.0
    # Schedule (train_cityscapes.yml poly_exp 2; optimizer.py steps it per epoch): no warm-up.
    c.schedule.name = "poly_epoch"
    c.schedule.power = 2.0
    c.schedule.warmup_steps = 0
    # Length and batch (train_cityscapes.yml max_epoch 175; bs_trn 1 x nproc_per_node 8).
    c.num_epochs = 175
    c.batch_size = 8
    # Evaluation (train_cityscapes.yml n_scales; train.py do_flip False): hierarchical multi-scale
    # attention at 0.5 / 1.0 / 2.0 on whole 1024x2048 images, no flip.
    c.eval.mode = "mscale"
    c.eval.scales = (0.5, 1.0, 2.0)
    c.eval.flip = False
    c.eval.batch_size = 1
    c.eval.every_epochs = 25
    # Initialisation (train_cityscapes.yml snapshot): NVIDIA's Mapillary-pretrained MscaleOCR, restored
    # as NVIDIA does: tensors of matching key and shape; the 65-class Mapillary heads (ocr.cls_head,
    # ocr.aux_head.2) keep their initialisation.
    c.init.pytorch = "pretrained/ocrnet.HRNet_industrious-chicken.pth"
    c.init.pytorch_layout = "snapshot"
    return c
