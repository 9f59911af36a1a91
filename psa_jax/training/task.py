"""What train.py and eval.py need from a task (pose or segmentation), and the registry."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grain
import jax
import numpy as np
from flax import nnx

__all__ = ["Task", "get_task", "resolve_data_dir", "run_on_process_zero"]


class Task(Protocol):
    """A training/evaluation task.

    Attributes:
      metric: the name of the model-selection metric in `evaluate`'s result ('AP', 'mIoU').
      metric_mode: 'max' (both tasks).
    """

    metric: str
    metric_mode: str

    def prepare_data(self) -> None:
        """Builds or locates the datasets (once; idempotent)."""

    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """The network of `config.model`."""

    def train_dataset(self) -> tuple[grain.IterDataset, int]:
        """(this process's training stream, number of training examples per epoch)."""

    def preprocess(self, images: jax.Array) -> jax.Array:
        """The training batch's images -> network input, on device (e.g. uint8 normalisation)."""

    def loss_fn(self, outputs: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss, scalar metrics) of the training-mode outputs for a batch."""

    def forward(self, model: nnx.Module, images: jax.Array) -> Any:
        """Eval-mode outputs used by `evaluate`'s predict function."""

    def evaluate(self, predict: Callable[[np.ndarray], Any], *, step: int, final: bool) -> dict[str, Any]:
        """Scalar metrics (and tables) of `predict` on the validation split."""


def resolve_data_dir(config: Any, workdir: str | os.PathLike) -> str:
    """`config.data.data_dir`, or WORKDIR/data when empty."""
    return config.data.data_dir or os.path.join(os.fspath(workdir), "data")


def run_on_process_zero(fn: Callable[[], Any], tag: str) -> None:
    """Runs `fn` on process 0 while the other processes wait (dataset preparation)."""
    if jax.process_index() == 0:
        fn()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(tag)


def get_task(config: Any, workdir: str | os.PathLike) -> Task:
    """`config.task` ('pose' | 'seg') -> the task object."""
    name = config.task
    if name == "pose":
        from psa_jax.training.pose_task import PoseTask
        return PoseTask(config, workdir)
    if name == "seg":
        from psa_jax.training.seg_task import SegTask
        return SegTask(config, workdir)
    raise ValueError(f"config.task={name!r} is not one of 'pose', 'seg'")
