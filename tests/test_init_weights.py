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
from psa_jax.training.config_schema import load_config
from psa_jax.training.init_weights import initialise_weights

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
    initialise_weights(model, config.init)

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


def test_init_refuses_two_sources():
    config = _pose_config(pytorch="a.pth", checkpoint="/nowhere")
    with pytest.raises(ValueError, match="only one of"):
        initialise_weights(None, config.init)
