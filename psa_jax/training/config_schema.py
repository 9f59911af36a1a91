"""The full schema of train.py / eval.py configs, with defaults; `configs/*.py` override fields.

Every key a run can use exists here, so a mistyped override (`--config.optimizer.learnig_rate`)
is rejected by ml_collections with the key's name instead of being silently ignored.
"""

from __future__ import annotations

import ml_collections as mlc

__all__ = ["pose_config", "seg_config", "common_config", "udp_psa_pose_config", "nvidia_mscale_psa_config"]


def common_config() -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 0
    c.batch_size = 32                 # global, over all devices and processes
    c.num_epochs = 1
    c.num_steps = 0                   # > 0 overrides num_epochs
    c.log_every_steps = 50
    c.log_grad_norm = False           # also log the gradients' global norm (+13-15 s first compile of W32 on CPU)
    # XLA:CPU's HLO scheduler for the train step: 'memory' (smallest live set), 'default' (XLA's,
    # favours concurrency) or 'concurrency'. Ignored on GPU/TPU. See xla_flags.cpu_compiler_options.
    c.cpu_scheduler = "memory"
    # jax.clear_caches() once the train step is compiled: frees what JAX kept from tracing it (240 MB
    # for W32 on CPU); later jitted helpers (evaluation) trace again. Turn off when one process
    # calls train() many times (sweeps, notebooks, tests).
    c.clear_caches_after_compile = True
    c.optimizer = mlc.ConfigDict(dict(name="adam", lr=1e-3, weight_decay=0.0, momentum=0.9, nesterov=False,
                                      b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.0))
    c.schedule = mlc.ConfigDict(dict(name="constant", milestones=(), gamma=0.1, power=0.9, warmup_steps=0,
                                     warmup_ratio=0.001))
    c.checkpoint = mlc.ConfigDict(dict(keep_latest=2, keep_best=1, async_save=True))
    c.mesh = mlc.ConfigDict(dict(data=-1, model=1, shard_params=False))
    # Initialisation: an orbax checkpoint written by train.py or `python -m psa_jax.tools.convert`
    # (model weights only), or a PyTorch file (`pytorch_layout`: 'imagenet' loads an ImageNet
    # HRNet classifier into the backbone; 'network' loads a whole network of the same layout).
    c.init = mlc.ConfigDict(dict(checkpoint="", pytorch="", pytorch_layout="imagenet"))
    c.distributed = False             # call jax.distributed.initialize() (multi-host)
    return c


def pose_config() -> mlc.ConfigDict:
    """COCO top-down pose, HRNet-pose recipe defaults (W32, 256x192, MSRA targets, Adam 1e-3)."""
    c = common_config()
    c.task = "pose"
    c.model = mlc.ConfigDict(dict(name="pose_hrnet", width="w32", depth=50, attention="none", placement="basic",
                                  num_keypoints=17, dtype="float32"))
    c.data = mlc.ConfigDict(dict(
        manual_dir="",                # COCO layout: annotations/person_keypoints_*2017.json, train2017/, val2017/
        data_dir="",                  # where tfds writes the prepared dataset ('' = WORKDIR/data)
        input_size=(256, 192), codec="msra", sigma=0.0,   # sigma 0: 2 at 256x192, 3 at 384x288
        augment=mlc.ConfigDict(dict(half_body_prob=0.3, num_joints_half_body=8, scale_factor=0.35,
                                    rotation_factor=45.0, rotation_prob=0.6, flip=True, flip_prob=0.5)),
        synthetic=mlc.ConfigDict(dict(enabled=False, num_train=0, num_val=0, image_size=(256, 256), seed=0)),
        read_threads=2, prefetch=8, worker_count=0,
        # Training batches as uint8 RGB, normalised on the device (a quarter of the bytes and no
        # per-pixel host work); 'float32' gives host-normalised batches as the reference loader.
        train_image_dtype="uint8"))
    c.batch_size = 128
    c.num_epochs = 210
    c.schedule.name = "multistep"
    c.schedule.milestones = (170, 200)
    c.eval = mlc.ConfigDict(dict(split="validation", boxes="gt", final_boxes="det", flip_test=True, batch_size=64,
                                 det_score_threshold=0.0, every_epochs=10, every_steps=0))
    return c


def seg_config() -> mlc.ConfigDict:
    """Cityscapes, HRNet-Seg recipe defaults (HRNetV2-W48, 512x1024 crops, SGD 0.01 poly 0.9)."""
    c = common_config()
    c.task = "seg"
    c.model = mlc.ConfigDict(dict(name="seg_hrnet", width="w48", ocr=False, attention="none", placement="basic",
                                  num_classes=19, align_corners="auto", eval_scales=(0.5, 1.0, 2.0),
                                  dtype="float32"))
    c.data = mlc.ConfigDict(dict(
        manual_dir="",                # holds leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip
        data_dir="",                  # tfds data dir ('' = WORKDIR/data)
        cache_dir="",                 # '' (read the stock PNGs), 'auto' (DATA_DIR/cityscapes_cache) or a path
        image_format="jpeg",          # training cache encoding: jpeg | png | raw
        augment="hrnet_seg", crop_size=(512, 1024),
        synthetic=mlc.ConfigDict(dict(enabled=False, num_train=0, num_val=0, height=64, width=128, seed=0)),
        read_threads=2, prefetch=4, worker_count=0))
    c.loss = mlc.ConfigDict(dict(recipe="hrnet_seg", class_weights=True, aux_weight=0.4, use_ohem=False,
                                 ohem_thresh=0.9, ohem_min_kept=131072))
    c.batch_size = 12
    c.num_epochs = 484
    c.optimizer = mlc.ConfigDict(dict(name="sgd", lr=0.01, weight_decay=5e-4, momentum=0.9, nesterov=False,
                                      b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.0))
    c.schedule.name = "poly"
    c.schedule.power = 0.9
    c.eval = mlc.ConfigDict(dict(split="validation", mode="whole", scales=(), flip=False, window=(1024, 2048),
                                 stride=(0, 0), batch_size=2, every_epochs=50, every_steps=0))
    return c


def udp_psa_pose_config(attention: str, input_size: tuple[int, int]) -> mlc.ConfigDict:
    """UDP-Pose-PSA with HRNet-W48 (the DeLightCMU/PSA README's pose rows).

    No pose code or config was released with PSA (psa_module.md §5.3, §6.2); this follows the UDP
    baseline it names: HuangJunJie2017/UDP-Pose mmpose branch configs/top_down/hrnet/coco/
    hrnet_w32_coco_256x192_udp.py (Adam 3e-3 with 500-iteration linear warm-up from x0.001, x0.1
    at epochs 170/200, 210 epochs, 48 images per GPU, UDP warp and targets, flip test without
    shift), with PSA after conv1-BN-ReLU of every stage 2-4 BasicBlock as in the official
    segmentation code. Placement and schedule of the PSA pose runs could not be verified.
    """
    c = pose_config()
    c.model.width = "w48"
    c.model.attention = attention
    c.data.input_size = tuple(input_size)
    c.data.codec = "udp"
    c.batch_size = 192
    c.optimizer.lr = 3e-3
    c.schedule.warmup_steps = 500
    c.schedule.warmup_ratio = 0.001
    return c


def nvidia_mscale_psa_config(attention: str) -> mlc.ConfigDict:
    """HRNetV2-OCR + PSA as NVIDIA's HRNet_Mscale: the network and recipe of the released PSA checkpoints.

    Recipe: NVIDIA semantic-segmentation scripts/train_cityscapes.yml as the PSA repository ships
    it (psa_module.md §6.1): MscaleOCR two-scale training (0.5x / 1.0x), 0.5 BCE + 0.5 RMI on the
    joint prediction, 0.4 auxiliary, 0.05 per-scale supervision; SGD 5e-3 (8 GPUs, 1 image each),
    momentum 0.9, weight decay 1e-4, poly exponent 2 stepped per epoch, 175 epochs; crops
    1024x2048, scale 0.5-2.0, colour jitter 0.25; evaluation with hierarchical multi-scale attention
    at 0.5/1.0/2.0, no flip. Not reproduced: NVIDIA's class-uniform crop sampling and the Mapillary
    pre-training (`--snapshot`); start from ImageNet HRNet-W48 with config.init.pytorch.
    """
    c = seg_config()
    c.model.name = "mscale_ocr"
    c.model.width = "w48"
    c.model.attention = attention
    c.model.align_corners = "false"
    c.data.augment = "nvidia"
    c.data.crop_size = (1024, 2048)
    c.data.cache_dir = "auto"
    c.loss.recipe = "nvidia_mscale"
    c.batch_size = 8
    c.num_epochs = 175
    c.optimizer.lr = 5e-3
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "poly_epoch"
    c.schedule.power = 2.0
    c.eval.mode = "mscale"
    c.eval.scales = (0.5, 1.0, 2.0)
    c.eval.batch_size = 1
    c.eval.every_epochs = 25
    return c
