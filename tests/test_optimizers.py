"""Optimizers and schedules against PyTorch's and hand-computed values."""
import pathlib
import warnings

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from psa_jax.training.config_schema import common_config, load_config
from psa_jax.training.optimizers import make_optimizer, make_schedule


def _schedule(**values):
    """config.schedule as the schema builds it, with `values` set."""
    cfg = common_config().schedule
    cfg.update(values)
    return cfg


def _optimizer(**values):
    """config.optimizer as the schema builds it, with `values` set."""
    cfg = common_config().optimizer
    cfg.update(values)
    return cfg


def test_multistep_changes_at_epoch_boundaries():
    s = make_schedule(_schedule(name="multistep", milestones=(2, 3), gamma=0.1), base_lr=1.0, steps_per_epoch=10,
                      total_steps=50)
    assert [float(s(t)) for t in (0, 19, 20, 29, 30, 49)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_multistep_with_the_optimizer_s_unsigned_step_counter():
    """nnx.Optimizer counts steps in uint32; past a milestone the decay must hold (an unsigned
    `boundary - step` inside optax wrapped around and brought the base rate back)."""
    s = make_schedule(_schedule(name="multistep", milestones=(2, 3), gamma=0.1), base_lr=1.0, steps_per_epoch=10,
                      total_steps=50)
    steps = jnp.asarray([0, 19, 20, 21, 29, 30, 31, 49], jnp.uint32)
    assert [float(s(t)) for t in steps] == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])


def test_poly_per_step_and_per_epoch():
    s = make_schedule(_schedule(name="poly", power=0.9), base_lr=0.01, steps_per_epoch=10, total_steps=100)
    assert float(s(25)) == pytest.approx(0.01 * (1 - 25 / 100) ** 0.9, rel=1e-5)
    e = make_schedule(_schedule(name="poly_epoch", power=2.0), base_lr=0.005, steps_per_epoch=10, total_steps=100)
    # NVIDIA steps its scheduler per epoch: constant within an epoch.
    assert float(e(20)) == float(e(29)) == pytest.approx(0.005 * (1 - 2 / 10) ** 2, rel=1e-5)


def test_linear_warmup_as_mmcv():
    s = make_schedule(_schedule(name="constant", warmup_steps=500, warmup_ratio=0.001), base_lr=3e-3,
                      steps_per_epoch=100, total_steps=10000)
    assert float(s(0)) == pytest.approx(3e-3 * 0.001, rel=1e-4)
    assert float(s(250)) == pytest.approx(3e-3 * (1 - 0.5 * 0.999), rel=1e-4)
    assert float(s(500)) == float(s(4000)) == pytest.approx(3e-3)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_updates_match_pytorch(name):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]
    cfg = _optimizer(name=name, weight_decay=5e-4 if name == "sgd" else 0.0, momentum=0.9)
    tx = make_optimizer(cfg, optax.constant_schedule(0.01))
    params = jnp.asarray(w0)
    state = tx.init(params)
    tp = torch.nn.Parameter(torch.tensor(w0))
    topt = (torch.optim.SGD([tp], lr=0.01, momentum=0.9, weight_decay=5e-4) if name == "sgd"
            else torch.optim.Adam([tp], lr=0.01))
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(np.asarray(params), tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="optimizer.name"):
        make_optimizer(_optimizer(name="lamb"), optax.constant_schedule(1.0))
    with pytest.raises(ValueError, match="schedule.name"):
        make_schedule(_schedule(name="cosine"), base_lr=1.0, steps_per_epoch=1, total_steps=1)


def test_an_incomplete_section_is_refused_with_the_missing_key():
    """No second set of defaults: a mapping without a key the optimizer or schedule needs fails."""
    with pytest.raises(KeyError, match=r"config\.optimizer\.grad_clip_norm"):
        make_optimizer({"name": "sgd"}, optax.constant_schedule(1.0))
    cfg = _optimizer(name="adam").to_dict()
    del cfg["b2"]
    with pytest.raises(KeyError, match=r"config\.optimizer\.b2"):
        make_optimizer(cfg, optax.constant_schedule(1.0))
    with pytest.raises(KeyError, match=r"config\.schedule\.power"):
        make_schedule({"name": "poly"}, base_lr=1.0, steps_per_epoch=1, total_steps=1)
    with pytest.raises(KeyError, match=r"config\.schedule\.warmup_steps"):
        make_schedule({"name": "constant"}, base_lr=1.0, steps_per_epoch=1, total_steps=1)


_REPO = pathlib.Path(__file__).resolve().parents[1]


def _config_schedule(stem, steps_per_epoch):
    config = load_config(_REPO / "configs" / f"{stem}.py")
    total = config.num_epochs * steps_per_epoch
    return config, make_schedule(config.schedule, base_lr=config.optimizer.lr, steps_per_epoch=steps_per_epoch,
                                 total_steps=total)


@pytest.mark.parametrize("stem", ["coco_w32_256x192", "coco_w48_384x288"])
def test_hrnet_pose_drops_in_the_epochs_hrnet_s_train_py_does(stem):
    """HRNet's tools/train.py: MultiStepLR(LR_STEP [170, 200], 0.1, last_epoch=-1), then
    `lr_scheduler.step()` at the start of every epoch: epoch index e trains at last_epoch = e + 1, so
    the drops apply from epochs 169 and 199 (0-based). Compared with torch's own scheduler, every epoch."""
    spe = 7
    config, schedule = _config_schedule(stem, spe)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=config.optimizer.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[170, 200], gamma=0.1, last_epoch=-1)
    torch_lr = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "lr_scheduler.step() before optimizer.step()", as HRNet does
        for _ in range(config.num_epochs):
            sched.step()
            torch_lr.append(opt.param_groups[0]["lr"])
    ours = [(float(schedule(e * spe)), float(schedule(e * spe + spe - 1))) for e in range(config.num_epochs)]
    np.testing.assert_allclose([o[0] for o in ours], torch_lr, rtol=1e-6)
    np.testing.assert_allclose([o[1] for o in ours], torch_lr, rtol=1e-6)
    # Golden values at the boundaries (epoch index: rate).
    assert [float(schedule(e * spe)) for e in (168, 169, 198, 199, 209)] == pytest.approx(
        [1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rel=1e-6)


def test_mmpose_udp_drops_at_the_start_of_epochs_170_and_200():
    """mmcv's step policy reads the 0-based epoch before each epoch: lr = base * 0.1 ** #(steps <= epoch)."""
    spe = 7
    _, schedule = _config_schedule("coco_w48_384x288_udp", spe)
    assert [float(schedule(e * spe)) for e in (169, 170, 199, 200)] == pytest.approx(
        [5e-4, 5e-5, 5e-5, 5e-6], rel=1e-6)
    assert float(schedule(170 * spe - 1)) == pytest.approx(5e-4, rel=1e-6)
