"""The schema of train.py / eval.py configs: every key, its default and its meaning, each written once.

`common_config()` holds the keys every task has; `pose_config()` and `seg_config()` add the
sections of their task (`model`, `data`, `eval`, and `loss` for segmentation). A key that is not
here does not exist, so a mistyped override (`--config.optimizer.learnig_rate`) is rejected by
ml_collections with the key's name instead of being silently ignored. Code that reads a config
(e.g. `optimizers.make_optimizer`) relies on every key being present and keeps no defaults of its
own.

The training-recipe keys (optimizer, schedule, epochs, batch) default to neutral placeholders, not
to any paper's values: every published-setting file in configs/ starts from this schema, sets its
whole recipe explicitly and names the reference file each value comes from (docs/recipes.md).
Task-only keys (input size, codec, augmentation, evaluation) default to the values of the task's
first reference (HRNet-pose for pose, HRNet-Seg for segmentation).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections as mlc

__all__ = ["common_config", "load_config", "pose_config", "seg_config"]


def common_config() -> mlc.ConfigDict:
    """Keys of every task: run length, batch, optimizer, schedule, checkpoints, mesh, initialisation."""
    c = mlc.ConfigDict()
    c.seed = 0                        # seeds the initialisation and the order/augmentation of the data
    c.batch_size = 32                 # global, over all devices and processes
    c.num_epochs = 1                  # training length in passes over the training set
    c.num_steps = 0                   # > 0 overrides num_epochs (and is then the schedules' total length)
    c.log_every_steps = 50            # training metrics are written every this many steps
    c.log_grad_norm = False           # also log the gradients' global norm (+13-15 s first compile of W32 on CPU)
    # XLA:CPU's HLO scheduler for the train step: 'memory' (smallest live set), 'default' (XLA's,
    # favours concurrency) or 'concurrency'. Ignored on GPU/TPU. See xla_flags.cpu_compiler_options.
    c.cpu_scheduler = "memory"
    # jax.clear_caches() once the train step is compiled: frees what JAX kept from tracing it (240 MB
    # for W32 on CPU); later jitted helpers (evaluation) trace again. Turn off when one process
    # calls train() many times (sweeps, notebooks, tests).
    c.clear_caches_after_compile = True
    # Gradient accumulation: each step splits the global batch into this many micro-batches, runs
    # them one after the other and applies one optimizer update with their mean gradient (BatchNorm
    # statistics are those of each micro-batch, as with a k-times smaller batch; docs/training.md).
    c.grad_accum_steps = 1
    c.ema_decay = 0.0                 # > 0: an exponential moving average of the weights, evaluated and checkpointed
    c.loss_ceiling = 0.0              # > 0: stop when the training loss exceeds this (diverged run); 0: off
    c.tensorboard = True              # TensorBoard event files in WORKDIR/tensorboard beside metrics.jsonl

    # optimizers.make_optimizer reads every key of this section.
    c.optimizer = mlc.ConfigDict()
    c.optimizer.name = "adam"         # 'adam' | 'sgd' (optimizers.OPTIMIZERS)
    c.optimizer.lr = 1e-3             # base learning rate; the schedule scales it
    c.optimizer.weight_decay = 0.0    # PyTorch's coupled L2 (grad += wd * param) on every parameter; 0: none
    c.optimizer.momentum = 0.9        # sgd: heavy-ball momentum (0: none); adam ignores it
    c.optimizer.nesterov = False      # sgd: Nesterov momentum
    c.optimizer.b1 = 0.9              # adam: first-moment decay (PyTorch's betas[0])
    c.optimizer.b2 = 0.999            # adam: second-moment decay (PyTorch's betas[1])
    c.optimizer.eps = 1e-8            # adam: denominator epsilon
    c.optimizer.grad_clip_norm = 0.0  # clip the gradients to this global norm first; 0: no clipping

    # optimizers.make_schedule reads every key of this section.
    c.schedule = mlc.ConfigDict()
    # 'constant' | 'multistep' (x gamma at each milestone) | 'poly' ((1 - step / total) ** power,
    # every step) | 'poly_epoch' ((1 - epoch / epochs) ** power, constant within an epoch).
    c.schedule.name = "constant"
    c.schedule.milestones = ()        # multistep: the epochs at which the rate is multiplied by gamma
    c.schedule.gamma = 0.1            # multistep: the factor applied at each milestone
    c.schedule.power = 0.9            # poly, poly_epoch: the exponent
    c.schedule.warmup_steps = 0       # linear warm-up over this many steps (mmcv's); 0: none
    c.schedule.warmup_ratio = 0.001   # warm-up starts at lr * warmup_ratio

    c.checkpoint = mlc.ConfigDict()
    c.checkpoint.keep_latest = 2      # how many of the most recent checkpoints are kept
    c.checkpoint.keep_best = 1        # how many of the best-metric checkpoints are kept
    c.checkpoint.async_save = True    # write checkpoints in the background while training goes on
    # Checkpoints apart from evaluation (evaluations always write one): every this many steps
    # and/or every this many minutes of training (0: off). A preemption loses at most that much.
    c.checkpoint.every_steps = 0
    c.checkpoint.every_minutes = 30.0
    c.checkpoint.directory = ""       # '' = WORKDIR/checkpoints (local or a bucket path)

    c.mesh = mlc.ConfigDict()
    c.mesh.data = -1                  # devices on the 'data' axis; -1: all devices not on 'fsdp' / 'model'
    # devices on the 'fsdp' axis: the batch is split over it *and* so are parameters and optimizer
    # state (ZeRO-3; rules in training/sharding.py)
    c.mesh.fsdp = 1
    c.mesh.model = 1                  # devices on the 'model' axis
    c.mesh.shard_params = False       # split large parameters (and optimizer state) over 'model'

    # Initialisation (training/init_weights.py): an orbax checkpoint written by train.py or
    # `python -m psa_jax.tools.convert` (model weights only), or a PyTorch file. Every published
    # config names the file its reference starts from as `pretrained/<file>`, looked for in
    # $PSA_JAX_PRETRAINED or else ./pretrained (README "Pretrained weights"); a missing file stops the
    # run before training. 'none' trains from random initialisation on purpose (a warning says so).
    c.init = mlc.ConfigDict()
    c.init.checkpoint = ""            # orbax checkpoint directory; '': none
    c.init.pytorch = ""               # PyTorch .pth file; 'none' or '': none (both log a warning)
    # 'imagenet' (ImageNet HRNet classifier -> backbone) | 'snapshot' (another dataset's whole network,
    # tensors of matching key and shape, as NVIDIA's --snapshot) | 'network' (same layout, strict)
    c.init.pytorch_layout = "imagenet"
    # Multi-process runs (pods, multi-GPU clusters): runtime/distributed.py. Left empty, the
    # values are detected (Cloud TPU, SLURM, Open MPI); set them for one process per GPU by hand.
    c.distributed = mlc.ConfigDict()
    c.distributed.initialize = "auto"  # 'auto' (when flags are set or a cluster is detected) | 'always' | 'never'
    c.distributed.coordinator_address = ""  # 'host:port' of process 0
    c.distributed.num_processes = 0   # 0: detect
    c.distributed.process_id = -1     # -1: detect
    c.distributed.heartbeat_timeout_s = 100  # a process silent this long stops the others with an error
    return c


def _program(model: mlc.ConfigDict) -> None:
    # Which program variant the network is built as: 'auto' picks from the platform the train step
    # runs on, 'plain' = the portable program, 'xla_cpu' = the XLA:CPU workarounds; values identical.
    model.program = "auto"


def pose_config() -> mlc.ConfigDict:
    """The common keys plus top-down COCO pose: `model`, `data`, `eval`.

    Task-only defaults are HRNet-pose's W32 256x192 values (MSRA targets, its augmentation and
    evaluation); the training recipe is left to the config files.
    """
    c = common_config()
    c.task = "pose"                   # selects psa_jax.tasks.pose (psa_jax.tasks.registry.TASKS)

    c.model = mlc.ConfigDict()
    c.model.name = "pose_hrnet"       # 'pose_hrnet' | 'pose_resnet' (SimpleBaseline)
    c.model.width = "w32"             # pose_hrnet: 'w18_small' | 'w18' | 'w32' | 'w48' (models.hrnet.hrnet_spec)
    c.model.depth = 50                # pose_resnet: ResNet depth
    c.model.attention = "none"        # 'none' | 'psa_p' | 'psa_s' | ... (layers.registry.ATTENTION_NAMES)
    c.model.placement = "basic"       # where the attention goes: 'basic' | 'all_residual' (models.options)
    c.model.num_keypoints = 17        # heatmap channels (COCO's 17 keypoints)
    c.model.dtype = "float32"         # compute dtype: 'float32' | 'bfloat16' | 'float16' (parameters stay float32)
    _program(c.model)

    c.data = mlc.ConfigDict()
    c.data.manual_dir = ""            # COCO layout: annotations/person_keypoints_*2017.json, train2017/, val2017/
    c.data.data_dir = ""              # where tfds writes the prepared dataset ('' = WORKDIR/data)
    c.data.input_size = (256, 192)    # network input (height, width); heatmaps are a quarter of it
    # targets, warp and decoding: 'msra' | 'dark' | 'udp' | 'udp_combined' (UDP's offset target) (data.pose_targets)
    c.data.codec = "msra"
    c.data.sigma = 0.0                # Gaussian sigma of the targets; 0: 2 at 256x192, 3 at 384x288
    # Training augmentation (data.pose_pipeline.PoseAugmentConfig), applied in this order:
    c.data.augment = mlc.ConfigDict()
    c.data.augment.half_body_prob = 0.3      # probability of the half-body crop
    c.data.augment.num_joints_half_body = 8  # half-body only with more than this many labelled joints
    c.data.augment.scale_factor = 0.35       # box scale *= clip(N(1, sf), 1 - sf, 1 + sf)
    c.data.augment.rotation_factor = 45.0    # rotation = clip(N(0, rf), -2 rf, 2 rf) degrees ...
    c.data.augment.rotation_prob = 0.6       # ... with this probability, else 0
    c.data.augment.flip = True               # horizontal flip with left/right joint swap ...
    c.data.augment.flip_prob = 0.5           # ... with this probability
    # Synthetic stick-figure scenes in COCO's layout instead of COCO (data.synthetic_coco).
    c.data.synthetic = mlc.ConfigDict()
    c.data.synthetic.enabled = False  # train and evaluate on generated scenes (manual_dir is not read)
    c.data.synthetic.num_train = 0    # training images generated
    c.data.synthetic.num_val = 0      # validation images generated
    c.data.synthetic.image_size = (256, 256)  # generated image size (height, width)
    c.data.synthetic.seed = 0         # seed of the generated scenes
    c.data.read_threads = 2           # grain read threads
    c.data.prefetch = 8               # grain read-ahead buffer, in records
    c.data.worker_count = 0           # > 0: augmentation in this many worker processes
    # Training batches as uint8 RGB, normalised on the device (a quarter of the bytes and no
    # per-pixel host work); 'float32' gives host-normalised batches as the reference loader.
    c.data.train_image_dtype = "uint8"

    c.eval = mlc.ConfigDict()
    c.eval.split = "validation"       # tfds split evaluated (val2017)
    c.eval.boxes = "gt"               # person boxes of the periodic evaluation: 'gt' | 'det' (detector)
    c.eval.final_boxes = "det"        # also evaluated after the last step ('' or == boxes: nothing more)
    c.eval.flip_test = True           # average with the flipped image's heatmaps (codec's flip convention)
    c.eval.batch_size = 64            # evaluation batch, per process
    c.eval.det_score_threshold = 0.0  # 'det': drop detector boxes scoring below this
    c.eval.every_epochs = 10          # evaluate (and checkpoint) every this many epochs ...
    c.eval.every_steps = 0            # ... or, if > 0, every this many steps
    return c


def seg_config() -> mlc.ConfigDict:
    """The common keys plus Cityscapes segmentation: `model`, `data`, `loss`, `eval`.

    Task-only defaults are HRNet-Seg's HRNetV2-W48 values (512x1024 crops, its augmentation and
    loss, single-scale whole-image evaluation); the training recipe is left to the config files.
    """
    c = common_config()
    c.task = "seg"                    # selects psa_jax.tasks.seg (psa_jax.tasks.registry.TASKS)

    c.model = mlc.ConfigDict()
    c.model.name = "seg_hrnet"        # 'seg_hrnet' (HRNetV2, optionally + OCR) | 'mscale_ocr' (NVIDIA)
    c.model.width = "w48"             # 'w18_small' | 'w18' | 'w32' | 'w48' (models.hrnet.hrnet_spec)
    c.model.ocr = False               # seg_hrnet: add the OCR head (NVIDIA's layout)
    c.model.attention = "none"        # 'none' | 'psa_p' | 'psa_s' | ... (layers.registry.ATTENTION_NAMES)
    c.model.placement = "basic"       # where the attention goes: 'basic' | 'all_residual' (models.options)
    c.model.num_classes = 19          # Cityscapes trainIds
    # seg_hrnet's bilinear convention: 'auto' (models.seg.seg_hrnet's default, False: HRNetV2-W48's
    # yaml and NVIDIA's OCR; HRNet-Seg's own OCR branch uses True, which its recipe sets) | 'true' | 'false'.
    # mscale_ocr always uses False (NVIDIA).
    c.model.align_corners = "auto"
    c.model.eval_scales = (0.5, 1.0, 2.0)  # mscale_ocr: the scales its default nscale merges (must hold 1.0)
    c.model.dtype = "float32"         # compute dtype: 'float32' | 'bfloat16' | 'float16' (parameters stay float32)
    _program(c.model)

    c.data = mlc.ConfigDict()
    c.data.manual_dir = ""            # holds leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip
    c.data.data_dir = ""              # tfds data dir ('' = WORKDIR/data)
    c.data.cache_dir = ""             # '' (read the stock PNGs), 'auto' (DATA_DIR/cityscapes_cache) or a path
    c.data.image_format = "jpeg"      # training cache encoding: jpeg | png | raw
    c.data.augment = "hrnet_seg"      # preset of data.seg_pipeline.AUGMENT_PRESETS: 'hrnet_seg' | 'nvidia'
    c.data.crop_size = (512, 1024)    # training crop (height, width); replaces the preset's crop
    # Generated Cityscapes-layout zips instead of Cityscapes (data.fake_cityscapes).
    c.data.synthetic = mlc.ConfigDict()
    c.data.synthetic.enabled = False  # train and evaluate on generated scenes (manual_dir is not read)
    c.data.synthetic.num_train = 0    # training images generated
    c.data.synthetic.num_val = 0      # validation images generated
    c.data.synthetic.height = 64      # generated image height
    c.data.synthetic.width = 128      # generated image width
    c.data.synthetic.seed = 0         # seed of the generated scenes
    c.data.read_threads = 2           # grain read threads
    c.data.prefetch = 4               # grain read-ahead buffer, in records
    c.data.worker_count = 0           # > 0: augmentation in this many worker processes

    c.loss = mlc.ConfigDict()
    c.loss.recipe = "hrnet_seg"       # 'hrnet_seg' (cross entropy) | 'nvidia_mscale' (BCE + RMI, two scales)
    c.loss.class_weights = True       # hrnet_seg: HRNet-Seg's Cityscapes class weights
    c.loss.aux_weight = 0.4           # weight of the OCR auxiliary (soft object region) loss
    c.loss.use_ohem = False           # hrnet_seg: online hard example mining on the main output
    c.loss.ohem_thresh = 0.9          # OHEM: keep pixels whose true-class probability is below this ...
    c.loss.ohem_min_kept = 131072     # ... but at least this many per batch

    c.eval = mlc.ConfigDict()
    c.eval.split = "validation"       # tfds split evaluated (the 500 val images)
    c.eval.mode = "whole"             # 'whole' | 'slide' | 'multiscale' | 'mscale' (evaluation.seg_evaluator)
    c.eval.scales = ()                # multiscale / mscale scales; (): the mode's default
    c.eval.flip = False               # multiscale: also average the flipped image
    c.eval.window = (1024, 2048)      # slide / multiscale: window (height, width)
    c.eval.stride = (0, 0)            # slide / multiscale: window stride; (0, 0): the mode's default
    c.eval.batch_size = 2             # evaluation batch, per process
    c.eval.every_epochs = 50          # evaluate (and checkpoint) every this many epochs ...
    c.eval.every_steps = 0            # ... or, if > 0, every this many steps
    return c


def load_config(path: str, overrides: Sequence[str] = ()) -> mlc.ConfigDict:
    """What `--config=PATH --config.KEY=VALUE ...` gives train.py and eval.py: the config file's
    `get_config()` (PATH may end in `:arg`), locked, with each `KEY=VALUE` of `overrides` applied
    (an unknown key or a value of the wrong type is an error naming it)."""
    from absl import flags
    from ml_collections import config_flags

    if overrides:  # an unknown key is named with the closest valid ones
        from psa_jax.training.preflight import check_overrides, load_config_file
        check_overrides(load_config_file(str(path)), overrides)
    argv = ["psa_jax", f"--config={path}", *(f"--config.{o}" for o in overrides)]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", str(path), "config", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config


def sibling_config(anchor: str, name: str) -> mlc.ConfigDict:
    """`get_config()` of the config file `name` in the directory of the file `anchor` (a config
    file's `__file__`): a setting that is another one plus a change, e.g. a PSA config as its
    baseline twin with `model.attention` set, so the two cannot drift apart."""
    import importlib.util
    import pathlib

    path = pathlib.Path(anchor).resolve().with_name(name)
    if not path.is_file():
        raise FileNotFoundError(f"{anchor} builds on {path}, which does not exist")
    spec = importlib.util.spec_from_file_location(f"psa_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
