"""Reading PyTorch checkpoint files and loading them into whole psa_jax networks.

The key layouts understood (`LAYOUTS`) are those of the public code that writes the checkpoints;
`psa_jax.torch_reference` re-creates each network with exactly these keys for the tests:

| layout | where from | loads into |
| --- | --- | --- |
| 'network' | official PSA / NVIDIA semantic-segmentation (`module.backbone.*`, `module.ocr.*`, `module.scale_attn.*`), HRNet pose (`conv1.*`, ..., `final_layer.*`, PSA under `...deattn`), HRNet-Seg HRNetV2 (`last_layer.*`) | the network built with the same settings (`mscale_ocr`, `seg_hrnet(ocr=True)`, `pose_hrnet`, `seg_hrnet`) |
| 'imagenet' | ImageNet HRNet classifiers (HRNet-Image-Classification, timm `hrnet_w*`) | the `backbone` of any HRNet network; the classification head (`incre_modules`, `downsamp_modules`, `final_layer`, `classifier`) and, for pose, the extra stage-4 fuse layers are skipped and listed; attention weights, absent from ImageNet checkpoints, keep their initialisation |

A `.pth` file may hold the state_dict itself or a dict with `state_dict` / `model` (NVIDIA saves
`{'epoch', 'arch', 'state_dict', 'optimizer', 'mean_iu', ...}`); the DDP prefix `module.` is removed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

from flax import nnx

from psa_jax.convert.from_torch import ConversionReport, from_torch, normalize_keys

__all__ = ["read_state_dict", "load_network", "load_imagenet_backbone", "load_pytorch", "LAYOUTS", "IMAGENET_HEAD"]

LAYOUTS = ("network", "imagenet")
IMAGENET_HEAD = ("incre_modules.*", "downsamp_modules.*", "final_layer.*", "classifier.*")


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading .pth files needs PyTorch: `pip install torch` (CPU build is enough, e.g. "
                          "`pip install torch==2.13.0` on this project's Python 3.11 machines), or convert the "
                          "file to .npz on a machine that has it") from err
    return torch


def read_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, Any]:
    """Loads a PyTorch checkpoint (or a `.npz` of arrays) and returns its flat state_dict.

    Args:
      path: `.pth` / `.pt` / `.bin` (torch) or `.npz`.
      allow_pickle: load full pickles (`weights_only=False`). Official NVIDIA/PSA checkpoints store
        the command line and optimizer next to the weights; they load with `weights_only=True` in
        current torch, but older files may need this. Only enable it for files you trust.
    """
    path = os.fspath(path)
    from etils import epath  # local or bucket paths (gs://...): read through epath

    file = epath.Path(path)
    if not file.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.endswith(".npz"):
        import numpy as np
        with file.open("rb") as raw, np.load(io.BytesIO(raw.read())) as f:
            return {k: f[k] for k in f.files}
    torch = _torch()
    try:
        with file.open("rb") as raw:
            obj = torch.load(io.BytesIO(raw.read()), map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:
        hint = "" if allow_pickle else (" If you trust the file, retry with allow_pickle=True "
                                        "(`--allow_pickle` on the command line).")
        raise ValueError(f"could not read {path} as a PyTorch checkpoint: {type(err).__name__}: {err}.{hint}") from err
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path} holds no state_dict (found {type(obj).__name__})")
    return normalize_keys(dict(obj), strip_prefixes=("module.", "model."))


def load_network(model: nnx.Module, state_dict: Mapping[str, Any]) -> ConversionReport:
    """A whole network: every weight must be present and used (strict)."""
    return from_torch(model, state_dict)


def load_imagenet_backbone(model: nnx.Module, state_dict: Mapping[str, Any]) -> ConversionReport:
    """ImageNet HRNet classifier weights into `model.backbone` (see the module doc)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(f"{type(model).__name__} has no HRNet `backbone` to initialise from ImageNet weights")
    # The pose backbone's last module fuses into branch 0 only; the classifier's fuses into all four.
    extra_fuse = tuple(f"stage4.{m}.fuse_layers.{i}.*" for m in range(4) for i in (1, 2, 3))
    return from_torch(backbone, state_dict, allow_missing=("*deattn.*",),
                      ignore_unexpected=IMAGENET_HEAD + extra_fuse)


def load_pytorch(model: nnx.Module, path: str | os.PathLike, layout: str = "network", *,
                 allow_pickle: bool = False) -> ConversionReport:
    """`read_state_dict` + `load_network` / `load_imagenet_backbone`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    sd = read_state_dict(path, allow_pickle=allow_pickle)
    return load_network(model, sd) if layout == "network" else load_imagenet_backbone(model, sd)
