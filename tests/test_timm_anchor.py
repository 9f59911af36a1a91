"""HRNet anchored on a package written elsewhere: timm's `hrnet_*` ImageNet classifiers.

The PyTorch modules in `psa_jax.torch_reference` were written in this project from notes, so the
other parity tests only check psa_jax against a re-creation written by the same hands. Here the
reference is timm (`timm/models/hrnet.py`, its own port of HRNet-Image-Classification), with random
weights (nothing is downloaded) and random BatchNorm running statistics, in eval mode:

* timm's ImageNet state_dict, saved as a .pth, goes through the converter's 'imagenet' layout into
  our Flax HRNet trunk; every backbone key must be consumed and only timm's classification head
  left over; our four stage-4 branch outputs (NHWC) must equal timm's raw stage-4 outputs (NCHW,
  `features_only=True, feature_location=''`);
* the re-creation `psa_jax.torch_reference.hrnet_cls.HRNetCls` must load timm's state_dict strictly
  (same keys, same shapes) and give the same stage-4 features and logits.

Tolerance: max |ours - timm| <= 1e-4 x max |timm| per output (fp32).
"""
import glob
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from psa_jax.convert.pytorch_checkpoints import IMAGENET_HEAD, load_pytorch
from psa_jax.convert.torch_names import torch_parameter_map
from psa_jax.models import pose_hrnet, seg_hrnet
from psa_jax.models.hrnet import HRNetBackbone, hrnet_spec
from psa_jax.models.options import model_options
from psa_jax.torch_reference import randomize_
from psa_jax.torch_reference.hrnet_cls import HEAD_PREFIXES, HRNetCls

RTOL = 1e-4
HEAD = tuple(p.rstrip("*") for p in IMAGENET_HEAD)  # the converter's head prefixes


def _import_timm():
    """`import timm`, also where torchvision's compiled ops do not fit the installed torch.

    PyPI's torchvision wheels are built against PyPI's CUDA torch; next to the CPU torch that this
    project pins, its `_C` extension does not load, and `import torchvision` then stops at two
    unconditional fake-kernel registrations (`torchvision::nms`, `qnms`: "operator ... does not
    exist"). timm needs only torchvision's Python parts, so the two schemas are declared here in
    that case (and only then: a torchvision whose `_C` loads defines them itself).
    """
    tv = importlib.util.find_spec("torchvision")
    libs = glob.glob(os.path.join(os.path.dirname(tv.origin), "_C*.so")) if tv and tv.origin else []
    try:
        for lib in libs:
            torch.ops.load_library(lib)
    except OSError:
        if not hasattr(torch.ops.torchvision, "nms"):
            frag = torch.library.Library("torchvision", "FRAGMENT")
            frag.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            frag.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _import_timm.fragment = frag  # the schemas live as long as the library object
    import timm
    return timm


timm = _import_timm()


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(1)


def _timm_classifier(name: str, seed: int) -> torch.nn.Module:
    # pretrained=False: timm's own init, then every weight and BN statistic redrawn (seeded).
    return randomize_(timm.create_model(name, pretrained=False), seed=seed).eval()


def _timm_stage4(name: str, state: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """timm's raw stage-4 branch outputs: the features model without the `incre` head."""
    feats = timm.create_model(name, pretrained=False, features_only=True, feature_location="", out_indices=(1, 2, 3, 4))
    result = feats.load_state_dict(state, strict=False)
    assert not result.missing_keys
    assert result.unexpected_keys and all(k.startswith(HEAD) for k in result.unexpected_keys)
    with torch.no_grad():
        return feats.eval()(x)


def _images(b, h, w, seed=0):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def _close(ours, theirs: torch.Tensor, what: str) -> float:
    ours, theirs = np.asarray(ours), (_nhwc(theirs) if theirs.ndim == 4 else theirs.detach().numpy())
    assert ours.shape == theirs.shape, f"{what}: {ours.shape} vs timm {theirs.shape}"
    scale = float(np.max(np.abs(theirs)))
    err = float(np.max(np.abs(ours - theirs)))
    assert scale > 0.0 and err <= RTOL * scale, f"{what}: max abs difference {err:.2e} (timm scale {scale:.2e})"
    return err / scale


class _ImagenetHRNet(nnx.Module):
    """Our HRNet trunk as an ImageNet classifier has it: nearest fuse upsampling, all four stage-4
    outputs (the 'imagenet' layout loads `model.backbone`)."""

    def __init__(self, width):
        opts = model_options("none", "basic", None, jnp.float32)
        self.backbone = HRNetBackbone(hrnet_spec(width), multi_scale_output=True, upsample="nearest",
                                      opts=opts, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def w18_small(tmp_path_factory):
    """timm `hrnet_w18_small_v2` (= our 'w18_small': HRNet-W18-Small-v2), its .pth, input, stage 4."""
    name = "hrnet_w18_small_v2"
    net = _timm_classifier(name, seed=11)
    state = net.state_dict()
    path = tmp_path_factory.mktemp("timm") / f"{name}.pth"
    torch.save(state, path)
    x = _images(2, 64, 96)
    return state, path, x, _timm_stage4(name, state, x)


def test_timm_imagenet_checkpoint_loads_into_our_backbone_and_matches(w18_small):
    assert set(HEAD) == set(HEAD_PREFIXES)  # the converter skips exactly the re-creation's head
    state, path, x, expected = w18_small
    model = _ImagenetHRNet("w18_small")
    report = load_pytorch(model, path, "imagenet")
    # Every backbone key is filled from timm's file, and only timm's classification head is left.
    backbone_keys = set(torch_parameter_map(model.backbone))
    timm_backbone = {k for k in state if not k.startswith(HEAD) and not k.endswith("num_batches_tracked")}
    assert not report.missing
    assert set(report.loaded) == backbone_keys == timm_backbone
    assert report.unexpected and all(k.startswith(HEAD) for k in report.unexpected)
    assert set(report.unexpected) == {k for k in state if k.startswith(HEAD) and not k.endswith("num_batches_tracked")}
    model.eval()
    ours = model.backbone(jnp.asarray(_nhwc(x)))
    assert len(ours) == len(expected) == 4
    for i, (a, b) in enumerate(zip(ours, expected)):
        _close(a, b, f"stage-4 branch {i}")


def test_timm_imagenet_checkpoint_initialises_pose_and_segmentation_backbones(w18_small):
    _, path, x, expected = w18_small
    # Pose: nearest fuse upsampling, the last module fusing into branch 0 only (its other fuse rows
    # in the checkpoint are skipped), so the one output is timm's branch 0.
    pose = pose_hrnet("w18_small")
    report = load_pytorch(pose, path, "imagenet")
    assert not report.missing
    assert set(report.loaded) == set(torch_parameter_map(pose.backbone))
    assert all(k.startswith(HEAD) or k.startswith("stage4.1.fuse_layers.") for k in report.unexpected)
    pose.eval()
    (ours,) = pose.backbone(jnp.asarray(_nhwc(x)))
    _close(ours, expected[0], "pose backbone output")
    # Segmentation (bilinear fuse upsampling, so no forward comparison): every key is used.
    seg = seg_hrnet("w18_small")
    report = load_pytorch(seg, path, "imagenet")
    assert not report.missing and all(k.startswith(HEAD) for k in report.unexpected)
    assert set(report.loaded) == set(torch_parameter_map(seg.backbone))


def test_reference_hrnet_cls_is_timms_hrnet_w18():
    """The re-creation HRNetCls(18) against timm `hrnet_w18`: same keys and shapes (strict load),
    same stage-4 features and logits."""
    net = _timm_classifier("hrnet_w18", seed=12)
    state = net.state_dict()
    ref = HRNetCls(width=18, num_classes=1000)
    ref.load_state_dict(state, strict=True)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    ref.eval()
    x = _images(2, 64, 64, seed=1)
    expected = _timm_stage4("hrnet_w18", state, x)
    with torch.no_grad():
        ours = ref.forward_features(x)
        logits, timm_logits = ref(x), net(x)
    assert len(ours) == 4
    for i, (a, b) in enumerate(zip(ours, expected)):
        _close(_nhwc(a), b, f"HRNetCls stage-4 branch {i}")
    _close(logits.numpy(), timm_logits, "HRNetCls logits")
