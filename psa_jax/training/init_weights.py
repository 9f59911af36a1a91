"""Initialising a freshly built network from `config.init` (before training or evaluation).

* `init.checkpoint`: an orbax checkpoint directory written by train.py or by
  `python -m psa_jax.tools.convert` (its `model` item; the latest step).
* `init.pytorch`: a PyTorch file, with `init.pytorch_layout`
    - 'imagenet': an ImageNet HRNet classifier into the backbone (HRNet pose, HRNet-Seg);
    - 'snapshot': a whole network of another dataset, as NVIDIA's `forgiving_state_restore`
      (semantic-segmentation `network/utils.py`) restores its `--snapshot`: every tensor whose key
      and shape match is loaded; the class-count-dependent heads (Mapillary's 65 classes against
      Cityscapes' 19) and attention weights absent from the file keep their initialisation;
    - 'network': a whole network of the same layout (strict), e.g. an official PSA checkpoint.
  The value 'none' trains from random initialisation on purpose (a warning says so).

Where the file is looked for (`resolve_pretrained`): an absolute path as is; a relative path
starting with `pretrained/` under `$PSA_JAX_PRETRAINED` when that variable is set, else under the
working directory (`./pretrained/`, the repository root for train.py); any other relative path
from the working directory. The published configs name `pretrained/<file as the reference
publishes it>`; `PRETRAINED_SOURCES` says where each is published. A missing file stops the run
before anything is trained, with that information and the `none` escape in the message.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import nnx

from psa_jax.convert.from_torch import ConversionReport, from_torch
from psa_jax.convert.pytorch_checkpoints import (
    load_imagenet_backbone,
    load_network,
    read_state_dict,
)
from psa_jax.convert.torch_names import torch_parameter_map
from psa_jax.training.checkpointing import Checkpointer, abstract_like

__all__ = [
    "NO_INIT",
    "PRETRAINED_DIR_ENV",
    "PRETRAINED_SOURCES",
    "PYTORCH_LAYOUTS",
    "check_init",
    "initialise_weights",
    "resolve_pretrained",
]

logger = logging.getLogger(__name__)

PRETRAINED_DIR_ENV = "PSA_JAX_PRETRAINED"
NO_INIT = "none"
PYTORCH_LAYOUTS = ("imagenet", "snapshot", "network")

# File name -> (what it is, who publishes it and where). The names are the references' own.
_HRNET_POSE_ZOO = ("leoxiaobin/deep-high-resolution-net.pytorch README, model zoo folder "
                   "`models/pytorch/imagenet/` (GoogleDrive "
                   "https://drive.google.com/drive/folders/1hOTihvbyIxsm5ygDpbUuJ7O_tzv4oXjC , OneDrive "
                   "https://1drv.ms/f/s!AhIXJn_J-blW231MH2krnmLq5kkQ); the same file is served by mmpose at "
                   "https://download.openmmlab.com/mmpose/pretrain_models/")
PRETRAINED_SOURCES: dict[str, tuple[str, str]] = {
    "hrnet_w32-36af842e.pth": ("ImageNet HRNet-W32-C classifier (HRNet pose, W32 recipes)",
                               _HRNET_POSE_ZOO + "hrnet_w32-36af842e.pth"),
    "hrnet_w48-8ef0771d.pth": ("ImageNet HRNet-W48-C classifier (HRNet pose and mmpose UDP, W48 recipes)",
                               _HRNET_POSE_ZOO + "hrnet_w48-8ef0771d.pth"),
    "hrnetv2_w48_imagenet_pretrained.pth": (
        "ImageNet HRNet-W48-C classifier as HRNet-Seg names it (HRNetV2-W48 / -OCR recipes)",
        ("HRNet/HRNet-Image-Classification README, model table row HRNet-W48-C (OneDrive / BaiduYun "
         "links), linked from HRNet/HRNet-Semantic-Segmentation's README; NVIDIA/semantic-segmentation "
         "ships the same name in its seg_weights folder "
         "(https://drive.google.com/open?id=1fs-uLzXvmsISbS635eRZCc5uzQdBIZ_U)")),
    "ocrnet.HRNet_industrious-chicken.pth": (
        "NVIDIA's Mapillary-pretrained HRNet-W48 MscaleOCR snapshot (train_cityscapes.yml `snapshot`)",
        ("NVIDIA/semantic-segmentation README, 'Download pretrained weights' (seg_weights folder on Google "
         "Drive: https://drive.google.com/open?id=1fs-uLzXvmsISbS635eRZCc5uzQdBIZ_U)")),
}


def resolve_pretrained(path: str) -> str:
    """The file `config.init.pytorch = path` refers to (see the module doc); not checked for existence."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    parts = path.replace("\\", "/").split("/", 1)
    root = os.environ.get(PRETRAINED_DIR_ENV, "")
    if parts[0] == "pretrained" and len(parts) == 2 and root:
        return os.path.join(root, parts[1])
    return os.path.abspath(path)


def _missing_file_error(value: str, resolved: str) -> FileNotFoundError:
    name = os.path.basename(resolved)
    what, where = PRETRAINED_SOURCES.get(name, (None, None))
    lines = [f"config.init.pytorch={value!r}: the file {resolved} does not exist."]
    if what:
        lines.append(f"It is the {what}, published in {where}.")
    else:
        lines.append("It is not one of the reference files psa_jax knows (README 'Pretrained weights').")
    lines.append(f"Put it in $({PRETRAINED_DIR_ENV} or ./pretrained)/{name}, or give its path with "
                 f"--config.init.pytorch=/path/to/{name}.")
    lines.append(f"To train from random initialisation on purpose, pass --config.init.pytorch={NO_INIT}.")
    return FileNotFoundError(" ".join(lines))


def _by_variable(module: nnx.Module) -> dict[int, str]:
    """id(variable) -> its PyTorch key in `module`'s layout."""
    return {id(t.variable): key for key, t in torch_parameter_map(module).items()}


def _load_imagenet(model: nnx.Module, state_dict: dict[str, Any]) -> ConversionReport:
    """`load_imagenet_backbone`, its report in the whole network's PyTorch keys: `missing` lists
    every variable not loaded (attention in the backbone and the whole task head)."""
    report = load_imagenet_backbone(model, state_dict)
    names = _by_variable(model)
    backbone = torch_parameter_map(model.backbone)
    loaded = sorted(names[id(backbone[k].variable)] for k in report.loaded)
    loaded_set = set(loaded)
    missing = sorted(k for k in names.values() if k not in loaded_set)
    return ConversionReport(loaded=loaded, missing=missing, unexpected=report.unexpected)


def _load_snapshot(model: nnx.Module, state_dict: dict[str, Any]) -> ConversionReport:
    """NVIDIA's forgiving restore: keys present with the same number of elements are loaded."""
    targets = torch_parameter_map(model)
    kept = {}
    for k, v in state_dict.items():
        t = targets.get(k)
        if t is not None and int(np.prod(np.shape(v))) == int(np.prod(t.torch_shape)):
            kept[k] = v
    if not kept:
        raise ValueError(f"no tensor of the snapshot matches {type(model).__name__}'s keys and shapes: "
                         "is config.init.pytorch_layout right ('imagenet' for classifier files)?")
    missing = [k for k in targets if k not in kept]
    ignored = tuple(k for k in state_dict if k not in kept and not k.endswith("num_batches_tracked"))
    report = from_torch(model, kept, allow_missing=tuple(missing), strip_prefixes=())
    return ConversionReport(loaded=report.loaded, missing=sorted(missing), unexpected=sorted(ignored))


def _log_list(what: str, keys: list[str]) -> None:
    if keys:
        logger.info("%s: %s", what, ", ".join(keys[:20]) + (f" ... ({len(keys)} in all)" if len(keys) > 20 else ""))


def check_init(init: Any) -> str | None:
    """Validates `init` without a model, so a run can fail before preparing data or compiling.

    Returns the resolved PyTorch file, or None when `init.pytorch` is '' / 'none' (a warning says
    the network starts from random initialisation unless `init.checkpoint` is set).

    Raises:
      FileNotFoundError: `init.pytorch` names a file that is not there (message: the file, where
        the reference publishes it, where to put it, and `--config.init.pytorch=none`).
      ValueError: both sources set, or an unknown layout.
    """
    pytorch = str(init.pytorch).strip()
    if pytorch.lower() == NO_INIT:
        if not init.checkpoint:
            logger.warning("config.init.pytorch=none: training from random initialisation on purpose; the "
                           "reference recipes start from pretrained weights (README 'Pretrained weights')")
        return None
    if init.checkpoint and pytorch:
        raise ValueError("set only one of config.init.checkpoint and config.init.pytorch "
                         f"(pass --config.init.pytorch={NO_INIT} to use the checkpoint)")
    if not pytorch:
        if not init.checkpoint:
            logger.warning("config.init names no weights: the network starts from random initialisation")
        return None
    if init.pytorch_layout not in PYTORCH_LAYOUTS:
        raise ValueError(f"config.init.pytorch_layout={init.pytorch_layout!r} is not one of {PYTORCH_LAYOUTS}")
    path = resolve_pretrained(pytorch)
    if not epath.Path(path).exists():
        raise _missing_file_error(pytorch, path)
    return path


def initialise_weights(model: nnx.Module, init: Any) -> ConversionReport | None:
    """Applies `init` (a ConfigDict with `checkpoint`, `pytorch`, `pytorch_layout`) to `model` in place.

    `init` is validated first (`check_init`), so a missing file raises before the model is touched.
    Returns the `ConversionReport` of a PyTorch load, in the network's PyTorch keys: `loaded`,
    `missing` (kept at their fresh initialisation: e.g. the task head and the attention weights
    after an ImageNet file) and `unexpected` (file keys skipped); None otherwise.
    """
    path = check_init(init)
    report = None
    if init.checkpoint:
        state = nnx.state(model)
        restored = Checkpointer(init.checkpoint, keep_best=0).restore("latest", model=abstract_like(state))
        nnx.update(model, restored["model"])
        logger.info("initialised from orbax checkpoint %s (step %d)", init.checkpoint, restored["step"])
    elif path:
        layout = init.pytorch_layout
        state_dict = read_state_dict(path)
        if layout == "imagenet":
            report = _load_imagenet(model, state_dict)
        elif layout == "snapshot":
            report = _load_snapshot(model, state_dict)
        else:
            report = load_network(model, state_dict)
        logger.info("initialised from %s (%s layout): %s", path, layout, report)
        _log_list("skipped file keys", report.unexpected)
        _log_list("kept their fresh initialisation", report.missing)
    jax.block_until_ready(nnx.state(model))
    return report
