"""Checkpoint files and layouts: ImageNet backbones, NVIDIA checkpoint dicts, bad files."""
import numpy as np
import pytest
import torch
from flax import nnx

from psa_jax.convert import ConversionError
from psa_jax.convert.from_torch import from_torch
from psa_jax.convert.pytorch_checkpoints import load_imagenet_backbone, load_pytorch, read_state_dict
from psa_jax.layers.psa import PSA_s
from psa_jax.models import pose_hrnet, seg_hrnet
from psa_jax.torch_reference import randomize_
from psa_jax.torch_reference.hrnet_cls import HEAD_PREFIXES, HRNetCls
from psa_jax.torch_reference.psa import make_psa


@pytest.fixture(scope="module")
def imagenet_w18():
    return randomize_(HRNetCls(width=18), seed=3).state_dict()


def test_imagenet_classifier_initialises_a_pose_backbone_with_psa(imagenet_w18):
    model = pose_hrnet(18, attention="psa_p")
    head_before = np.asarray(model.final_layer.kernel[...]).copy()
    report = load_imagenet_backbone(model, imagenet_w18)
    # The classifier head and the classifier's extra stage-4 fuse layers are skipped and listed.
    assert any(k.startswith("classifier.") for k in report.unexpected)
    assert any(k.startswith("incre_modules.") for k in report.unexpected)
    assert any(k.startswith("stage4.2.fuse_layers.3.") for k in report.unexpected)
    assert all(k.startswith(HEAD_PREFIXES) or k.startswith("stage4.2.fuse_layers.") for k in report.unexpected)
    # Only the attention weights (absent from ImageNet checkpoints) keep their initial values.
    assert report.missing and all(".deattn." in k for k in report.missing)
    np.testing.assert_array_equal(model.backbone.conv1.kernel[...],
                                  imagenet_w18["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.backbone.stage3[2].branches[1][0].bn2.var[...],
                                  imagenet_w18["stage3.2.branches.1.0.bn2.running_var"].numpy())
    # The classifier's `final_layer` (1024 -> 2048) must not land in the pose head.
    np.testing.assert_array_equal(model.final_layer.kernel[...], head_before)


def test_imagenet_classifier_initialises_a_segmentation_backbone(imagenet_w18):
    model = seg_hrnet(18)
    report = load_imagenet_backbone(model, imagenet_w18)
    assert not report.missing
    assert not any(k.startswith("stage4.") for k in report.unexpected)  # all four outputs are used


def test_checkpoint_files_in_the_official_formats(tmp_path, imagenet_w18):
    ref = randomize_(make_psa("psa_s", 16), seed=1)
    nvidia = tmp_path / "best_checkpoint.pth"
    torch.save({"epoch": 174, "arch": "ocrnet.HRNet_Mscale", "mean_iu": 0.8672, "command": "train.py ...",
                "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, nvidia)
    sd = read_state_dict(nvidia)
    assert set(sd) == set(ref.state_dict())
    torch_sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    for k, v in sd.items():  # the values, not only the keys, come out of the NVIDIA dict
        np.testing.assert_array_equal(np.asarray(v), torch_sd[k], err_msg=k)
    # ... and land where they belong in the JAX PSA_s: OIHW conv weights -> HWIO kernels, the
    # bottleneck's LayerNorm (C/8, 1, 1) weight/bias -> (C/8,) scale/bias, conv biases as they are
    psa = PSA_s(16, rngs=nnx.Rngs(0))
    from_torch(psa, sd)
    hwio = lambda k: torch_sd[k].transpose(2, 3, 1, 0)  # noqa: E731
    ch, sp = psa.channel_only, psa.spatial_only
    np.testing.assert_array_equal(ch.conv_q_right.kernel[...], hwio("conv_q_right.weight"))
    np.testing.assert_array_equal(ch.conv_v_right.kernel[...], hwio("conv_v_right.weight"))
    np.testing.assert_array_equal(ch.conv_up.reduce.kernel[...], hwio("conv_up.0.weight"))
    np.testing.assert_array_equal(ch.conv_up.reduce.bias[...], torch_sd["conv_up.0.bias"])
    np.testing.assert_array_equal(ch.conv_up.norm.scale[...], torch_sd["conv_up.1.weight"].reshape(-1))
    np.testing.assert_array_equal(ch.conv_up.norm.bias[...], torch_sd["conv_up.1.bias"].reshape(-1))
    np.testing.assert_array_equal(ch.conv_up.expand.kernel[...], hwio("conv_up.3.weight"))
    np.testing.assert_array_equal(ch.conv_up.expand.bias[...], torch_sd["conv_up.3.bias"])
    np.testing.assert_array_equal(sp.conv_q_left.kernel[...], hwio("conv_q_left.weight"))
    np.testing.assert_array_equal(sp.conv_v_left.kernel[...], hwio("conv_v_left.weight"))
    assert ch.conv_v_right.kernel[...].shape == (1, 1, 16, 8)  # (H, W, C_in, C_out)

    imagenet = tmp_path / "hrnet_w18.pth"
    torch.save({"model." + k: v for k, v in imagenet_w18.items()}, imagenet)
    seg = seg_hrnet(18)
    report = load_pytorch(seg, imagenet, "imagenet")
    assert not report.missing
    net = {k: v.numpy() for k, v in imagenet_w18.items()}
    bb = seg.backbone
    # 3x3 convs (stem, a stage-4 branch block) and a 1x1 fuse conv: OIHW -> HWIO
    for jax_kernel, key in ((bb.conv1.kernel, "conv1.weight"), (bb.conv2.kernel, "conv2.weight"),
                            (bb.stage4[2].branches[3][1].conv2.kernel, "stage4.2.branches.3.1.conv2.weight"),
                            (bb.stage3[0].fuse_layers[0][1].conv.kernel, "stage3.0.fuse_layers.0.1.0.weight")):
        np.testing.assert_array_equal(jax_kernel[...], net[key].transpose(2, 3, 1, 0), err_msg=key)
    # BatchNorm: weight -> scale, bias -> bias, running_mean -> mean, running_var -> var
    for bn, key in ((bb.bn1, "bn1"), (bb.stage2[0].branches[1][0].bn2, "stage2.0.branches.1.0.bn2"),
                    (bb.transition1[1][0].bn, "transition1.1.0.1"),
                    (bb.stage3[0].fuse_layers[0][1].bn, "stage3.0.fuse_layers.0.1.1")):
        for attr, name in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")):
            np.testing.assert_array_equal(getattr(bn, attr)[...], net[f"{key}.{name}"], err_msg=f"{key}.{name}")
    assert not np.array_equal(net["bn1.running_mean"], net["bn1.running_var"])  # randomised: a swap would show

    npz = tmp_path / "weights.npz"
    np.savez(npz, **{k: v.numpy() for k, v in ref.state_dict().items()})
    assert set(read_state_dict(npz)) == set(ref.state_dict())
    for k, v in read_state_dict(npz).items():
        np.testing.assert_array_equal(v, torch_sd[k], err_msg=k)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read .*broken.pth"):
        read_state_dict(broken)
    with pytest.raises(ValueError, match="layout"):
        load_pytorch(pose_hrnet(18), broken, "caffe")
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 3, 3)}}, wrong)
    with pytest.raises(ConversionError, match="missing keys"):
        load_pytorch(pose_hrnet(18), wrong, "network")
