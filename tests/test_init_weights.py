"""`config.init.pytorch` (psa_jax.training.init_weights): a PyTorch file into the network a task builds.

The files are randomized PyTorch re-creations (psa_jax.torch_reference) saved with torch.save, in
the layouts the config names: 'imagenet' (an ImageNet HRNet classifier into the backbone) and
'network' (a whole pose HRNet with PSA). Every loaded value is compared with the source tensor
(conv kernels OIHW -> HWIO), and what the file does not hold keeps the task's fresh initialisation.
"""
import pathlib

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from psa_jax.convert.torch_names import torch_parameter_map
from psa_jax.tasks.registry import get_task
from psa_jax.torch_reference import randomize_
from psa_jax.torch_reference.hrnet_cls import HEAD_PREFIXES, HRNetCls
from psa_jax.torch_reference.hrnet_pose import PoseHighResolutionNet
from psa_jax.torch_reference.hrnet_seg import MscaleOCR
from psa_jax.training.config_schema import load_config
from psa_jax.training.init_weights import (
    PRETRAINED_DIR_ENV,
    check_init,
    initialise_weights,
    resolve_pretrained,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _pose_config(**init):
    c = load_config(REPO / "configs" / "pose_synthetic_demo.py")
    c.model.width = "w18"
    c.model.attention = "psa_p"
    for k, v in init.items():
        c.init[k] = v
    return c


def _expected(value: torch.Tensor, shape) -> np.ndarray:
    """The torch tensor in psa_jax's layout: conv kernels OIHW -> HWIO, everything else as is."""
    v = value.detach().numpy()
    return v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.reshape(shape)


def _build(config, tmp_path):
    task = get_task(config, tmp_path)
    return task.build_model(nnx.Rngs(config.seed)), task.build_model(nnx.Rngs(config.seed))


def _leaves(module):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(module))}


def test_init_from_an_imagenet_classifier_file(tmp_path):
    source = randomize_(HRNetCls(width=18), seed=5).state_dict()
    path = tmp_path / "hrnet_w18_imagenet.pth"
    torch.save({"model." + k: v for k, v in source.items()}, path)
    config = _pose_config(pytorch=str(path), pytorch_layout="imagenet")
    model, fresh = _build(config, tmp_path)
    report = initialise_weights(model, config.init)

    # The report, in the network's PyTorch keys: every backbone key of the file consumed; the
    # pose head and every attention weight reported as kept at their fresh initialisation.
    network_keys = set(torch_parameter_map(model))
    assert set(report.missing) == {k for k in network_keys if ".deattn." in k or k.startswith("final_layer.")}
    assert any(k.startswith("final_layer.") for k in report.missing)
    assert set(report.loaded) == network_keys - set(report.missing)
    assert all(k.startswith((*HEAD_PREFIXES, "stage4.2.fuse_layers.")) for k in report.unexpected)

    targets = torch_parameter_map(model.backbone)
    fresh_targets = torch_parameter_map(fresh.backbone)
    backbone_keys = [k for k in source if not k.startswith(HEAD_PREFIXES) and not k.endswith("num_batches_tracked")]
    compared = 0
    for key in backbone_keys:
        if key not in targets:  # the classifier's extra stage-4 fuse layers (pose fuses into branch 0 only)
            assert key.startswith("stage4.2.fuse_layers.") and not key.startswith("stage4.2.fuse_layers.0."), key
            continue
        got = np.asarray(targets[key].variable[...])
        np.testing.assert_array_equal(got, _expected(source[key], got.shape), err_msg=key)
        assert not np.array_equal(got, np.asarray(fresh_targets[key].variable[...])), key
        compared += 1
    assert compared > 0.9 * len(backbone_keys)
    # Everything the ImageNet file does not hold keeps the fresh initialisation: the attention
    # weights in the backbone and the pose head (not the classifier's `final_layer`).
    kept = [k for k in targets if k not in source]
    assert kept and all(".deattn." in k for k in kept)
    for key in kept:
        np.testing.assert_array_equal(targets[key].variable[...], fresh_targets[key].variable[...], err_msg=key)
    got, new = _leaves(model), _leaves(fresh)
    head = [p for p in got if "backbone" not in p]
    assert any("final_layer" in p for p in head)
    for p in head:
        np.testing.assert_array_equal(got[p], new[p], err_msg=p)


def test_init_from_a_whole_network_file(tmp_path):
    ref = randomize_(PoseHighResolutionNet(width=18, attention="psa_p"), seed=9)
    source = ref.state_dict()
    path = tmp_path / "pose_w18_psa_p.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in source.items()}, "epoch": 3}, path)
    config = _pose_config(pytorch=str(path), pytorch_layout="network")
    model, _ = _build(config, tmp_path)
    initialise_weights(model, config.init)

    targets = torch_parameter_map(model)
    keys = [k for k in source if not k.endswith("num_batches_tracked")]
    assert sorted(targets) == sorted(keys)
    for key in keys:
        got = np.asarray(targets[key].variable[...])
        np.testing.assert_array_equal(got, _expected(source[key], got.shape), err_msg=key)


def test_init_from_another_dataset_s_snapshot_as_nvidia_restores_it(tmp_path):
    """NVIDIA's --snapshot (a Mapillary MscaleOCR, 65 classes) into a 19-class MscaleOCR + PSA_p:
    tensors of matching key and shape are loaded, the class heads and PSA keep their initialisation."""
    source = randomize_(MscaleOCR(num_classes=65, attention=None, width=18), seed=3).state_dict()
    path = tmp_path / "ocrnet.HRNet_mapillary.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in source.items()}, "epoch": 7, "mean_iu": 0.5}, path)
    config = load_config(REPO / "configs" / "seg_synthetic_demo.py")
    config.model.name, config.model.width, config.model.attention = "mscale_ocr", "w18", "psa_p"
    config.init.pytorch, config.init.pytorch_layout = str(path), "snapshot"
    model = get_task(config, tmp_path).build_model(nnx.Rngs(config.seed))
    targets = torch_parameter_map(model)
    before = {k: np.array(t.variable[...]) for k, t in targets.items()}
    report = initialise_weights(model, config.init)

    class_heads = {"ocr.cls_head.weight", "ocr.cls_head.bias", "ocr.aux_head.2.weight", "ocr.aux_head.2.bias"}
    assert set(report.unexpected) == class_heads
    assert set(report.missing) == class_heads | {k for k in targets if ".deattn." in k}
    assert set(report.loaded) == set(targets) - set(report.missing)
    assert len(report.loaded) == len([k for k in source if not k.endswith("num_batches_tracked")]) - 4
    for key in report.loaded:
        got = np.asarray(targets[key].variable[...])
        np.testing.assert_array_equal(got, _expected(source[key], got.shape), err_msg=key)
        assert not np.array_equal(got, before[key]), key
    for key in report.missing:
        np.testing.assert_array_equal(targets[key].variable[...], before[key], err_msg=key)


def test_a_missing_reference_file_stops_before_training_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(PRETRAINED_DIR_ENV, str(tmp_path / "weights"))
    config = load_config(REPO / "configs" / "coco_w48_384x288_udp.py")
    assert config.init.pytorch == "pretrained/hrnet_w48-8ef0771d.pth"
    with pytest.raises(FileNotFoundError) as err:
        initialise_weights(None, config.init)   # raised before the model is touched
    message = str(err.value)
    assert str(tmp_path / "weights" / "hrnet_w48-8ef0771d.pth") in message
    assert "https://download.openmmlab.com/mmpose/pretrain_models/hrnet_w48-8ef0771d.pth" in message
    assert "deep-high-resolution-net.pytorch" in message
    assert "--config.init.pytorch=none" in message
    with pytest.raises(FileNotFoundError, match="hrnet_w48-8ef0771d.pth"):
        check_init(config.init)                 # what a run can call before preparing data
    config.init.pytorch = "none"
    assert check_init(config.init) is None


def test_pretrained_paths_resolve_against_the_documented_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(PRETRAINED_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_pretrained("pretrained/a.pth") == str(tmp_path / "pretrained" / "a.pth")
    assert resolve_pretrained("b/a.pth") == str(tmp_path / "b" / "a.pth")
    monkeypatch.setenv(PRETRAINED_DIR_ENV, "/weights")
    assert resolve_pretrained("pretrained/a.pth") == "/weights/a.pth"
    assert resolve_pretrained("b/a.pth") == str(tmp_path / "b" / "a.pth")
    assert resolve_pretrained("/abs/a.pth") == "/abs/a.pth"


def test_none_trains_from_scratch_with_a_warning(tmp_path, caplog):
    config = _pose_config(pytorch="none")
    config.model.width = "w18_small"
    model, fresh = _build(config, tmp_path)
    with caplog.at_level("WARNING"):
        assert initialise_weights(model, config.init) is None
    assert "random initialisation on purpose" in caplog.text
    got, new = _leaves(model), _leaves(fresh)
    assert all(np.array_equal(got[p], new[p]) for p in got)


def test_unknown_layout_is_refused(tmp_path):
    config = _pose_config(pytorch=str(tmp_path / "x.pth"), pytorch_layout="classifier")
    with pytest.raises(ValueError, match="pytorch_layout"):
        initialise_weights(None, config.init)


def test_init_refuses_two_sources():
    config = _pose_config(pytorch="a.pth", checkpoint="/nowhere")
    with pytest.raises(ValueError, match="only one of"):
        initialise_weights(None, config.init)
