"""Checkpointer.restore falls back past damaged checkpoints for 'latest'/'best' (with a warning
naming the damaged step directory), never for an explicit step; read-only checkpointers create
nothing; asyncio's 'Event loop is closed' noise after a failed read is dropped."""

from __future__ import annotations

import asyncio
import logging
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from psa_jax.training import checkpointing
from psa_jax.training.checkpointing import (
    Checkpointer,
    CheckpointError,
    abstract_like,
    parse_step,
)

STEPS = (1, 2, 3)
AP = {1: 0.1, 2: 0.2, 3: 0.3}  # step 3 is both the latest and the best


def _state(step: int) -> dict:
    return {"w": jnp.full((4, 3), float(step)), "b": jnp.arange(3.0) + step}


def _target() -> dict:
    return abstract_like(_state(0))


@pytest.fixture
def ckpt_dir(tmp_path):
    directory = tmp_path / "checkpoints"
    with Checkpointer(directory, keep_latest=5, keep_best=0, best_metric="AP", async_save=False) as ck:
        for s in STEPS:
            ck.save(s, model=_state(s), meta={"source": "test"}, metrics={"AP": AP[s]})
    return directory


def _damage_arrays(step_dir, how: str) -> None:
    files = [p for p in (step_dir / "model").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array data files under {step_dir / 'model'}"
    for p in files:
        if how == "truncate":
            p.write_bytes(b"")
        else:
            p.unlink()


def _restore(directory, step, **kw):
    with Checkpointer(directory, keep_latest=5, keep_best=0, best_metric="AP", **kw) as ck:
        return ck.restore(step, model=_target())


@pytest.mark.parametrize("damage", ["truncate", "delete", "meta"])
@pytest.mark.parametrize("step", ["latest", None, "best"])
def test_damaged_newest_falls_back_to_previous_step(ckpt_dir, damage, step, caplog):
    if damage == "meta":
        (ckpt_dir / "3" / "meta" / "metadata").write_text("{not json")
    else:
        _damage_arrays(ckpt_dir / "3", damage)
    with caplog.at_level(logging.WARNING, logger="psa_jax.checkpoint"):
        out = _restore(ckpt_dir, step)
    assert out["step"] == 2
    np.testing.assert_array_equal(np.asarray(out["model"]["w"]), np.full((4, 3), 2.0))
    np.testing.assert_array_equal(np.asarray(out["model"]["b"]), np.arange(3.0) + 2)
    assert out["meta"]["step"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    damaged = str(ckpt_dir / "3")
    assert any(damaged in w and "unreadable" in w for w in warnings), warnings
    assert any("restored step 2" in w and damaged in w for w in warnings), warnings


def test_explicit_step_never_falls_back(ckpt_dir):
    _damage_arrays(ckpt_dir / "3", "truncate")
    with pytest.raises(CheckpointError, match=r"step 3") as info:
        _restore(ckpt_dir, 3)
    assert str(ckpt_dir) in str(info.value) and "tensorstore_spec" not in str(info.value)
    assert _restore(ckpt_dir, "2")["step"] == 2  # the undamaged steps still restore as asked


def test_every_step_damaged_is_one_clear_error(ckpt_dir):
    for s in STEPS:
        _damage_arrays(ckpt_dir / str(s), "delete")
    with pytest.raises(CheckpointError) as info:
        _restore(ckpt_dir, "latest")
    message = str(info.value)
    assert all(f"step {s}:" in message for s in STEPS) and "\n" not in message


def test_best_is_the_best_metric_when_readable(ckpt_dir):
    assert _restore(ckpt_dir, "best")["step"] == 3
    with Checkpointer(ckpt_dir, keep_latest=5, keep_best=0, best_metric="AP", read_only=True) as ck:
        assert ck.candidates("best") == [3, 2, 1]
        assert ck.candidates(1) == [1]


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "", True])
def test_invalid_step_lists_the_valid_forms_and_steps(ckpt_dir, bad):
    with Checkpointer(ckpt_dir, read_only=True) as ck, pytest.raises(CheckpointError) as info:
        ck.resolve(bad)
    message = str(info.value)
    assert "'best', 'latest'" in message and "[1, 2, 3]" in message


def test_parse_step():
    assert parse_step(None) == "latest"
    assert parse_step(" Best ") == "best"
    assert parse_step("0012") == 12
    assert parse_step(7) == 7
    with pytest.raises(ValueError, match="'best', 'latest'"):
        parse_step("last")


def test_missing_step_names_the_available_ones(ckpt_dir):
    with Checkpointer(ckpt_dir, read_only=True) as ck, pytest.raises(CheckpointError, match=r"available steps: \[1, 2, 3\]"):
        ck.resolve(9)


def test_read_only_creates_nothing(tmp_path):
    missing = tmp_path / "no_such_workdir" / "checkpoints"
    with pytest.raises(CheckpointError, match="train one with"):
        Checkpointer(missing, read_only=True)
    assert not (tmp_path / "no_such_workdir").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with Checkpointer(empty, read_only=True) as ck:
        with pytest.raises(CheckpointError, match="no checkpoint in"):
            ck.restore("latest", model=_target())
        with pytest.raises(CheckpointError, match="read-only"):
            ck.save(1, model=_state(1))
    assert list(empty.iterdir()) == []


def test_close_all_closes_open_checkpointers(tmp_path):
    ck = Checkpointer(tmp_path / "c", async_save=False)
    assert ck in checkpointing._OPEN
    checkpointing.close_all()
    assert ck._closed and ck not in checkpointing._OPEN
    ck.close()  # idempotent


def _closed_loop_error() -> BaseException:
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(lambda: None)
    except RuntimeError as err:
        return err
    raise AssertionError("a closed loop accepted a callback")


def test_closed_event_loop_noise_is_dropped_and_other_errors_pass(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpointing._drop_closed_loop_callbacks()
    checkpointing._drop_closed_loop_callbacks()  # installed once
    hook = sys.unraisablehook
    assert hook is not seen.append
    noise = _closed_loop_error()
    hook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=noise, exc_traceback=noise.__traceback__,
                               err_msg=None, object=None))
    assert seen == []
    other = RuntimeError("Event loop is closed")  # same text, not raised by asyncio: passed on
    try:
        raise other
    except RuntimeError as err:
        other = err
    record = types.SimpleNamespace(exc_type=RuntimeError, exc_value=other, exc_traceback=other.__traceback__,
                                   err_msg=None, object=None)
    hook(record)
    assert seen == [record]


def test_resumed_run_replaces_the_damaged_step(ckpt_dir):
    _damage_arrays(ckpt_dir / "3", "truncate")
    with Checkpointer(ckpt_dir, keep_latest=5, keep_best=0, async_save=False) as ck:
        assert ck.restore("latest", model=_target())["step"] == 2
        ck.save(3, model=_state(30), meta={"source": "resumed"})
    out = _restore(ckpt_dir, 3)
    assert out["meta"]["source"] == "resumed"
    np.testing.assert_array_equal(np.asarray(out["model"]["w"]), np.full((4, 3), 30.0))


def test_ema_item_round_trips_and_read_meta_falls_back(tmp_path):
    directory = tmp_path / "c"
    with Checkpointer(directory, keep_latest=5, keep_best=0, async_save=False) as ck:
        for s in (1, 2):
            ck.save(s, model=_state(s), ema=_state(10 * s), meta={"process_count": 1})
    (directory / "2" / "meta" / "metadata").write_text("garbage")
    with Checkpointer(directory, keep_latest=5, keep_best=0) as ck:
        assert ck.read_meta("latest")["step"] == 1
        with pytest.raises(CheckpointError, match="could not read meta"):
            ck.read_meta(2)
        out = ck.restore("latest", model=_target(), ema=_target())
    assert out["step"] == 1
    np.testing.assert_array_equal(np.asarray(out["ema"]["w"]), np.full((4, 3), 10.0))
    np.testing.assert_array_equal(np.asarray(out["model"]["w"]), np.full((4, 3), 1.0))
