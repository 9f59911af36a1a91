"""Mesh and sharding rules (psa_jax.training.sharding): FSDP axis choice, composition with 'model',
mesh-size errors, batch split, and the per-device bytes they give."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from psa_jax.training import train_step
from psa_jax.training.sharding import (
    batch_shard_count,
    batch_sharding,
    data_sharding,
    describe,
    make_mesh,
    mesh_platform,
    state_shardings,
)

pytestmark = pytest.mark.usefixtures("tiny_hrnet")


def _specs(tree, mesh, **kw):
    return {k: s.spec for k, s in state_shardings(tree, mesh, **kw).items()}


def test_fsdp_splits_the_largest_divisible_axis_and_replicates_small_arrays():
    mesh = make_mesh(1, 8)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "model": 1}
    sds = jax.ShapeDtypeStruct
    tree = {"conv": sds((3, 3, 64, 128), jnp.float32),   # O is the largest: split O
            "stem": sds((128, 3, 3, 8), jnp.float32),    # the first axis is the largest
            "tie": sds((64, 64), jnp.float32),           # equal sizes: the later axis
            "skip": sds((3, 3, 96, 20), jnp.float32),    # 20 does not divide by 8; 96 does
            "none": sds((9, 15, 7), jnp.float32),        # no axis divides: replicated
            "small": sds((8, 4), jnp.float32),           # 32 elements < min_size: replicated
            "scalar": sds((), jnp.int32)}
    assert _specs(tree, mesh, min_size=64) == {
        "conv": P(None, None, None, "fsdp"), "stem": P("fsdp"), "tie": P(None, "fsdp"),
        "skip": P(None, None, "fsdp"), "none": P(), "small": P(), "scalar": P()}
    # The default min_size (16384 elements) keeps the 4,096-element "tie" whole.
    assert _specs(tree, mesh)["tie"] == P() and _specs(tree, mesh)["conv"] == P(None, None, None, "fsdp")
    # Without an 'fsdp' axis nothing is split (the data-parallel rule of before).
    assert set(_specs(tree, make_mesh(-1), min_size=64).values()) == {P()}


def test_fsdp_and_model_rules_compose_on_different_axes():
    mesh = make_mesh(2, 2, 2)
    sds = jax.ShapeDtypeStruct
    tree = {"conv": sds((3, 3, 64, 128), jnp.float32), "dense": sds((16, 6), jnp.float32),
            "odd_last": sds((32, 5), jnp.float32)}
    assert _specs(tree, mesh, shard_params=True, min_size=64) == {
        "conv": P(None, None, "fsdp", "model"),   # 'model' takes the last axis, 'fsdp' the largest other
        "dense": P("fsdp", "model"),
        "odd_last": P("fsdp")}                    # 5 does not divide by 'model': 'fsdp' alone
    # shard_params=False: only the fsdp rule, which may then take the last axis.
    assert _specs(tree, mesh, min_size=64)["conv"] == P(None, None, None, "fsdp")


def test_make_mesh_sizes_and_errors_name_the_config_keys():
    assert dict(make_mesh().shape) == {"data": 8, "fsdp": 1, "model": 1}
    assert dict(make_mesh(-1, 4).shape) == {"data": 2, "fsdp": 4, "model": 1}
    assert dict(make_mesh(2, 2, 2).shape) == {"data": 2, "fsdp": 2, "model": 2}
    one = make_mesh(devices=jax.devices()[:1])
    assert dict(one.shape) == {"data": 1, "fsdp": 1, "model": 1} and mesh_platform(one) == jax.devices()[0].platform
    with pytest.raises(ValueError, match=r"config\.mesh\.data=3 .* must equal the 8 devices"):
        make_mesh(3)
    with pytest.raises(ValueError, match=r"config\.mesh\.fsdp=3 .* must divide the 8 devices"):
        make_mesh(-1, 3)
    with pytest.raises(ValueError, match=r"config\.mesh\.model=0"):
        make_mesh(-1, 1, 0)
    with pytest.raises(ValueError, match=r"config\.mesh\.data=4 x config\.mesh\.fsdp=4"):
        make_mesh(4, 4)


def test_batch_is_split_over_data_and_fsdp_like_a_data_mesh():
    mesh = make_mesh(4, 2)
    assert batch_sharding(mesh).spec == P(("data", "fsdp")) and data_sharding is batch_sharding
    assert batch_shard_count(mesh) == 8
    x = jax.device_put(np.arange(16.0 * 3).reshape(16, 3), batch_sharding(mesh))
    rows = sorted((s.index[0].start, s.index[0].stop) for s in x.addressable_shards)
    assert rows == [(2 * i, 2 * i + 2) for i in range(8)]  # 8 devices, 2 whole rows each
    # train_step re-exports the sharding names (older imports keep working).
    assert train_step.make_mesh is make_mesh and train_step.state_shardings is state_shardings
    assert train_step.data_sharding is data_sharding and train_step.mesh_platform is mesh_platform


def test_fsdp_divides_the_per_device_bytes_of_parameters_and_adam_state():
    from psa_jax.models import pose_hrnet

    def build():
        model = pose_hrnet("w8_tiny", attention="psa_p")
        return model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    model, optimizer = nnx.eval_shape(build)
    state = {"model": nnx.state(model), "opt": nnx.state(optimizer)}
    replicated = describe(state, state_shardings(state, make_mesh(8, 1), min_size=256))
    fsdp = describe(state, state_shardings(state, make_mesh(1, 8), min_size=256))
    assert replicated["per_device_bytes"] == replicated["total_bytes"] == fsdp["total_bytes"]
    assert replicated["sharded_leaves"] == 0 and fsdp["sharded_leaves"] > 0
    ratio = fsdp["total_bytes"] / fsdp["per_device_bytes"]
    assert 6.5 < ratio <= 8.0, ratio  # the small (replicated) leaves keep it under 8

    # describe() against the bytes the devices really hold, for a real state on a 2 x 4 mesh.
    real = nnx.state(pose_hrnet("w8_tiny", attention="psa_p"))
    sh = state_shardings(real, make_mesh(2, 4), min_size=1024)
    placed = jax.device_put(real, sh)
    d0 = jax.devices()[0]
    held = sum(s.data.nbytes for x in jax.tree.leaves(placed) for s in x.addressable_shards if s.device == d0)
    assert describe(real, sh)["per_device_bytes"] == held
