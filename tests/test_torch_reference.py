"""Self-checks of the PyTorch reference networks in psa_jax/torch_reference (parity references).

Exact numbers come from independent sources: published parameter totals (the READMEs of
leoxiaobin/deep-high-resolution-net.pytorch, HRNet-Semantic-Segmentation and
HRNet-Image-Classification, matched by an independent count of the conv and BN parameters), the
closed-form PSA block sizes (``psa.psa_param_count``, from the layer shapes) and the key names /
shapes of the official PSA checkpoints (as NVIDIA/semantic-segmentation + DeLightCMU/PSA save
them; see ``psa_jax/torch_reference/hrnet_seg.py``).
"""
from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from psa_jax.torch_reference import count_params, randomize_  # noqa: E402
from psa_jax.torch_reference import hrnet_cls, hrnet_pose, hrnet_seg, psa, resnet_pose  # noqa: E402

W48_PSA_BLOCKS = {48: 32, 96: 32, 192: 28, 384: 12}  # 104 stage 2-4 BasicBlocks of HRNet-W48


def _meta(factory):
    """Shape-only build (no memory, no init): enough for key names, shapes and param counts."""
    with torch.device("meta"):
        return factory()


def _psa_modules(net):
    return [(n, m) for n, m in net.named_modules() if isinstance(m, (psa.PSA_p, psa.PSA_s))]


def _sd_shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a 2-core machine (and under xdist -n 2) a second OpenMP thread
    spin-waits against other processes and makes these small forwards many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def seg_w48_meta():
    return _meta(lambda: hrnet_seg.HRNetV2Seg(num_classes=19, width=48))


@pytest.fixture(scope="module")
def mscale_psa_s_meta():
    return _meta(lambda: hrnet_seg.MscaleOCR(num_classes=19, attention="psa_s"))


@pytest.fixture(scope="module")
def mscale_psa_p_random():
    return randomize_(hrnet_seg.MscaleOCR(num_classes=19, attention="psa_p"), seed=3).eval()


# ----------------------------------------------------------------------------- PSA block

@pytest.mark.parametrize("c", [16, 48, 64, 96, 192, 384])
def test_psa_block_param_counts(c):
    assert count_params(psa.PSA_p(c, c)) == 2 * c * c + c
    expected_s = Fraction(c) + Fraction(3, 2) * c * c + Fraction(c * c, 16) + Fraction(c * c, 8) \
        + Fraction(3 * c, 8) + c
    assert count_params(psa.PSA_s(c, c)) == expected_s
    assert psa.psa_param_count("psa_s", c) == expected_s
    assert psa.psa_param_count("psa_p", c) == 2 * c * c + c


def test_psa_state_dict_keys_are_the_official_ones():
    assert _sd_shapes(psa.PSA_p(48, 48)) == {
        "conv_q_right.weight": (1, 48, 1, 1), "conv_v_right.weight": (24, 48, 1, 1),
        "conv_up.weight": (48, 24, 1, 1), "conv_q_left.weight": (24, 48, 1, 1),
        "conv_v_left.weight": (24, 48, 1, 1)}
    assert list(psa.PSA_s(48, 48).state_dict()) == [
        "conv_q_right.weight", "conv_v_right.weight", "conv_up.0.weight", "conv_up.0.bias",
        "conv_up.1.weight", "conv_up.1.bias", "conv_up.3.weight", "conv_up.3.bias",
        "conv_q_left.weight", "conv_v_left.weight"]
    with pytest.raises(ValueError, match="unknown attention kind"):
        psa.make_psa("psa_x", 8)


@pytest.mark.parametrize("variant,cls", [("psa_p", psa.PSA_p), ("psa_s", psa.PSA_s)])
def test_psa_torch_matches_numpy_restatement_of_official_code(variant, cls):
    block = randomize_(cls(16, 16), seed=11, conv_gain=3.0).double().eval()
    x = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        y = block(x).numpy()
    state = {k: v.numpy() for k, v in block.state_dict().items()}
    np.testing.assert_allclose(y, psa.official_psa_numpy(x.numpy(), state, variant), rtol=1e-10, atol=1e-12)
    # Non-trivial weights: the output is not the near-identity / 0.25x of the official init.
    base = x.numpy() if variant == "psa_p" else 0.25 * x.numpy()
    assert np.abs(y - base).max() > 0.05 * np.abs(base).max()


def _paper_psa_by_loops(x, wts, layout):
    """Scalar-loop restatement of the paper formulas for one image (independent of einsum)."""
    c, h, w = x.shape
    ic = c // 2
    pos = list(itertools.product(range(h), range(w)))

    def sig(v):
        return 1.0 / (1.0 + np.exp(-v))

    def a_ch(t):
        q = np.array([sum(wts["ch_wq"][0, k] * t[k, i, j] for k in range(c)) for i, j in pos])
        q = np.exp(q - q.max()) / np.exp(q - q.max()).sum()
        z = [sum(q[n] * sum(wts["ch_wv"][o, k] * t[k, i, j] for k in range(c))
                 for n, (i, j) in enumerate(pos)) for o in range(ic)]
        u = np.array([sum(wts["ch_wz"][oc, o] * z[o] for o in range(ic)) for oc in range(c)])
        u = (u - u.mean()) / np.sqrt(u.var() + 1e-5) * wts["ch_ln_weight"] + wts["ch_ln_bias"]
        return sig(u)

    def a_sp(t):
        g = np.array([np.mean([sum(wts["sp_wq"][o, k] * t[k, i, j] for k in range(c)) for i, j in pos])
                      for o in range(ic)])
        g = np.exp(g - g.max()) / np.exp(g - g.max()).sum()
        out = np.zeros((h, w))
        for i, j in pos:
            out[i, j] = sig(sum(g[o] * sum(wts["sp_wv"][o, k] * t[k, i, j] for k in range(c))
                                for o in range(ic)))
        return out

    if layout == "parallel":
        return x * a_ch(x)[:, None, None] + x * a_sp(x)[None]
    x1 = x * a_ch(x)[:, None, None]
    return x1 * a_sp(x1)[None]


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_paper_psa_numpy_matches_scalar_loops(layout):
    wts = psa.random_paper_weights(6, seed=5, scale=2.0)
    x = np.random.default_rng(1).normal(size=(2, 6, 3, 4))
    y = psa.paper_psa_numpy(x, wts, layout)
    for b in range(2):
        np.testing.assert_allclose(y[b], _paper_psa_by_loops(x[b], wts, layout), rtol=1e-10, atol=1e-12)


def test_paper_psa_numpy_zero_weights_and_bad_layout():
    wts = {k: np.zeros_like(v) for k, v in psa.random_paper_weights(8).items()}
    wts["ch_ln_weight"] = np.ones(8)
    x = np.random.default_rng(2).normal(size=(1, 8, 3, 3))
    # Ach = sigmoid(0) = 0.5, Asp = sigmoid(0) = 0.5.
    np.testing.assert_allclose(psa.paper_psa_numpy(x, wts, "parallel"), x, atol=1e-12)
    np.testing.assert_allclose(psa.paper_psa_numpy(x, wts, "sequential"), 0.25 * x, atol=1e-12)
    with pytest.raises(ValueError, match="layout"):
        psa.paper_psa_numpy(x, wts, "diagonal")


# ----------------------------------------------------------------------------- pose HRNet

def test_pose_hrnet_param_counts_are_the_published_ones():
    assert hrnet_pose.self_check() == {32: 28_536_113, 48: 63_595_745}


@pytest.mark.parametrize("kind,published_m", [("psa_p", 2.83), ("psa_s", 2.40)])
def test_pose_w32_psa_overhead(kind, published_m):
    net = _meta(lambda: hrnet_pose.PoseHighResolutionNet(width=32, attention=kind))
    blocks = _psa_modules(net)
    assert len(blocks) == 104 and all(n.endswith(".deattn") for n, _ in blocks)
    per_c = {32: 32, 64: 32, 128: 28, 256: 12}
    extra = sum(k * psa.psa_param_count(kind, c) for c, k in per_c.items())
    assert count_params(net) == 28_536_113 + extra
    assert round(extra / 1e6, 2) == published_m  # the overhead rounded to 0.01 M params
    keys = _sd_shapes(net)
    assert not any(k.startswith("layer1.") and "deattn" in k for k in keys)
    assert keys["stage2.0.branches.0.0.deattn.conv_q_right.weight"] == (1, 32, 1, 1)
    assert keys["stage4.2.branches.3.3.deattn.conv_v_left.weight"] == (128, 256, 1, 1)
    # last stage-4 module keeps only the high-resolution fuse row
    assert {k.split(".")[3] for k in keys if k.startswith("stage4.2.fuse_layers.")} == {"0"}
    assert keys["stage4.2.fuse_layers.0.3.0.weight"] == (32, 256, 1, 1)
    assert keys["final_layer.weight"] == (17, 32, 1, 1) and keys["final_layer.bias"] == (17,)


def test_pose_all_residual_placement_adds_bottleneck_psa():
    net = _meta(lambda: hrnet_pose.PoseHighResolutionNet(
        width=32, attention="psa_p", attention_placement="all_residual"))
    names = [n for n, _ in _psa_modules(net)]
    assert len(names) == 108
    assert [n for n in names if n.startswith("layer1")] == [f"layer1.{i}.deattn" for i in range(4)]
    assert _sd_shapes(net)["layer1.0.deattn.conv_q_right.weight"] == (1, 64, 1, 1)
    assert count_params(net) == 28_536_113 + 32 * psa.psa_param_count("psa_p", 32) + \
        32 * psa.psa_param_count("psa_p", 64) + 28 * psa.psa_param_count("psa_p", 128) + \
        12 * psa.psa_param_count("psa_p", 256) + 4 * psa.psa_param_count("psa_p", 64)
    with pytest.raises(ValueError, match="attention_placement"):
        _meta(lambda: hrnet_pose.PoseHighResolutionNet(width=32, attention_placement="everywhere"))


def test_pose_forward_shapes():
    net = randomize_(hrnet_pose.PoseHighResolutionNet(width=32, attention="psa_s"), seed=1).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 17, 16, 16)
        assert net(torch.randn(2, 3, 96, 64)).shape == (2, 17, 24, 16)
        # Like pose_hrnet.py (fixed x2^k nearest upsampling), 64x48 does not fit: 48 / 32 = 1.5.
        with pytest.raises(ValueError, match="divisible by 32"):
            net(torch.randn(1, 3, 64, 48))


# ----------------------------------------------------------------------------- seg HRNet / MscaleOCR

def test_seg_hrnetv2_w48_params_and_shapes(seg_w48_meta):
    assert count_params(seg_w48_meta) == hrnet_seg.SEG_W48_PARAMS == 65_859_379
    keys = _sd_shapes(seg_w48_meta)
    assert keys["last_layer.0.weight"] == (720, 720, 1, 1) and keys["last_layer.0.bias"] == (720,)
    assert keys["last_layer.1.running_var"] == (720,)
    assert keys["last_layer.3.weight"] == (19, 720, 1, 1) and keys["last_layer.3.bias"] == (19,)
    assert keys["stage4.2.fuse_layers.3.2.0.1.weight"] == (384,)
    net = hrnet_seg.HRNetV2Seg(num_classes=19, width=48).eval()
    assert net.align_corners is True
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 19, 16, 16)
        assert net(torch.randn(1, 3, 40, 56)).shape == (1, 19, 10, 14)  # bilinear fuse: any size


def test_mscale_keys_match_official_checkpoint_layout(mscale_psa_s_meta):
    s = _sd_shapes(mscale_psa_s_meta)
    expected = {
        "backbone.conv1.weight": (64, 3, 3, 3), "backbone.bn2.num_batches_tracked": (),
        "backbone.layer1.3.conv3.weight": (256, 64, 1, 1),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer1.0.downsample.1.running_mean": (256,),
        "backbone.transition1.0.0.weight": (48, 256, 3, 3), "backbone.transition1.0.1.bias": (48,),
        "backbone.transition1.1.0.0.weight": (96, 256, 3, 3),
        "backbone.transition2.2.0.0.weight": (192, 96, 3, 3),
        "backbone.transition3.3.0.1.running_var": (384,),
        "backbone.stage2.0.branches.1.3.conv2.weight": (96, 96, 3, 3),
        "backbone.stage3.3.branches.2.0.deattn.conv_q_right.weight": (1, 192, 1, 1),
        "backbone.stage4.2.branches.0.0.deattn.conv_v_right.weight": (24, 48, 1, 1),
        "backbone.stage4.2.branches.3.3.deattn.conv_q_left.weight": (192, 384, 1, 1),
        "backbone.stage2.0.branches.0.0.deattn.conv_up.0.weight": (6, 24, 1, 1),
        "backbone.stage2.0.branches.0.0.deattn.conv_up.0.bias": (6,),
        "backbone.stage2.0.branches.0.0.deattn.conv_up.1.weight": (6, 1, 1),
        "backbone.stage2.0.branches.0.0.deattn.conv_up.1.bias": (6, 1, 1),
        "backbone.stage2.0.branches.0.0.deattn.conv_up.3.weight": (48, 6, 1, 1),
        "backbone.stage2.0.branches.0.0.deattn.conv_up.3.bias": (48,),
        "backbone.stage4.2.fuse_layers.0.3.0.weight": (48, 384, 1, 1),
        "backbone.stage4.2.fuse_layers.3.0.0.0.weight": (48, 48, 3, 3),
        "backbone.stage4.2.fuse_layers.3.0.2.0.weight": (384, 48, 3, 3),
        "backbone.stage4.2.fuse_layers.3.0.2.1.weight": (384,),
        "ocr.conv3x3_ocr.0.weight": (512, 720, 3, 3), "ocr.conv3x3_ocr.0.bias": (512,),
        "ocr.conv3x3_ocr.1.0.running_var": (512,),
        "ocr.ocr_distri_head.object_context_block.f_pixel.0.weight": (256, 512, 1, 1),
        "ocr.ocr_distri_head.object_context_block.f_pixel.2.weight": (256, 256, 1, 1),
        "ocr.ocr_distri_head.object_context_block.f_pixel.3.0.weight": (256,),
        "ocr.ocr_distri_head.object_context_block.f_object.1.0.bias": (256,),
        "ocr.ocr_distri_head.object_context_block.f_down.0.weight": (256, 512, 1, 1),
        "ocr.ocr_distri_head.object_context_block.f_up.0.weight": (512, 256, 1, 1),
        "ocr.ocr_distri_head.object_context_block.f_up.1.0.running_mean": (512,),
        "ocr.ocr_distri_head.conv_bn_dropout.0.weight": (512, 1024, 1, 1),
        "ocr.ocr_distri_head.conv_bn_dropout.1.0.weight": (512,),
        "ocr.cls_head.weight": (19, 512, 1, 1), "ocr.cls_head.bias": (19,),
        "ocr.aux_head.0.weight": (720, 720, 1, 1), "ocr.aux_head.0.bias": (720,),
        "ocr.aux_head.1.0.weight": (720,), "ocr.aux_head.2.weight": (19, 720, 1, 1),
        "ocr.aux_head.2.bias": (19,),
        "scale_attn.conv0.weight": (256, 512, 3, 3), "scale_attn.bn0.running_var": (256,),
        "scale_attn.conv1.weight": (256, 256, 3, 3), "scale_attn.bn1.weight": (256,),
        "scale_attn.conv2.weight": (1, 256, 1, 1),
    }
    for k, shape in expected.items():
        assert s.get(k) == shape, k
    assert {k.split(".")[0] for k in s} == {"backbone", "ocr", "scale_attn"}
    assert not any(k.startswith("scale_attn.conv") and k.endswith(".bias") for k in s)
    p = _sd_shapes(_meta(lambda: hrnet_seg.MscaleOCR(num_classes=19, attention="psa_p")))
    assert p["backbone.stage2.0.branches.0.0.deattn.conv_up.weight"] == (48, 24, 1, 1)
    assert set(p) - set(s) == {k for k in p if k.endswith("deattn.conv_up.weight")}
    assert {k for k in set(s) - set(p)} == {k for k in s if ".deattn.conv_up." in k}


@pytest.mark.parametrize("kind,published_m", [("psa_s", 5.39), ("psa_p", 6.36)])
def test_mscale_psa_blocks_and_param_bookkeeping(kind, published_m, seg_w48_meta):
    net = _meta(lambda: hrnet_seg.MscaleOCR(num_classes=19, attention=kind))
    blocks = _psa_modules(net)
    cls = psa.PSA_s if kind == "psa_s" else psa.PSA_p
    assert all(isinstance(m, cls) and n.startswith("backbone.stage") and n.endswith(".deattn")
               for n, m in blocks)
    per_c = {}
    for _, m in blocks:
        per_c[m.planes] = per_c.get(m.planes, 0) + 1
    assert per_c == W48_PSA_BLOCKS
    extra = sum(count_params(m) for _, m in blocks)
    assert extra == sum(k * psa.psa_param_count(kind, c) for c, k in W48_PSA_BLOCKS.items())
    # Rounded: +5.39 M (PSA_s) / +6.36 M (PSA_p); the exact sums are 5,384,544 / 6,355,200.
    assert abs(extra / 1e6 - published_m) < 0.006
    # The trunk without PSA is exactly HRNet-Seg's W48 without its head.
    assert count_params(net.backbone) - extra == \
        count_params(seg_w48_meta) - count_params(seg_w48_meta.last_layer)


def test_resize_x_follows_nvidia_resizex():
    x = torch.randn(1, 2, 9, 13)
    for s in (0.5, 2.0, 1.5):
        y = hrnet_seg.resize_x(x, s)
        size = (int(9 * s), int(13 * s))
        assert y.shape[2:] == size
        torch.testing.assert_close(y, torch.nn.functional.interpolate(
            x, size=size, mode="bilinear", align_corners=False))


def _rs(t, n):
    return torch.nn.functional.interpolate(t, size=(n, n), mode="bilinear", align_corners=False)


def test_mscale_single_and_nscale_forward(mscale_psa_p_random):
    net = mscale_psa_p_random
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        single = net.single_scale_forward(x)
        assert {k: tuple(v.shape) for k, v in single.items()} == {
            "cls_out": (1, 19, 32, 32), "aux_out": (1, 19, 32, 32), "logit_attn": (1, 1, 32, 32)}
        assert 0 < single["logit_attn"].min() and single["logit_attn"].max() < 1
        net.n_scales = [1.0]  # eval dispatch -> nscale_forward; one scale = the plain prediction
        try:
            torch.testing.assert_close(net(x)["pred"], single["cls_out"], rtol=0, atol=0)
        finally:
            net.n_scales = None

        out = net.nscale_forward(x, [0.5, 1.0, 2.0], return_aux=True)
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "pred_2.0x": (1, 19, 64, 64), "pred_1.0x": (1, 19, 32, 32), "attn_1.0x": (1, 1, 32, 32),
            "pred_0.5x": (1, 19, 16, 16), "attn_0.5x": (1, 1, 16, 16), "pred": (1, 19, 32, 32),
            "aux": (1, 19, 32, 32)}
        torch.testing.assert_close(out["pred_1.0x"], single["cls_out"])
        torch.testing.assert_close(out["attn_1.0x"], single["logit_attn"])
        # Independent restatement of the hierarchical merge (NVIDIA nscale_forward docstring):
        # p = a1 * p1 + (1 - a1) * down(p2);  p = up(a05 * p05) + (1 - up(a05)) * p
        a1, a05 = out["attn_1.0x"], out["attn_0.5x"]
        p = a1 * out["pred_1.0x"] + (1 - a1) * _rs(out["pred_2.0x"], 32)
        p = _rs(a05 * out["pred_0.5x"], 32) + (1 - _rs(a05, 32)) * p
        torch.testing.assert_close(out["pred"], p, rtol=1e-5, atol=1e-5)
        assert (out["pred"] - out["pred_1.0x"]).abs().max() > 1e-3  # the merge does something
        with pytest.raises(ValueError, match="1.0"):
            net.nscale_forward(x, [0.5, 2.0])


def test_mscale_two_scale_training_forward(mscale_psa_p_random):
    net = mscale_psa_p_random
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        out = net.two_scale_forward(x)
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "pred": (2, 19, 32, 32), "aux": (2, 19, 32, 32), "pred_05x": (2, 19, 16, 16),
            "pred_05x_up": (2, 19, 32, 32), "pred_10x": (2, 19, 32, 32), "attn_05x": (2, 1, 16, 16)}
        lo = net.single_scale_forward(_rs(x, 16))
        hi = net.single_scale_forward(x)
        a = _rs(lo["logit_attn"], 32)
        torch.testing.assert_close(out["pred"], _rs(lo["logit_attn"] * lo["cls_out"], 32) + (1 - a) * hi["cls_out"])
        torch.testing.assert_close(out["aux"], _rs(lo["logit_attn"] * lo["aux_out"], 32) + (1 - a) * hi["aux_out"])
        torch.testing.assert_close(out["pred_05x_up"], _rs(lo["cls_out"], 32))
        torch.testing.assert_close(out["attn_05x"], lo["logit_attn"])

    calls = []

    def criterion(logits, gts, do_rmi):
        calls.append(do_rmi)
        return logits.mean()

    loss = hrnet_seg.two_scale_loss(out, None, criterion)
    expected = 0.4 * out["aux"].mean() + out["pred"].mean() + \
        0.05 * out["pred_05x_up"].mean() + 0.05 * out["pred_10x"].mean()
    torch.testing.assert_close(loss, expected)
    assert calls == [False, True, False, False]

    net.train()
    try:
        with torch.no_grad():
            train_out = net(x)  # training dispatch: two-scale forward, batch-stat BN, dropout on
    finally:
        net.eval()
    assert set(train_out) == set(out) and train_out["pred"].shape == (2, 19, 32, 32)


def test_hrnet_seg_ocr_keys_differ_from_nvidia_only_where_documented(mscale_psa_s_meta):
    net = _meta(lambda: hrnet_seg.HRNetOCRSeg(num_classes=19, width=48))
    assert count_params(net) == 70_372_678  # recipes A2: "~70.37M"
    keys = _sd_shapes(net)
    assert keys["conv3x3_ocr.1.running_var"] == (512,)
    assert keys["aux_head.1.weight"] == (720,) and keys["aux_head.3.weight"] == (19, 720, 1, 1)
    assert "aux_head.2.weight" not in keys

    def to_nvidia(k: str) -> str:
        if k.startswith(("conv3x3_ocr.", "ocr_gather_head.", "ocr_distri_head.", "cls_head.", "aux_head.")):
            k = k.replace("conv3x3_ocr.1.", "conv3x3_ocr.1.0.").replace("aux_head.1.", "aux_head.1.0.")
            return "ocr." + k.replace("aux_head.3.", "aux_head.2.")
        return "backbone." + k

    nvidia = {k: v for k, v in _sd_shapes(mscale_psa_s_meta).items()
              if ".deattn." not in k and not k.startswith("scale_attn.")}
    assert {to_nvidia(k): v for k, v in keys.items()} == nvidia
    small = randomize_(hrnet_seg.HRNetOCRSeg(num_classes=5, width=18, ocr_mid_channels=64,
                                             ocr_key_channels=32), seed=2).eval()
    with torch.no_grad():
        aux, cls = small(torch.randn(1, 3, 64, 64))
    assert aux.shape == cls.shape == (1, 5, 16, 16)


# ----------------------------------------------------------------------------- cls / resnet

def test_cls_layout_and_backbone_key_relations(seg_w48_meta):
    net = _meta(lambda: hrnet_cls.HRNetCls(width=48))
    # HRNet-Image-Classification README: W18-C 21.3M, W32-C 41.2M, W48-C 77.5M
    assert round(count_params(net) / 1e6, 1) == 77.5
    for width, published in ((18, 21.3), (32, 41.2)):
        assert round(count_params(_meta(lambda: hrnet_cls.HRNetCls(width=width))) / 1e6, 1) == published
    keys = _sd_shapes(net)
    assert keys["incre_modules.0.0.conv1.weight"] == (32, 48, 1, 1)
    assert keys["incre_modules.3.0.downsample.0.weight"] == (1024, 384, 1, 1)
    assert keys["downsamp_modules.2.0.weight"] == (1024, 512, 3, 3)
    assert keys["downsamp_modules.2.0.bias"] == (1024,)
    assert keys["final_layer.0.weight"] == (2048, 1024, 1, 1)
    assert keys["final_layer.1.running_var"] == (2048,)
    assert keys["classifier.weight"] == (1000, 2048) and keys["classifier.bias"] == (1000,)
    backbone = {k: tuple(v.shape) for k, v in hrnet_cls.backbone_state_dict(net.state_dict()).items()}
    assert backbone == {k: v for k, v in _sd_shapes(seg_w48_meta).items() if not k.startswith("last_layer.")}
    pose = {k: v for k, v in _sd_shapes(_meta(lambda: hrnet_pose.PoseHighResolutionNet(width=48))).items()
            if not k.startswith("final_layer.")}
    assert pose.items() < backbone.items()
    assert {k.split(".")[3] for k in set(backbone) - set(pose)} == {"1", "2", "3"}
    assert all(k.startswith("stage4.2.fuse_layers.") for k in set(backbone) - set(pose))
    small = hrnet_cls.HRNetCls(width=18, num_classes=10).eval()
    with torch.no_grad():
        assert small(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_resnet_pose_params_keys_and_shapes():
    net = _meta(lambda: resnet_pose.PoseResNet(depth=50))
    assert count_params(net) == resnet_pose.POSE_RESNET50_PARAMS == 33_999_697
    keys = _sd_shapes(net)
    assert keys["deconv_layers.0.weight"] == (2048, 256, 4, 4)
    assert keys["deconv_layers.6.weight"] == (256, 256, 4, 4)
    assert keys["deconv_layers.7.running_mean"] == (256,)
    assert "deconv_layers.0.bias" not in keys
    assert keys["final_layer.weight"] == (17, 256, 1, 1) and keys["final_layer.bias"] == (17,)
    assert keys["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    net = randomize_(resnet_pose.PoseResNet(depth=50, attention="psa_p"), seed=4).eval()
    blocks = _psa_modules(net)
    assert len(blocks) == 16 and blocks[0][0] == "layer1.0.deattn"
    assert _sd_shapes(net)["layer4.2.deattn.conv_up.weight"] == (512, 256, 1, 1)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 96, 64)).shape == (1, 17, 24, 16)


# ----------------------------------------------------------------------------- randomize_

def test_randomize_is_seeded_and_sensible():
    make = lambda: hrnet_pose.PoseHighResolutionNet(width=18, attention="psa_s")  # noqa: E731
    init = make().state_dict()
    a = randomize_(make(), seed=5).state_dict()
    b = randomize_(make(), seed=5).state_dict()
    c = randomize_(make(), seed=6).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
        if k.endswith("num_batches_tracked"):
            assert torch.equal(a[k], init[k])
            continue
        assert not torch.equal(a[k], c[k]), k
        assert not torch.equal(a[k], init[k]), k
        if k.endswith("running_var"):
            assert a[k].min() > 0
    net = make()
    net.load_state_dict(a)
    with torch.no_grad():
        y = net.eval()(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(y).all() and 1e-2 < y.std() < 1e3
