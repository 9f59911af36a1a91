"""Whole networks against the PyTorch re-creations of the reference code: random weights moved by
`from_torch`, eval mode, max abs difference <= 1e-4 (fp32).

JAX runs these forward passes eagerly: for one call of a big unrolled network, op-by-op execution
(which caches the repeated block shapes) is several times faster on 2 CPU cores than compiling the
whole graph.
"""
import numpy as np
import pytest
import torch

import jax.numpy as jnp

from psa_jax.convert import from_torch
from psa_jax.models import mscale_ocr, pose_hrnet, pose_resnet, seg_hrnet
from psa_jax.torch_reference import randomize_
from psa_jax.torch_reference.hrnet_pose import PoseHighResolutionNet
from psa_jax.torch_reference.hrnet_seg import HRNetV2Seg, HRNetV2Trunk, MscaleOCR, OCRBlock
from psa_jax.torch_reference.resnet_pose import PoseResNet

TOL = 1e-4


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(1)


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def _images(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g)


def _load(model, ref, **kw):
    report = from_torch(model, {"module." + k: v for k, v in ref.state_dict().items()}, **kw)
    assert not report.missing and not report.unexpected, report
    model.eval()
    return model


def _close(ours, theirs):
    ours, theirs = np.asarray(ours), _nhwc(theirs)
    assert ours.shape == theirs.shape
    err = float(np.max(np.abs(ours - theirs)))
    assert err <= TOL, f"max abs difference {err:.2e} (output scale {np.max(np.abs(theirs)):.2e})"


def test_pose_hrnet_w32_psa_p():
    ref = randomize_(PoseHighResolutionNet(width=32, attention="psa_p"), seed=1).eval()
    x = _images(2, 64, 64)
    model = _load(pose_hrnet(32, attention="psa_p"), ref)
    with torch.no_grad():
        expected = ref(x)
    _close(model(jnp.asarray(_nhwc(x))), expected)


def test_pose_hrnet_all_residual_placement():
    ref = randomize_(PoseHighResolutionNet(width=18, attention="psa_s", attention_placement="all_residual"),
                     seed=2).eval()
    x = _images(1, 64, 96)
    model = _load(pose_hrnet(18, attention="psa_s", placement="all_residual"), ref)
    with torch.no_grad():
        expected = ref(x)
    _close(model(jnp.asarray(_nhwc(x))), expected)


def test_plain_hrnetv2_w48_seg_head():
    ref = randomize_(HRNetV2Seg(num_classes=19, width=48, align_corners=True), seed=3).eval()
    x = _images(1, 64, 96)
    model = _load(seg_hrnet(48, align_corners=True), ref)
    with torch.no_grad():
        expected = ref(x)
    _close(model(jnp.asarray(_nhwc(x))), expected)


class _NvidiaOCRNet(torch.nn.Module):
    """NVIDIA `ocrnet.OCRNet` (hrnetv2 trunk + OCR_block), returning 1/4-resolution (cls, aux)."""

    def __init__(self, attention):
        super().__init__()
        self.backbone = HRNetV2Trunk(width=48, attention=attention)
        self.ocr = OCRBlock(self.backbone.high_level_ch, 19)

    def forward(self, x):
        cls, aux, _ = self.ocr(self.backbone(x)[2])
        return cls, aux


def test_hrnetv2_w48_ocr_psa_s():
    ref = randomize_(_NvidiaOCRNet("psa_s"), seed=4).eval()
    x = _images(1, 64, 64)
    model = _load(seg_hrnet(48, ocr=True, attention="psa_s"), ref)
    with torch.no_grad():
        cls, aux = ref(x)
    ours_cls, ours_aux, _ = model.ocr(model.features(jnp.asarray(_nhwc(x))))
    _close(ours_cls, cls)
    _close(ours_aux, aux)
    _close(model(jnp.asarray(_nhwc(x))), cls)  # eval mode returns the main logits only


def test_mscale_ocr_single_and_three_scales():
    ref = randomize_(MscaleOCR(num_classes=19, attention="psa_p", width=48), seed=5).eval()
    # Sharper scale attention than the randomiser gives, so the merge weights matter.
    with torch.no_grad():
        ref.scale_attn.conv2.weight.mul_(40.0)
    x = _images(1, 64, 64)
    model = _load(mscale_ocr(48, attention="psa_p"), ref)
    xj = jnp.asarray(_nhwc(x))
    with torch.no_grad():
        single = ref.single_scale_forward(x)
        multi = ref.nscale_forward(x, [0.5, 1.0, 2.0])
    ours = model.single_scale(xj)
    _close(ours["cls"], single["cls_out"])
    _close(ours["aux"], single["aux_out"])
    _close(ours["attn"], single["logit_attn"])
    _close(model.nscale(xj, (0.5, 1.0, 2.0)), multi["pred"])


def test_simple_baseline_resnet50_psa_p():
    ref = randomize_(PoseResNet(depth=50, attention="psa_p"), seed=6).eval()
    x = _images(1, 64, 64)
    model = _load(pose_resnet(50, attention="psa_p"), ref)
    with torch.no_grad():
        expected = ref(x)
    _close(model(jnp.asarray(_nhwc(x))), expected)
