"""The sharded train step and the host-facing prediction function.

SPMD with `jax.jit` over a ('data', 'fsdp', 'model') mesh (`psa_jax.training.sharding`, whose
names are re-exported here): batches are split along ('data', 'fsdp'); parameters, optimizer state
and BatchNorm statistics are replicated, split over 'fsdp' (ZeRO-3: XLA gathers each parameter
where a layer needs it and reduce-scatters its gradient) and/or (`shard_params=True`) split along
their last axis over 'model'. Whatever the mesh, the update is that of one device on the global
batch; BatchNorm statistics are computed over the global batch (jit SPMD semantics: SyncBN).

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

from psa_jax.training.sharding import (
    batch_axes,
    batch_shard_count,
    batch_sharding,
    data_sharding,
    make_mesh,
    mesh_platform,
    state_shardings,
)

__all__ = [
    "LossFn",
    "batch_sharding",
    "data_sharding",
    "host_predict_fn",
    "make_forward",
    "make_mesh",
    "make_train_step",
    "mesh_platform",
    "state_shardings",
]

# (model outputs, batch) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def _batch_size(batch: Any, mesh: jax.sharding.Mesh, grad_accum_steps: int) -> int:
    """The batch's leading size B, after checking every field has it and that B splits into
    `grad_accum_steps` micro-batches that each divide evenly over the mesh's batch axes."""
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    if not leaves:
        raise ValueError("the train step got an empty batch; it needs the task's train_fields")
    sizes = {jax.tree_util.keystr(path): (x.shape[0] if len(x.shape) else None) for path, x in leaves}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"every batch field must share the leading (batch) axis; got leading sizes {sizes} "
                         "(None: a scalar field)")
    b, k, n = next(iter(sizes.values())), grad_accum_steps, batch_shard_count(mesh)
    if b % k:
        raise ValueError(f"a batch of {b} examples does not split into config.grad_accum_steps={k} micro-batches; "
                         f"make config.batch_size a multiple of {k}")
    if (b // k) % n:
        axes = " x ".join(f"{a}={mesh.shape[a]}" for a in batch_axes(mesh))
        raise ValueError(f"a micro-batch of {b // k} examples (batch {b} / config.grad_accum_steps={k}) does not "
                         f"split over the {n} devices of the mesh's batch axes ({axes}); make config.batch_size "
                         f"a multiple of {k * n}")
    return b


def _micro_batches(batch: Any, k: int, mesh: jax.sharding.Mesh) -> Any:
    """Each field (B, ...) -> (k, B // k, ...), micro-batch j = rows j, j + k, j + 2k, ...

    The reshape (B, ...) -> (B // k, k, ...) keeps the leading axis's split: a device holding
    B / n consecutive rows (n = batch shards; B / n a multiple of k) holds whole groups of k, so
    every micro-batch is split over the same devices and no example moves between devices.
    """
    spec = NamedSharding(mesh, P(None, batch_axes(mesh)))

    def split(x):
        y = jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
        return jax.lax.with_sharding_constraint(y, spec)

    return jax.tree.map(split, batch)


class _CheckedStep:
    """A jitted step that first checks the batch's shapes (`_batch_size`), so that a wrong batch
    size fails with an error naming config.batch_size / config.grad_accum_steps instead of
    jit's sharding message. `lower`, `eval_shape`, `trace` check too; anything else is the jitted
    function's."""

    def __init__(self, jitted: Callable, mesh: jax.sharding.Mesh, grad_accum_steps: int):
        self._jitted, self._mesh, self._k = jitted, mesh, grad_accum_steps
        self.__wrapped__ = jitted

    def _check(self, args: tuple) -> None:
        _batch_size(args[-1], self._mesh, self._k)

    def __call__(self, *args):
        self._check(args)
        return self._jitted(*args)

    def lower(self, *args, **kwargs):
        self._check(args)
        return self._jitted.lower(*args, **kwargs)

    def trace(self, *args, **kwargs):
        self._check(args)
        return self._jitted.trace(*args, **kwargs)

    def eval_shape(self, *args, **kwargs):
        self._check(args)
        return self._jitted.eval_shape(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._jitted, name)


def _ema(decay: float, ema_state: Any, new_state: Any) -> Any:
    """ema <- decay * ema + (1 - decay) * new for floating leaves; other leaves take the new value."""
    def update(e, n):
        if not jnp.issubdtype(n.dtype, jnp.floating):
            return n
        return (decay * e.astype(jnp.float32) + (1.0 - decay) * n.astype(jnp.float32)).astype(e.dtype)

    return jax.tree.map(update, ema_state, new_state)


def make_train_step(model_graphdef: nnx.GraphDef, opt_graphdef: nnx.GraphDef, loss_fn: LossFn, *,
                    schedule: optax.Schedule | None, model_sharding: Any, opt_sharding: Any,
                    mesh: jax.sharding.Mesh, image_key: str = "image", flat_state: bool = False,
                    preprocess: Callable[[jax.Array], jax.Array] | None = None,
                    grad_norm: bool = False, compiler_options: Mapping[str, str] | None = None,
                    grad_accum_steps: int = 1, ema_decay: float = 0.0) -> Callable:
    """Returns `step(model_state, opt_state, batch) -> (model_state, opt_state, metrics)`: a
    `jax.jit` function behind a check of the batch's shapes (a wrong batch size is reported naming
    config.batch_size / config.grad_accum_steps); `step.lower(...)` works as for any jitted function.

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

    Gradient accumulation (`grad_accum_steps` = k > 1): the global batch of B examples is split
    into k micro-batches of B / k without moving data between devices (micro-batch j holds rows
    j, j + k, ...; B / k must divide by the mesh's data x fsdp size), a `lax.scan` runs forward
    and backward on each in turn, and one optimizer update applies the mean of the k gradients.
    The metrics are the means over the micro-batches. For a network without BatchNorm and a loss
    that is a mean over examples, this is the update of one step on the whole batch, with the
    activation memory of a B / k batch. With BatchNorm it is not: each micro-batch is normalised
    with its own statistics (as a k-times smaller batch would be), and the running statistics
    receive k momentum updates per step, one per micro-batch in order. k = 1 builds exactly the
    step without accumulation.

    EMA (`ema_decay` = d > 0): the step also takes and returns an exponential moving average of
    the model state, `ema <- d * ema + (1 - d) * new` after the update, for every floating leaf
    (parameters and BatchNorm statistics); integer leaves are copied from the new state. The step
    is then `step(model_state, opt_state, ema_state, batch) -> (model_state, opt_state, ema_state,
    metrics)`, with `ema_state` of the model state's structure and `model_sharding` (with
    `flat_state`: `step(model_leaves, opt_leaves, ema_leaves, batch) -> (model_leaves, opt_leaves,
    ema_leaves, metrics)`), all three donated. Start it from a copy of the initial model state.
    With d = 0 the step keeps the three-argument form.
    """
    k = int(grad_accum_steps)
    if k < 1:
        raise ValueError(f"config.grad_accum_steps={grad_accum_steps} must be an integer >= 1")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"config.ema_decay={ema_decay} must be in [0, 1) (0: no EMA)")

    def forward_backward(model_state, batch):
        """Training-mode loss and parameter gradients on one (micro-)batch; BatchNorm statistics updated."""
        model = nnx.merge(model_graphdef, model_state, copy=True)
        model.train()
        images = batch[image_key] if preprocess is None else preprocess(batch[image_key])

        def compute(m):
            return loss_fn(m(images), batch)

        (loss, aux), grads = nnx.value_and_grad(compute, has_aux=True)(model)
        return nnx.state(model), grads, dict(aux, loss=loss)

    def apply(model_state, opt_state, grads, metrics):
        """One optimizer update with `grads`; adds the learning rate (and gradient norm) to `metrics`."""
        model = nnx.merge(model_graphdef, model_state, copy=True)
        optimizer = nnx.merge(opt_graphdef, opt_state, copy=True)
        lr = schedule(optimizer.step[...]) if schedule is not None else jnp.nan
        optimizer.update(model, grads)
        metrics = dict(metrics, lr=jnp.asarray(lr, jnp.float32))
        if grad_norm:
            metrics["grad_norm"] = optax.global_norm(grads)
        return nnx.state(model), nnx.state(optimizer), metrics

    def step_one(model_state, opt_state, batch):
        model_state, grads, metrics = forward_backward(model_state, batch)
        return apply(model_state, opt_state, grads, metrics)

    def step_accumulated(model_state, opt_state, batch):
        zeros = jax.tree.map(jnp.zeros_like, nnx.state(nnx.merge(model_graphdef, model_state, copy=True), nnx.Param))

        def micro_step(carry, micro):
            state, grad_sum = carry
            state, grads, metrics = forward_backward(state, micro)
            return (state, jax.tree.map(jnp.add, grad_sum, grads)), metrics

        (state, grad_sum), per_micro = jax.lax.scan(micro_step, (model_state, zeros),
                                                    _micro_batches(batch, k, mesh))
        grads = jax.tree.map(lambda g: g / k, grad_sum)
        return apply(state, opt_state, grads, jax.tree.map(lambda v: jnp.mean(v, axis=0), per_micro))

    step = step_one if k == 1 else step_accumulated
    return _CheckedStep(_jit_step(step, ema_decay, model_sharding=model_sharding, opt_sharding=opt_sharding,
                                  mesh=mesh, flat_state=flat_state, compiler_options=compiler_options), mesh, k)


def _jit_step(step: Callable, ema_decay: float, *, model_sharding: Any, opt_sharding: Any, mesh: jax.sharding.Mesh,
              flat_state: bool, compiler_options: Mapping[str, str] | None) -> Callable:
    """`jax.jit` of `step(model_state, opt_state, batch)` in the calling form `make_train_step`
    documents: state trees or flat lists, with or without the EMA argument; states donated."""
    in_batch = batch_sharding(mesh)
    scalar = NamedSharding(mesh, P())
    if flat_state:
        model_def, opt_def = jax.tree.structure(model_sharding), jax.tree.structure(opt_sharding)
        model_sh, opt_sh = jax.tree.leaves(model_sharding), jax.tree.leaves(opt_sharding)

        def fn(model_leaves, opt_leaves, batch):
            model_state, opt_state, metrics = step(jax.tree.unflatten(model_def, model_leaves),
                                                   jax.tree.unflatten(opt_def, opt_leaves), batch)
            return jax.tree.leaves(model_state), jax.tree.leaves(opt_state), metrics
    else:
        fn, model_sh, opt_sh = step, model_sharding, opt_sharding

    if ema_decay <= 0.0:
        return jax.jit(fn, in_shardings=(model_sh, opt_sh, in_batch), out_shardings=(model_sh, opt_sh, scalar),
                       donate_argnums=(0, 1), compiler_options=compiler_options)

    def ema_fn(model_state, opt_state, ema_state, batch):
        model_state, opt_state, metrics = fn(model_state, opt_state, batch)
        ema_state = jax.tree.structure(model_state).unflatten(jax.tree.leaves(ema_state))  # a tuple of leaves too
        return model_state, opt_state, _ema(ema_decay, ema_state, model_state), metrics

    return jax.jit(ema_fn, in_shardings=(model_sh, opt_sh, model_sh, in_batch),
                   out_shardings=(model_sh, opt_sh, model_sh, scalar), donate_argnums=(0, 1, 2),
                   compiler_options=compiler_options)


def make_forward(model_graphdef: nnx.GraphDef, forward: Callable[[nnx.Module, jax.Array], Any], *,
                 model_sharding: Any, mesh: jax.sharding.Mesh) -> Callable:
    """Jitted `(model_state, images) -> forward(model in eval mode, images)`, batch-sharded."""
    def run(model_state, images):
        model = nnx.merge(model_graphdef, model_state, copy=True)
        model.eval()
        return forward(model, images)

    return jax.jit(run, in_shardings=(model_sharding, batch_sharding(mesh)))


def host_predict_fn(forward: Callable, model_state: Any, mesh: jax.sharding.Mesh) -> Callable[[np.ndarray], Any]:
    """`images (B, H, W, 3) numpy (this process's part of the batch) -> outputs as numpy`.

    Pads the batch to a multiple of this process's share of the batch axes ('data' x 'fsdp'),
    assembles a global array, runs `forward` and returns this process's rows (padding removed).
    """
    sharding = batch_sharding(mesh)
    local_data = max(1, batch_shard_count(mesh) // jax.process_count())

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
                y = multihost_utils.global_array_to_host_local_array(y, mesh, P(batch_axes(mesh)))
            return np.asarray(y)[:b]

        return jax.tree.map(to_host, out)

    return predict
