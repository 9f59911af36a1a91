"""The sharded train step: flat-list state and nnx.State trees give the same update; FSDP meshes,
gradient accumulation and the EMA of the weights."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from psa_jax.layers import PolarizedSelfAttention
from psa_jax.layers.norm import BatchNorm
from psa_jax.runtime import xla_flags
from psa_jax.training.train_step import make_mesh, make_train_step, state_shardings


class _Net(nnx.Module):
    """conv -> BN -> PSA_p -> 1x1 conv: parameters, batch statistics and an attention block."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn = BatchNorm(8)
        self.psa = PolarizedSelfAttention(8, layout="parallel", rngs=rngs)
        self.head = nnx.Conv(8, 2, (1, 1), rngs=rngs)

    def __call__(self, x):
        return self.head(self.psa(jax.nn.relu(self.bn(self.conv(x)))))


def _loss(out, batch):
    return jnp.mean((out - batch["target"]) ** 2), {"mean_out": jnp.mean(out)}


def _build(flat: bool, grad_norm: bool = False, compiler_options=None):
    model = _Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    (mgd, mst), (ogd, ost) = nnx.split(model), nnx.split(optimizer)
    mesh = make_mesh(-1, 1)
    msh, osh = state_shardings(mst, mesh), state_shardings(ost, mesh)
    step = make_train_step(mgd, ogd, _loss, schedule=None, model_sharding=msh, opt_sharding=osh, mesh=mesh,
                           flat_state=flat, grad_norm=grad_norm, compiler_options=compiler_options)
    mst, ost = jax.device_put(mst, msh), jax.device_put(ost, osh)
    if flat:
        return step, jax.tree.leaves(mst), jax.tree.leaves(ost), (jax.tree.structure(msh), jax.tree.structure(osh))
    return step, mst, ost, None


def test_flat_state_step_equals_the_state_tree_step():
    n = jax.device_count()
    rng = np.random.default_rng(0)
    batches = [{"image": jnp.asarray(rng.normal(size=(n, 8, 6, 3)), jnp.float32),
                "target": jnp.asarray(rng.normal(size=(n, 8, 6, 2)), jnp.float32)} for _ in range(3)]
    tree_step, mst, ost, _ = _build(flat=False)
    flat_step, mleaves, oleaves, (mdef, odef) = _build(flat=True)
    for batch in batches:
        mst, ost, m_tree = tree_step(mst, ost, batch)
        mleaves, oleaves, m_flat = flat_step(mleaves, oleaves, batch)
        assert isinstance(mleaves, list) and all(isinstance(a, jax.Array) for a in mleaves)
        np.testing.assert_array_equal(m_tree["loss"], m_flat["loss"])
        np.testing.assert_array_equal(m_tree["mean_out"], m_flat["mean_out"])
    rebuilt = jax.tree.unflatten(mdef, mleaves)
    for a, b in zip(jax.tree.leaves(mst), jax.tree.leaves(rebuilt), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(jax.tree.unflatten(odef, oleaves)["step"][...]) == 3
    # Three steps changed the parameters and the BatchNorm running statistics.
    fresh = nnx.state(_Net(nnx.Rngs(0)))
    assert not np.allclose(fresh["bn"]["mean"][...], rebuilt["bn"]["mean"][...])
    assert not np.allclose(fresh["head"]["kernel"][...], rebuilt["head"]["kernel"][...])


def test_grad_norm_metric_is_the_global_norm_of_the_gradients():
    n = jax.device_count()
    rng = np.random.default_rng(1)
    batch = {"image": jnp.asarray(rng.normal(size=(n, 8, 6, 3)), jnp.float32),
             "target": jnp.asarray(rng.normal(size=(n, 8, 6, 2)), jnp.float32)}
    # The same gradients by hand: value_and_grad of the loss of a training-mode forward.
    model = _Net(nnx.Rngs(0))
    model.train()
    grads = nnx.grad(lambda m: _loss(m(batch["image"]), batch)[0])(model)
    want = float(np.sqrt(sum(np.sum(np.square(np.asarray(g))) for g in jax.tree.leaves(grads))))

    step, mst, ost, _ = _build(flat=False, grad_norm=True)
    _, _, metrics = step(mst, ost, batch)
    np.testing.assert_allclose(float(metrics["grad_norm"]), want, rtol=1e-5)
    step, mst, ost, _ = _build(flat=False)  # off by default (a reduction per parameter array)
    assert "grad_norm" not in step(mst, ost, batch)[2]


def test_compiler_options_reach_xla_and_keep_the_numbers():
    """The memory-minimising XLA:CPU scheduler reorders kernels, not arithmetic: same update.
    An invalid value is rejected by XLA naming the option, so the options do reach the compiler."""
    options = xla_flags.cpu_compiler_options("memory", platform=jax.default_backend())
    if not options:
        pytest.skip("not XLA:CPU, or a jaxlib without xla_cpu_scheduler_type")
    n = jax.device_count()
    rng = np.random.default_rng(2)
    batch = {"image": jnp.asarray(rng.normal(size=(n, 8, 6, 3)), jnp.float32),
             "target": jnp.asarray(rng.normal(size=(n, 8, 6, 2)), jnp.float32)}
    step, mst, ost, _ = _build(flat=False)
    step_mem, mst_mem, ost_mem, _ = _build(flat=False, compiler_options=options)
    for _ in range(2):
        mst, ost, m = step(mst, ost, batch)
        mst_mem, ost_mem, m_mem = step_mem(mst_mem, ost_mem, batch)
        np.testing.assert_allclose(m_mem["loss"], m["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(mst), jax.tree.leaves(mst_mem), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    bad, mst, ost, _ = _build(flat=False, compiler_options={"xla_cpu_scheduler_type": "NO_SUCH_SCHEDULER"})
    with pytest.raises(Exception, match="xla_cpu_scheduler_type"):
        bad(mst, ost, batch)


# ---------------------------------------------------------------------------------------------
# FSDP meshes, gradient accumulation and EMA.

class _BNNet(nnx.Module):
    """conv -> BN -> relu -> conv -> BN -> relu -> 1x1 conv, plus an integer call counter (a
    non-floating state leaf). Kernels (3, 3, 3, 16), (3, 3, 16, 16); BN statistics of 16 channels.
    The convolutions before BatchNorm have no bias (BatchNorm removes it: its gradient is rounding
    noise, which Adam would scale up to full-size steps)."""

    def __init__(self, rngs, batchnorm: bool = True):
        self.conv1 = nnx.Conv(3, 16, (3, 3), use_bias=not batchnorm, rngs=rngs)
        self.conv2 = nnx.Conv(16, 16, (3, 3), use_bias=not batchnorm, rngs=rngs)
        self.bn1 = BatchNorm(16) if batchnorm else None
        self.bn2 = BatchNorm(16) if batchnorm else None
        self.head = nnx.Conv(16, 2, (1, 1), rngs=rngs)
        self.calls = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        self.calls.set_value(self.calls[...] + 1)
        norm = (lambda bn, y: bn(y)) if self.bn1 is not None else (lambda bn, y: y)
        x = jax.nn.relu(norm(self.bn1, self.conv1(x)))
        return self.head(jax.nn.relu(norm(self.bn2, self.conv2(x))))


def _setup(mesh, *, batchnorm=True, min_size=16, flat=False, **step_kw):
    model = _BNNet(nnx.Rngs(0), batchnorm)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    (mgd, mst), (ogd, ost) = nnx.split(model), nnx.split(optimizer)
    msh = state_shardings(mst, mesh, min_size=min_size)
    osh = state_shardings(ost, mesh, min_size=min_size)
    step = make_train_step(mgd, ogd, _loss, schedule=None, model_sharding=msh, opt_sharding=osh, mesh=mesh,
                           flat_state=flat, **step_kw)
    mst, ost = jax.device_put(mst, msh), jax.device_put(ost, osh)
    if flat:
        return step, jax.tree.leaves(mst), jax.tree.leaves(ost), msh
    return step, mst, ost, msh


def _batches(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": np.asarray(rng.normal(size=(size, 8, 8, 3)) * 2 + 1, np.float32),
             "target": np.asarray(rng.normal(size=(size, 8, 8, 2)), np.float32)} for _ in range(n)]


def _run(step, mst, ost, batches):
    losses = []
    for batch in batches:
        mst, ost, metrics = step(mst, ost, batch)
        losses.append(float(metrics["loss"]))
    return losses, [np.asarray(x) for x in jax.tree.leaves(mst)], [np.asarray(x) for x in jax.tree.leaves(ost)]


def test_fsdp_meshes_train_like_one_device():
    """data=8, data=4 x fsdp=2 and fsdp=8 (parameters, Adam moments and BatchNorm statistics split
    over 'fsdp') give the single-device update: loss, parameters, optimizer state, running stats."""
    batches = _batches(3)
    one = make_mesh(devices=jax.devices()[:1])
    ref = _run(*_setup(one)[:3], batches)
    assert ref[1][0].shape == (16,) and not np.allclose(ref[1][0], 0.0)  # bn1 running mean moved
    for data, fsdp in ((8, 1), (4, 2), (1, 8)):
        mesh = make_mesh(data, fsdp)
        step, mst, ost, msh = _setup(mesh)
        split = [s.spec for s in jax.tree.leaves(msh) if not s.is_fully_replicated]
        if fsdp > 1:  # conv kernels and the 16-channel BatchNorm statistics are really split
            assert len(split) >= 6 and all("fsdp" in spec for spec in split)
        else:
            assert not split
        losses, params, opt = _run(step, mst, ost, batches)
        np.testing.assert_allclose(losses, ref[0], rtol=1e-5, err_msg=f"data={data} fsdp={fsdp}")
        for got, want in zip(params + opt, ref[1] + ref[2], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"data={data} fsdp={fsdp}")


def test_grad_accumulation_without_batchnorm_is_one_step_on_the_whole_batch():
    batches = _batches(2)
    mesh = make_mesh(4, 2)  # micro-batches of 8 rows split over data x fsdp, state split over fsdp
    ref = _run(*_setup(mesh, batchnorm=False)[:3], batches)
    got = _run(*_setup(mesh, batchnorm=False, grad_accum_steps=2)[:3], batches)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(
        nnx.state(_BNNet(nnx.Rngs(0), batchnorm=False)))]
    calls = paths.index("['calls'].value")
    assert int(got[1][calls]) == 2 * int(ref[1][calls]) == 4  # k forwards per step
    for a, b in zip(got[1][:calls] + got[1][calls + 1:] + got[2], ref[1][:calls] + ref[1][calls + 1:] + ref[2],
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_grad_accumulation_with_batchnorm_updates_running_stats_once_per_micro_batch():
    """k = 2: the running statistics are those of two training-mode forwards, on rows 0, 2, 4, ...
    then rows 1, 3, 5, ... (every device keeps its rows); the loss metric is the mean of the
    two micro-batch losses; the network's call counter moves by k per step."""
    (batch,) = _batches(1)
    step, mst, ost, _ = _setup(make_mesh(-1), grad_accum_steps=2)
    compiled = step.lower(mst, ost, batch).compile()
    # The micro-batches are cut where the rows already are: no collective moves activations.
    assert not re.findall(r"\b(all-to-all|collective-permute|all-gather)(?:-start)?\(", compiled.as_text())
    mst, _, metrics = compiled(mst, ost, batch)

    model = _BNNet(nnx.Rngs(0))
    model.train()
    micro_losses = [float(_loss(model(batch["image"][j::2]), {"target": batch["target"][j::2]})[0])
                    for j in range(2)]
    np.testing.assert_allclose(float(metrics["loss"]), np.mean(micro_losses), rtol=1e-5)
    got = nnx.merge(nnx.graphdef(model), jax.tree.map(np.asarray, mst))
    for bn_got, bn_want in ((got.bn1, model.bn1), (got.bn2, model.bn2)):
        np.testing.assert_allclose(bn_got.mean[...], bn_want.mean[...], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn_got.var[...], bn_want.var[...], rtol=1e-5, atol=1e-6)
    assert int(got.calls[...]) == 2
    # Not the statistics of one forward on the whole batch.
    whole = _BNNet(nnx.Rngs(0))
    whole.train()
    whole(batch["image"])
    assert not np.allclose(whole.bn1.var[...], model.bn1.var[...], rtol=1e-4)


def test_batch_size_errors_name_the_config_keys():
    step, mst, ost, _ = _setup(make_mesh(-1), grad_accum_steps=4)
    (batch,) = _batches(1)
    with pytest.raises(ValueError, match=r"micro-batch of 4 examples .*grad_accum_steps=4.* multiple of 32"):
        step(mst, ost, batch)
    with pytest.raises(ValueError, match=r"batch of 18 examples does not split into config.grad_accum_steps=4"):
        step(mst, ost, _batches(1, size=18)[0])
    with pytest.raises(ValueError, match=r"leading \(batch\) axis"):
        step(mst, ost, {"image": batch["image"], "target": batch["target"][:8]})
    with pytest.raises(ValueError, match=r"config.grad_accum_steps=0"):
        _setup(make_mesh(-1), grad_accum_steps=0)


@pytest.mark.parametrize("flat", [True, False])
def test_ema_is_the_moving_average_of_the_states(flat):
    decay = 0.8
    batches = _batches(3, seed=3)
    mesh = make_mesh(4, 2)
    plain, mst, ost, _ = _setup(mesh, flat=flat)
    assert len(plain.lower(mst, ost, batches[0]).out_info) == 3  # ema_decay=0: 3 in, 3 out
    states = []
    for batch in batches:
        mst, ost, _ = plain(mst, ost, batch)
        states.append([np.asarray(x) for x in jax.tree.leaves(mst)])

    step, mst, ost, msh = _setup(mesh, flat=flat, ema_decay=decay)
    ema = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), mst, msh if not flat else jax.tree.leaves(msh))
    want = [np.asarray(x) for x in jax.tree.leaves(ema)]
    for batch, new in zip(batches, states, strict=True):
        mst, ost, ema, _ = step(mst, ost, ema, batch)
        want = [decay * w + (1 - decay) * n if np.issubdtype(n.dtype, np.floating) else n
                for w, n in zip(want, new, strict=True)]
    if flat:
        assert isinstance(ema, list)
    for got, w, new in zip(jax.tree.leaves(ema), want, states[-1], strict=True):
        np.testing.assert_allclose(np.asarray(got), w, rtol=1e-5, atol=1e-6)
        assert got.dtype == new.dtype
    # The integer call counter is copied (3 calls), not averaged; the model state itself is the plain one's.
    assert 3 in [int(x) for x in jax.tree.leaves(ema) if x.dtype == jnp.int32]
    for got, new in zip(jax.tree.leaves(mst), states[-1], strict=True):
        np.testing.assert_allclose(np.asarray(got), new, rtol=1e-5, atol=1e-6)
