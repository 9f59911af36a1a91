"""What the training loop and the evaluator need from a task, and the registry of tasks.

Adding a task: write its module (a class with the `Task` members below) and add one line to
`TASKS`. The loop reads everything task-specific through this protocol: which batch fields go
to the device, which metric picks the best checkpoint and in which direction, how the model's
outputs become a loss and an evaluation.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grain
import jax
import numpy as np
from flax import nnx

__all__ = ["Task", "TASKS", "get_task"]

# config.task -> "module:class". One line per task.
TASKS: dict[str, str] = {
    "pose": "psa_jax.tasks.pose:PoseTask",
    "seg": "psa_jax.tasks.seg:SegTask",
}


class Task(Protocol):
    """A training/evaluation task.

    Attributes:
      name: the `config.task` value that selects it.
      train_fields: the training batch's fields the train step needs on the device (the
        pipeline's other fields stay on the host).
      metric: the model-selection metric in `evaluate`'s result ('AP', 'mIoU').
      metric_mode: 'max' or 'min': the direction in which `metric` is better.
    """

    name: str
    train_fields: tuple[str, ...]
    metric: str
    metric_mode: str

    def prepare_data(self) -> None:
        """Builds or locates the datasets (once; idempotent)."""

    def build_model(self, rngs: nnx.Rngs, *, platform: str | None = None) -> nnx.Module:
        """The network of `config.model`, as the program variant `config.model.program` names
        ('auto': chosen for `platform`, the platform of the devices it will run on)."""

    def train_dataset(self, start_step: int = 0) -> tuple[grain.IterDataset, int]:
        """(this process's training stream from global batch `start_step` on, number of training
        examples per epoch). Global batches do not depend on the process layout."""

    def check_evaluation_inputs(self) -> None:
        """Raises (naming the missing file and the override that avoids it) when something the
        periodic or the final evaluation reads is missing; called before the first step."""

    def preprocess(self, images: jax.Array) -> jax.Array:
        """The training batch's images -> network input, on device (e.g. uint8 normalisation)."""

    def loss_fn(self, outputs: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss, scalar metrics) of the training-mode outputs for a batch."""

    def forward(self, model: nnx.Module, images: jax.Array) -> Any:
        """Eval-mode outputs used by `evaluate`'s predict function."""

    def evaluate(self, predict: Callable[[np.ndarray], Any], *, step: int, final: bool,
                 periodic: bool = True) -> dict[str, Any]:
        """Scalar metrics (and tables) of `predict` on the validation split. `final` adds the
        final-only evaluations; `periodic=False` leaves out the periodic one (the loop runs the
        two parts on either side of saving the last checkpoint)."""


def get_task(config: Any, workdir: str | os.PathLike) -> Task:
    """`config.task` -> the task object (see `TASKS`)."""
    name = config.task
    if name not in TASKS:
        raise ValueError(f"config.task={name!r} is not one of {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)(config, workdir)
