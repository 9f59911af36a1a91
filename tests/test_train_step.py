"""The sharded train step: flat-list state and nnx.State trees give the same update."""
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
