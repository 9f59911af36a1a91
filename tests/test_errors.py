"""Errors a user can act on: unknown config keys name the closest valid ones, batch/mesh/device
mismatches are explained before anything compiles, a failed eval.py ends with its error as the
last line (no asyncio noise), `--step` is validated, eval.py never creates a workdir, and dataset
preparation leaves no temporary directory behind."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import types

import pytest

from psa_jax.training.config_schema import pose_config, seg_config
from psa_jax.training.preflight import (
    ConfigKeyError,
    LayoutError,
    check_layout,
    check_overrides,
    config_keys,
    load_config_file,
    overrides_in_argv,
    valid_batch_sizes,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------- config keys
@pytest.mark.parametrize(("override", "expected"), [
    ("optimizer.learnig_rate=1", "optimizer.lr"),
    ("optimizer.learning_rate=1", "optimizer.lr"),
    ("optimizer.wd=0.1", "optimizer.weight_decay"),
    ("schedule.lr=1", "optimizer.lr"),
    ("batchsize=3", "batch_size"),
    ("mesh.fdsp=2", "mesh.fsdp"),
])
def test_unknown_key_names_the_closest_valid_key(override, expected):
    with pytest.raises(ConfigKeyError) as info:
        check_overrides(pose_config(), [override])
    message = str(info.value)
    key = override.split("=")[0]
    assert message.startswith(f"unknown config key '{key}'") and "\n" not in message
    assert message.split("did you mean ")[1].startswith(f"'{expected}'"), message


def test_unknown_key_without_close_match_lists_the_section():
    with pytest.raises(ConfigKeyError, match="the top-level keys are: .*batch_size"):
        check_overrides(pose_config(), ["nonexistent=1"])
    with pytest.raises(ConfigKeyError, match="the keys of 'optimizer' are: .*lr"):
        check_overrides(pose_config(), ["optimizer.zzzzzzzz=1"])
    with pytest.raises(ConfigKeyError, match="'optimizer.lr' is a value, not a section"):
        check_overrides(pose_config(), ["optimizer.lr.x=1"])
    with pytest.raises(ConfigKeyError, match="is a section"):
        check_overrides(pose_config(), ["optimizer=1"])


def test_valid_overrides_pass():
    check_overrides(pose_config(), ["optimizer.lr=1", "mesh.fsdp=2", "data.augment.flip", "eval.boxes=det"])
    check_overrides(seg_config(), ["loss.use_ohem=True", "model.eval_scales=(1.0,)"])
    keys = config_keys(pose_config())
    assert keys["optimizer"] is True and keys["optimizer.lr"] is False and keys["data.augment.flip"] is False


def test_overrides_checked_against_a_config_file():
    path = os.path.join(REPO, "configs", "pose_synthetic_demo.py")
    config = load_config_file(path)
    assert config.model.width == "w18_small"  # the file's own values, no override
    check_overrides(config, ["model.width=w32"])
    with pytest.raises(ConfigKeyError, match="did you mean 'optimizer.lr'"):
        check_overrides(config, ["optimizer.lr=1", "optimizer.learnig_rate=1"])


def test_overrides_in_argv():
    argv = ["eval.py", "--config=c.py", "--config.a.b=1", "--config.c", "2", "--noconfig.d", "--config.e",
            "--workdir=w", "--", "--config.f=3"]
    assert overrides_in_argv(argv) == ["a.b=1", "c=2", "d", "e"]


# ------------------------------------------------------------------------------- layout
def _devices(n: int, processes: int = 1):
    return [types.SimpleNamespace(id=i, process_index=i * processes // n) for i in range(n)]


def _config(batch=32, data=-1, fsdp=1, model=1, accum=1):
    c = pose_config()
    c.batch_size, c.grad_accum_steps = batch, accum
    c.mesh.data, c.mesh.fsdp, c.mesh.model = data, fsdp, model
    return c


def test_layout_that_fits():
    assert check_layout(_config(48), _devices(8)) == {"devices": 8, "processes": 1, "data": 8, "fsdp": 1,
                                                      "model": 1, "batch_shards": 8}
    assert check_layout(_config(12, fsdp=2, model=2), _devices(8))["batch_shards"] == 2 * 2
    assert check_layout(_config(48, accum=3), _devices(8))["data"] == 8  # 48 / 3 = 16 per micro-batch


def test_batch_that_does_not_divide_gives_the_nearest_valid_sizes():
    with pytest.raises(LayoutError) as info:
        check_layout(_config(50), _devices(8))
    message = str(info.value)
    assert "config.batch_size=50" in message and "8 devices" in message
    assert "--config.batch_size=48 or --config.batch_size=56" in message
    assert valid_batch_sizes(50, 8) == [48, 56] and valid_batch_sizes(3, 8) == [8]


def test_micro_batch_must_divide_over_data_times_fsdp():
    # 40 / 2 = 20 examples per micro-batch over data=2 x fsdp=4 = 8 devices: no; multiples of 16 are
    with pytest.raises(LayoutError) as info:
        check_layout(_config(40, data=2, fsdp=4, accum=2), _devices(8))
    message = str(info.value)
    assert "micro-batch of 20" in message and "data=2 x fsdp=4" in message
    assert "--config.batch_size=32 or --config.batch_size=48" in message and "grad_accum_steps" in message
    with pytest.raises(LayoutError, match="does not split into config.grad_accum_steps=3"):
        check_layout(_config(16, accum=3), _devices(1))


def test_batch_must_divide_over_processes():
    # model=4 leaves 2 batch shards over 4 processes: the processes, not the shards, decide
    with pytest.raises(LayoutError, match="does not split over the 4 processes") as info:
        check_layout(_config(6, model=4), _devices(8, processes=4))
    assert "--config.batch_size=4 or --config.batch_size=8" in str(info.value)


@pytest.mark.parametrize(("mesh", "pattern"), [
    ({"data": 3}, r"config.mesh.data=3 x fsdp=1 x model=1 = 3 but there are 8 devices; use --config.mesh.data=8"),
    ({"fsdp": 3}, r"config.mesh.fsdp=3 x config.mesh.model=1 = 3 does not divide the 8 devices"),
    ({"model": 0}, r"config.mesh.model=0 must be a positive integer"),
    ({"data": 2, "fsdp": 2}, r"use --config.mesh.data=4"),
])
def test_mesh_that_does_not_fit_the_devices(mesh, pattern):
    with pytest.raises(LayoutError, match=pattern):
        check_layout(_config(48, **mesh), _devices(8))


# ------------------------------------------------------------------------------- eval.py end to end
def _run_eval(*args, env=None):
    environment = dict(os.environ, **(env or {}))
    environment.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), *args], check=False,
                          capture_output=True, text=True,
                          env=environment, cwd=REPO, timeout=300)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, lines, proc.stderr


@pytest.fixture(scope="module")
def damaged_workdir(tmp_path_factory):
    """A workdir whose only checkpoint is the demo config's network, damaged."""
    from flax import nnx

    from psa_jax.tasks.registry import get_task
    from psa_jax.training.checkpointing import Checkpointer
    from psa_jax.training.config_schema import load_config

    workdir = tmp_path_factory.mktemp("damaged")
    config = load_config(os.path.join(REPO, "configs", "pose_synthetic_demo.py"))
    _, state = nnx.split(get_task(config, workdir).build_model(nnx.Rngs(0), platform="cpu"))
    with Checkpointer(workdir / "checkpoints", async_save=False) as ck:
        ck.save(5, model=state, meta={"source": "test"})
    # the array index (model/d/*) cut in half: some reads fail while others are in flight, which is
    # when orbax's event loop used to close under tensorstore's pending callbacks
    files = list((workdir / "checkpoints" / "5" / "model" / "d").iterdir())
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return workdir


def test_eval_on_damaged_checkpoint_ends_with_its_error(damaged_workdir):
    rc, lines, stderr = _run_eval(f"--workdir={damaged_workdir}", "--step=latest")
    assert rc == 1
    assert lines[-1].startswith("error: CheckpointError: could not restore model, meta from"), lines[-3:]
    assert "step 5:" in lines[-1]
    assert "Event loop is closed" not in stderr
    assert "Traceback" not in stderr


def test_evaluate_checks_step_and_workdir_before_building_anything(damaged_workdir, tmp_path):
    from psa_jax.training.checkpointing import CheckpointError
    from psa_jax.training.config_schema import load_config
    from psa_jax.training.evaluate import evaluate

    config = load_config(os.path.join(REPO, "configs", "pose_synthetic_demo.py"))
    with pytest.raises(CheckpointError) as info:
        evaluate(config, str(damaged_workdir), "abc")
    assert str(info.value) == ("step='abc' is not 'best', 'latest' or a step number (an integer >= 0); available "
                               f"steps in {damaged_workdir / 'checkpoints'}: [5]")
    workdir = tmp_path / "not_trained"
    with pytest.raises(CheckpointError, match="no checkpoint directory .*python train.py.*psa_jax.tools.convert"):
        evaluate(config, str(workdir), "best")
    assert not workdir.exists()


def test_exit_with_error_prints_the_error_last(monkeypatch, capsys):
    from psa_jax.runtime.entry_point import (
        TRACEBACK_ENV,
        exit_with_error,
        register_cleanup,
        run_cleanups,
    )

    def fail():
        raise ValueError("bad\n  value")

    for traceback_on in ("", "1"):
        monkeypatch.setenv(TRACEBACK_ENV, traceback_on)
        try:
            fail()
        except ValueError as err:
            with pytest.raises(SystemExit) as info:
                exit_with_error(err)
        assert info.value.code == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1] == "error: ValueError: bad value"
        assert ("Traceback (most recent call last):" in lines) == bool(traceback_on)
    from psa_jax.runtime import entry_point

    monkeypatch.setattr(entry_point, "_CLEANUPS", [])
    calls = []
    register_cleanup(lambda: calls.append(1) or 1 / 0)  # a failing cleanup is logged, not raised
    run_cleanups()
    assert calls == [1]


def test_eval_unknown_config_key(tmp_path):
    rc, lines, stderr = _run_eval(f"--workdir={tmp_path}", "--config.optimizer.learnig_rate=1")
    assert rc == 1 and "AttributeError" not in stderr
    assert lines[-1].startswith("error: ConfigKeyError: unknown config key 'optimizer.learnig_rate'")
    assert "did you mean 'optimizer.lr'" in lines[-1]


# ------------------------------------------------------------------------------- temporary directories
def test_dataset_preparation_leaves_no_temporary_directory(tmp_path, monkeypatch):
    from psa_jax.data.pose_pipeline import build_coco_keypoints
    from psa_jax.data.synthetic_coco import write_synthetic_coco

    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # where tfds's mkdtemp would land
    write_synthetic_coco(tmp_path / "manual", num_train=2, num_val=1, image_size=(48, 48))
    data_dir = tmp_path / "data"
    build_coco_keypoints(tmp_path / "manual", data_dir)
    assert list(private_tmp.iterdir()) == []
    assert sorted(p.name for p in data_dir.iterdir()) == ["coco_keypoints"]  # no downloads/extracted
    empty = [str(root) for root, dirs, files in os.walk(tmp_path) if not dirs and not files and root != str(private_tmp)]
    assert empty == []


def test_cityscapes_builder_leaves_no_temporary_directory(tmp_path, monkeypatch):
    from psa_jax.data import cityscapes

    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    cityscapes._builder(tmp_path / "data")  # unprepared: tfds looks its info up through mkdtemp('tfds')
    assert tempfile.tempdir == str(private_tmp)
    assert list(private_tmp.iterdir()) == []
