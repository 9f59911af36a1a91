"""The task registry and what a task decides at the edge: fields, metric, the program variant."""
import importlib
import pathlib

import pytest
from flax import nnx

from psa_jax.layers.conv import Conv2d
from psa_jax.layers.norm import BatchNorm
from psa_jax.tasks.common import model_program
from psa_jax.tasks.registry import TASKS, get_task
from psa_jax.training.config_schema import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str, *overrides: str):
    return load_config(REPO / "configs" / f"{name}.py", overrides)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_registered_task_declares_what_the_loop_reads(name):
    module, cls = TASKS[name].split(":")
    task_cls = getattr(importlib.import_module(module), cls)
    assert task_cls.name == name
    assert isinstance(task_cls.train_fields, tuple) and "image" in task_cls.train_fields
    assert task_cls.metric_mode in ("max", "min")
    for method in ("prepare_data", "build_model", "train_dataset", "preprocess", "loss_fn", "forward", "evaluate"):
        assert callable(getattr(task_cls, method)), method


def test_unknown_task_names_the_registered_ones(tmp_path):
    config = _load("pose_synthetic_demo", "task=depth")
    with pytest.raises(ValueError, match=r"config.task='depth' is not one of \['pose', 'seg'\]"):
        get_task(config, tmp_path)


@pytest.mark.parametrize("program, platform, expected", [
    ("auto", "cpu", "xla_cpu"), ("auto", "gpu", "plain"), ("auto", "tpu", "plain"), ("auto", None, "plain"),
    ("plain", "cpu", "plain"), ("xla_cpu", "gpu", "xla_cpu")])
def test_model_program_is_chosen_from_the_platform_only_when_auto(program, platform, expected):
    assert model_program(program, platform) == expected


def test_unknown_program_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match=r"config.model.program='fast' is not one of \['auto', 'plain', 'xla_cpu'\]"):
        model_program("fast", "cpu")


def _rewrites(model) -> tuple[set, set]:
    """The phase-VJP flags of the strided convolutions and the fused flags of the BatchNorms."""
    nodes = [m for _, m in nnx.iter_graph(model)]
    return ({m.phase_vjp for m in nodes if isinstance(m, Conv2d) and m.stride > 1},
            {m.fused_vjp for m in nodes if isinstance(m, BatchNorm)})


@pytest.mark.parametrize("config_name", ["pose_synthetic_demo", "seg_synthetic_demo"])
def test_task_builds_the_program_of_the_platform_it_runs_on(config_name, tmp_path):
    task = get_task(_load(config_name), tmp_path)
    on_cpu = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0), platform="cpu"))
    on_gpu = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0), platform="gpu"))
    assert _rewrites(on_cpu) == ({True}, {True})
    assert _rewrites(on_gpu) == ({False}, {False})
    forced = get_task(_load(config_name, "model.program=plain"), tmp_path)
    assert _rewrites(nnx.eval_shape(lambda: forced.build_model(nnx.Rngs(0), platform="cpu"))) == ({False}, {False})
