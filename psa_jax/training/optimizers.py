"""Optimizers and learning-rate schedules of the reference recipes, as optax transformations.

| recipe | optimizer | schedule | source |
| --- | --- | --- | --- |
| HRNet pose | Adam 1e-3, no weight decay | x0.1 at epochs 170, 200 (210 epochs) | `experiments/coco/hrnet/*.yaml`, `lib/utils/utils.py::get_optimizer` |
| UDP (mmpose) | Adam, linear warm-up 500 iterations from x0.001 | x0.1 at 170, 200 | mmpose `hrnet_w48_coco_{256x192,384x288}_udp.py` |
| HRNet-Seg | SGD 0.01, momentum 0.9, wd 5e-4 | poly 0.9 per iteration | `tools/train.py`, `lib/utils/utils.py::adjust_learning_rate` |
| NVIDIA / PSA | SGD 5e-3 (8 GPUs), momentum 0.9, wd 1e-4 | poly 2.0 per epoch (175 epochs) | `semantic-segmentation/train.py`, `loss/optimizer.py` |

Weight decay is PyTorch's coupled L2 (`grad += wd * param` before momentum), applied to every
parameter as the references do (BN and biases included). Schedules are functions of the step;
epoch-based milestones are converted with `steps_per_epoch`.

The keys and their defaults are those of `config.optimizer` / `config.schedule` in
`psa_jax.training.config_schema`; this module keeps no defaults of its own and refuses a mapping
that lacks a key it needs, naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax

__all__ = ["make_schedule", "make_optimizer", "SCHEDULES", "OPTIMIZERS"]

SCHEDULES = ("constant", "multistep", "poly", "poly_epoch")
OPTIMIZERS = ("adam", "sgd")


def _key(cfg: Mapping[str, Any], section: str, key: str) -> Any:
    """`cfg[key]`, or a KeyError naming `config.<section>.<key>` when the mapping lacks it."""
    if key not in cfg:
        raise KeyError(f"config.{section}.{key} is missing: pass the complete config.{section} section "
                       "(psa_jax.training.config_schema.common_config() has every key with its default)")
    return cfg[key]


def make_schedule(cfg: Mapping[str, Any], *, base_lr: float, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step.

    cfg: `config.schedule`: `name` ('constant' | 'multistep' | 'poly' | 'poly_epoch'),
    `milestones` (epochs, multistep), `gamma` (multistep factor), `power` (poly exponent: 0.9
    HRNet-Seg, 2.0 NVIDIA), `warmup_steps` and `warmup_ratio` (linear warm-up from
    `base_lr * ratio`). The keys the chosen schedule uses must be present (KeyError otherwise).
    'poly' decays every step, `(1 - step / total_steps) ** power`; 'poly_epoch' only at epoch
    boundaries, `(1 - epoch / num_epochs) ** power`, as NVIDIA's scheduler (stepped per epoch).
    """
    name = _key(cfg, "schedule", "name")
    if name not in SCHEDULES:
        raise ValueError(f"schedule.name={name!r} is not one of {SCHEDULES}")
    steps_per_epoch = max(int(steps_per_epoch), 1)
    total_steps = max(int(total_steps), 1)
    if name == "constant":
        main = optax.constant_schedule(base_lr)
    elif name == "multistep":
        gamma = float(_key(cfg, "schedule", "gamma"))
        boundaries = {int(m) * steps_per_epoch: gamma for m in _key(cfg, "schedule", "milestones")}
        piecewise = optax.piecewise_constant_schedule(base_lr, boundaries)

        def main(step):
            # optax computes `boundary - step`; an unsigned step (nnx.Optimizer counts in uint32)
            # wraps around past a boundary and undoes the decay, so the step is made signed first.
            return piecewise(jnp.asarray(step, jnp.int32))
    elif name == "poly":
        main = optax.polynomial_schedule(base_lr, 0.0, float(_key(cfg, "schedule", "power")), total_steps)
    else:
        power = float(_key(cfg, "schedule", "power"))
        num_epochs = max(total_steps // steps_per_epoch, 1)

        def main(step):
            epoch = step // steps_per_epoch
            return base_lr * (1.0 - epoch / num_epochs) ** power

    warmup = int(_key(cfg, "schedule", "warmup_steps"))
    if warmup <= 0:
        return main
    ratio = float(_key(cfg, "schedule", "warmup_ratio"))

    def schedule(step):
        # mmcv's linear warm-up: lr = main(step) * (1 - (1 - step / warmup) * (1 - ratio)).
        progress = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup, 1.0)
        return main(step) * (1.0 - (1.0 - progress) * (1.0 - ratio))

    return schedule


def make_optimizer(cfg: Mapping[str, Any], schedule: optax.Schedule) -> optax.GradientTransformation:
    """The update rule of `config.optimizer`, its learning rate given by `schedule`.

    cfg: `name` ('adam' | 'sgd'), `weight_decay`, `grad_clip_norm` (0: none), and `b1`, `b2`,
    `eps` (adam) or `momentum`, `nesterov` (sgd). The keys the chosen optimizer uses must be
    present (KeyError otherwise).
    """
    name = _key(cfg, "optimizer", "name")
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={name!r} is not one of {OPTIMIZERS}")
    parts = []
    clip = float(_key(cfg, "optimizer", "grad_clip_norm"))
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    wd = float(_key(cfg, "optimizer", "weight_decay"))
    if wd > 0:
        parts.append(optax.add_decayed_weights(wd))
    if name == "adam":
        parts.append(optax.scale_by_adam(b1=float(_key(cfg, "optimizer", "b1")),
                                         b2=float(_key(cfg, "optimizer", "b2")),
                                         eps=float(_key(cfg, "optimizer", "eps"))))
    else:
        momentum = float(_key(cfg, "optimizer", "momentum"))
        if momentum > 0:
            parts.append(optax.trace(decay=momentum, nesterov=bool(_key(cfg, "optimizer", "nesterov"))))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)
