"""Device mesh and sharding rules of training and evaluation, in one place.

The mesh has three axes (`make_mesh`):

- 'data': data parallelism. The batch is split over it; parameters and optimizer state are
  replicated along it.
- 'fsdp': fully sharded data parallelism (ZeRO-3; Rajbhandari et al. 2020, "ZeRO: Memory
  Optimizations Toward Training Trillion Parameter Models"). The batch is split over it as well,
  *and* every large parameter, its optimizer moments and the BatchNorm statistics are stored split
  over it (`state_shardings`): each device keeps about 1/fsdp of the state and XLA gathers a
  parameter where a layer needs it (all-gather forward and backward, reduce-scatter of the
  gradients). Numerically it is data parallelism over data x fsdp devices.
- 'model': the last axis of large parameters split over it (`shard_params=True`), as before.

The batch's leading axis is split over ('data', 'fsdp') together (`batch_sharding`), so a mesh
data=a x fsdp=b splits a batch like a data=a*b mesh. BatchNorm statistics are those of the
global batch (jit SPMD semantics: SyncBN), whatever the mesh.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "AXES",
    "BATCH_AXES",
    "batch_axes",
    "batch_shard_count",
    "batch_sharding",
    "data_sharding",
    "describe",
    "make_mesh",
    "mesh_platform",
    "state_shardings",
]

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, model: int = 1, *, devices=None) -> Mesh:
    """A ('data', 'fsdp', 'model') mesh of shape (data, fsdp, model) over `devices` (default: all).

    `data=-1` takes every device not used by fsdp * model. The product must equal the device
    count; otherwise a ValueError names the config.mesh.* keys to change.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    for name, size in (("fsdp", fsdp), ("model", model)):
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"config.mesh.{name}={size!r} must be a positive integer")
    if fsdp * model > n or n % (fsdp * model):
        raise ValueError(f"config.mesh.fsdp={fsdp} x config.mesh.model={model} = {fsdp * model} must divide the "
                         f"{n} devices; choose sizes whose product divides {n}")
    if data == -1:
        data = n // (fsdp * model)
    if not isinstance(data, (int, np.integer)) or data < 1 or data * fsdp * model != n:
        raise ValueError(f"config.mesh.data={data} x config.mesh.fsdp={fsdp} x config.mesh.model={model} = "
                         f"{data * fsdp * model} must equal the {n} devices; set config.mesh.data=-1 to use "
                         "every device not on 'fsdp' / 'model'")
    return jax.make_mesh((data, fsdp, model), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch's leading axis is split over: ('data', 'fsdp'), those the mesh has."""
    return tuple(a for a in BATCH_AXES if a in mesh.shape)


def batch_shard_count(mesh: Mesh) -> int:
    """How many pieces the batch's leading axis is split into: data * fsdp."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches: the leading axis split over ('data', 'fsdp'), the other axes whole."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


data_sharding = batch_sharding  # the name used before the 'fsdp' axis existed


def _leaf_spec(shape: tuple[int, ...], *, n_fsdp: int, n_model: int, shard_params: bool, min_size: int) -> P:
    size = math.prod(shape)
    if not shape or size < min_size:
        return P()
    spec: list[str | None] = [None] * len(shape)
    if shard_params and n_model > 1 and shape[-1] % n_model == 0:
        spec[-1] = "model"
    if n_fsdp > 1:
        # The largest free axis that divides evenly; on a tie the later one (`>=`).
        best = None
        for axis, dim in enumerate(shape):
            if spec[axis] is None and dim % n_fsdp == 0 and (best is None or dim >= shape[best]):
                best = axis
        if best is not None:
            spec[best] = "fsdp"
    while spec and spec[-1] is None:  # the canonical form: P('fsdp') rather than P('fsdp', None, None, None)
        spec.pop()
    return P(*spec)


def state_shardings(state: Any, mesh: Mesh, *, shard_params: bool = False, min_size: int = 2 ** 14) -> Any:
    """A NamedSharding per leaf of `state` (arrays or ShapeDtypeStructs; nnx.State or any pytree).

    Leaves with fewer than `min_size` elements (scalars, biases, small kernels) are replicated.
    For the others, two rules that compose (they never pick the same axis):
      - 'model' (`shard_params` and mesh 'model' > 1): the last axis, if it divides by the 'model' size;
      - 'fsdp' (mesh 'fsdp' > 1): the largest remaining axis whose size divides by the 'fsdp' size
        (on a tie the later axis; an HWIO conv kernel is split along O, or I when that is larger).
    A leaf with no such axis stays replicated. Optimizer moments have their parameter's shape and
    so get its sharding.
    """
    n_fsdp = mesh.shape.get("fsdp", 1)
    n_model = mesh.shape.get("model", 1)

    def spec(x) -> NamedSharding:
        shape = tuple(getattr(x, "shape", ()))
        return NamedSharding(mesh, _leaf_spec(shape, n_fsdp=n_fsdp, n_model=n_model, shard_params=shard_params,
                                              min_size=min_size))

    return jax.tree.map(spec, state)


def mesh_platform(mesh: Mesh) -> str:
    """The platform ('cpu', 'gpu', 'tpu') of the devices a program on `mesh` runs on."""
    return mesh.devices.flat[0].platform


def describe(state: Any, shardings: Any) -> dict[str, int]:
    """Bytes of `state` (arrays or ShapeDtypeStructs) stored under `shardings` (same tree).

    Returns {'total_bytes': the whole state once, 'per_device_bytes': what one device stores
    (the sum of each leaf's shard; a replicated leaf counts whole; the largest over devices),
    'leaves', 'sharded_leaves': leaves split over at least one axis}.
    """
    leaves, shard_leaves = jax.tree.leaves(state), jax.tree.leaves(shardings)
    if len(leaves) != len(shard_leaves):
        raise ValueError(f"describe: state has {len(leaves)} leaves but shardings has {len(shard_leaves)}; pass "
                         "the tree state_shardings returned for this state")
    per_device: dict[Any, int] = {}
    total = sharded = 0
    for x, sh in zip(leaves, shard_leaves, strict=True):
        shape, itemsize = tuple(x.shape), np.dtype(x.dtype).itemsize
        total += math.prod(shape) * itemsize
        shard_bytes = math.prod(sh.shard_shape(shape)) * itemsize
        sharded += int(not sh.is_fully_replicated)
        for d in sh.device_set:
            per_device[d] = per_device.get(d, 0) + shard_bytes
    return {"total_bytes": total, "per_device_bytes": max(per_device.values(), default=0), "leaves": len(leaves),
            "sharded_leaves": sharded}
