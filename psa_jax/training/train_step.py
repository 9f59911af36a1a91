"""The sharded train step and the host-facing prediction function.

Data parallelism with `jax.jit` over a `jax.make_mesh` mesh with axes ('data', 'model'): batches
are split along 'data'; parameters are replicated, or (`shard_params=True`) their last axis is
split over 'model' where it divides evenly (FSDP-style storage; XLA gathers them for each layer).
BatchNorm statistics are computed over the global batch (jit SPMD semantics: SyncBN).

The model and the optimizer travel through `jax.jit` as `nnx.State` pytrees
(`nnx.split` / `nnx.merge`), and both are donated, so a step updates them in place. With
`flat_state=True` they travel as flat lists of arrays (`jax.tree.leaves`; the tree structure is
fixed when the step is built), which spares rebuilding the thousands of `nnx.Variable`s of a
network's state from the jitted call's outputs on the host at every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["make_mesh", "mesh_platform", "state_shardings", "data_sharding", "make_train_step", "make_forward",
           "host_predict_fn", "LossFn"]

# (model outputs, batch) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def make_mesh(data: int = -1, model: int = 1) -> jax.sharding.Mesh:
    """A ('data', 'model') mesh over every device; `data=-1` takes all devices not used by 'model'."""
    n = jax.device_count()
    if model < 1 or n % model:
        raise ValueError(f"mesh.model={model} must divide the {n} devices")
    if data == -1:
        data = n // model
    if data * model != n:
        raise ValueError(f"mesh data={data} x model={model} must equal the {n} devices (use data=-1)")
    return jax.make_mesh((data, model), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def state_shardings(state: Any, mesh: jax.sharding.Mesh, *, shard_params: bool = False,
                    min_size: int = 2 ** 14) -> Any:
    """A NamedSharding per leaf: replicated, or split along the last axis over 'model'."""
    n_model = mesh.shape["model"]

    def spec(x) -> NamedSharding:
        shape = getattr(x, "shape", ())
        if (shard_params and n_model > 1 and len(shape) >= 1 and shape[-1] % n_model == 0
                and int(np.prod(shape)) >= min_size):
            return NamedSharding(mesh, P(*([None] * (len(shape) - 1)), "model"))
        return NamedSharding(mesh, P())

    return jax.tree.map(spec, state)


def mesh_platform(mesh: jax.sharding.Mesh) -> str:
    """The platform ('cpu', 'gpu', 'tpu') of the devices a program on `mesh` runs on."""
    return mesh.devices.flat[0].platform


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def make_train_step(model_graphdef: nnx.GraphDef, opt_graphdef: nnx.GraphDef, loss_fn: LossFn, *,
                    schedule: optax.Schedule | None, model_sharding: Any, opt_sharding: Any,
                    mesh: jax.sharding.Mesh, image_key: str = "image", flat_state: bool = False,
                    preprocess: Callable[[jax.Array], jax.Array] | None = None,
                    grad_norm: bool = False, compiler_options: Mapping[str, str] | None = None) -> Callable:
    """Returns `step(model_state, opt_state, batch) -> (model_state, opt_state, metrics)`.

    Forward in training mode, `nnx.value_and_grad` of `loss_fn`, one optimizer update; BatchNorm
    statistics updated. Metrics: 'loss', 'lr' and whatever `loss_fn` reports; with `grad_norm`
    also 'grad_norm' (the global L2 norm of the gradients; one reduction per parameter array,
    so it lengthens the first compile on XLA:CPU).
    With `flat_state`, both states are passed and returned as `jax.tree.leaves(state)` lists, in
    the structure of `model_sharding` / `opt_sharding` (`jax.tree.unflatten` with
    `jax.tree.structure(model_sharding)` gives the `nnx.State` back). `preprocess` maps the
    batch's images to the network input on device (e.g. uint8 -> normalised float32).
    `compiler_options` go to `jax.jit` for this program only (e.g.
    `xla_flags.cpu_compiler_options('memory')`: XLA:CPU's memory-minimising scheduler).
    """
    def step(model_state, opt_state, batch):
        model = nnx.merge(model_graphdef, model_state, copy=True)
        optimizer = nnx.merge(opt_graphdef, opt_state, copy=True)
        model.train()

        images = batch[image_key] if preprocess is None else preprocess(batch[image_key])

        def compute(m):
            return loss_fn(m(images), batch)

        (loss, aux), grads = nnx.value_and_grad(compute, has_aux=True)(model)
        lr = schedule(optimizer.step[...]) if schedule is not None else jnp.nan
        optimizer.update(model, grads)
        metrics = dict(aux, loss=loss, lr=jnp.asarray(lr, jnp.float32))
        if grad_norm:
            metrics["grad_norm"] = optax.global_norm(grads)
        return nnx.state(model), nnx.state(optimizer), metrics

    batch_sharding = data_sharding(mesh)
    scalar = NamedSharding(mesh, P())
    if not flat_state:
        return jax.jit(step, in_shardings=(model_sharding, opt_sharding, batch_sharding),
                       out_shardings=(model_sharding, opt_sharding, scalar), donate_argnums=(0, 1),
                       compiler_options=compiler_options)

    model_def, opt_def = jax.tree.structure(model_sharding), jax.tree.structure(opt_sharding)

    def flat_step(model_leaves, opt_leaves, batch):
        model_state, opt_state, metrics = step(jax.tree.unflatten(model_def, model_leaves),
                                               jax.tree.unflatten(opt_def, opt_leaves), batch)
        return jax.tree.leaves(model_state), jax.tree.leaves(opt_state), metrics

    model_leaves_sh, opt_leaves_sh = jax.tree.leaves(model_sharding), jax.tree.leaves(opt_sharding)
    return jax.jit(flat_step, in_shardings=(model_leaves_sh, opt_leaves_sh, batch_sharding),
                   out_shardings=(model_leaves_sh, opt_leaves_sh, scalar), donate_argnums=(0, 1),
                   compiler_options=compiler_options)


def make_forward(model_graphdef: nnx.GraphDef, forward: Callable[[nnx.Module, jax.Array], Any], *,
                 model_sharding: Any, mesh: jax.sharding.Mesh) -> Callable:
    """Jitted `(model_state, images) -> forward(model in eval mode, images)`, batch-sharded."""
    def run(model_state, images):
        model = nnx.merge(model_graphdef, model_state, copy=True)
        model.eval()
        return forward(model, images)

    return jax.jit(run, in_shardings=(model_sharding, data_sharding(mesh)))


def host_predict_fn(forward: Callable, model_state: Any, mesh: jax.sharding.Mesh) -> Callable[[np.ndarray], Any]:
    """`images (B, H, W, 3) numpy (this process's part of the batch) -> outputs as numpy`.

    Pads the batch to a multiple of this process's share of the 'data' axis, assembles a global
    array, runs `forward` and returns this process's rows (padding removed).
    """
    sharding = data_sharding(mesh)
    local_data = max(1, mesh.shape["data"] // jax.process_count())

    def predict(images: np.ndarray):
        images = np.asarray(images, np.float32)
        b = images.shape[0]
        pad = (-b) % local_data
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        x = jax.make_array_from_process_local_data(sharding, images)
        out = forward(model_state, x)

        def to_host(y):
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils
                y = multihost_utils.global_array_to_host_local_array(y, mesh, P("data"))
            return np.asarray(y)[:b]

        return jax.tree.map(to_host, out)

    return predict
