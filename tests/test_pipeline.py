"""The shared grain machinery: sharding, determinism, padding and resumable state."""
import numpy as np
import pytest

from psa_jax.data import pipeline


def _augment(record, rng):
    return {"x": np.asarray(record, np.int32), "noise": np.asarray(rng.random(), np.float32)}


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_train_stream_is_deterministic_and_resumable():
    src = list(range(37))
    make = lambda: iter(pipeline.train_dataset(src, _augment, global_batch_size=4, seed=7,
                                               process_index=0, process_count=1))
    a = _take(make(), 12)
    b = _take(make(), 12)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["x"], y["x"])
        np.testing.assert_array_equal(x["noise"], y["noise"])
    # Resume from a saved position in a fresh iterator: the same continuation.
    it = make()
    _take(it, 5)
    state = it.get_state()
    rest = _take(it, 4)
    resumed = make()
    resumed.set_state(state)
    for x, y in zip(rest, _take(resumed, 4)):
        np.testing.assert_array_equal(x["x"], y["x"])
        np.testing.assert_array_equal(x["noise"], y["noise"])
    # A different seed gives a different order.
    other = _take(iter(pipeline.train_dataset(src, _augment, global_batch_size=4, seed=8,
                                              process_index=0, process_count=1)), 3)
    assert any(not np.array_equal(x["x"], y["x"]) for x, y in zip(a[:3], other))


def test_worker_processes_give_the_same_stream_outside_an_absl_app():
    """`worker_count` moves the transform into processes; batches and order do not change, and no
    absl flag parsing is needed (pytest, like a notebook, never runs absl's `app.run`)."""
    src = list(range(23))
    make = lambda workers: iter(pipeline.train_dataset(src, _augment, global_batch_size=4, seed=3, process_index=0,
                                                       process_count=1, worker_count=workers))
    threads = _take(make(0), 7)
    it = make(2)
    processes = _take(it, 7)
    for x, y in zip(threads, processes, strict=True):
        np.testing.assert_array_equal(x["x"], y["x"])
        np.testing.assert_array_equal(x["noise"], y["noise"])
    del it


def test_train_epoch_covers_every_record_once_over_the_processes():
    src = list(range(24))
    seen = []
    for p in range(3):
        it = iter(pipeline.train_dataset(src, _augment, global_batch_size=6, seed=0,
                                         process_index=p, process_count=3))
        epoch = np.concatenate([b["x"] for b in _take(it, 4)])  # 4 steps x 2 rows of the 24-record epoch
        assert len(set(epoch.tolist())) == 8
        seen.append(set(epoch.tolist()))
    assert set().union(*seen) == set(src)
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


def test_global_batches_do_not_depend_on_the_process_layout():
    """Process i of P yields rows [i B/P, (i+1) B/P) of the same global batches (records and
    augmentation), so 1 process and 3 processes train on the same data."""
    src = list(range(29))
    one = _take(iter(pipeline.train_dataset(src, _augment, global_batch_size=6, seed=5,
                                            process_index=0, process_count=1)), 7)
    parts = [_take(iter(pipeline.train_dataset(src, _augment, global_batch_size=6, seed=5,
                                               process_index=p, process_count=3)), 7) for p in range(3)]
    for step in range(7):
        for key in ("x", "noise"):
            np.testing.assert_array_equal(np.concatenate([parts[p][step][key] for p in range(3)]), one[step][key])


def test_start_step_continues_the_stream_on_another_layout():
    src = list(range(17))
    full = _take(iter(pipeline.train_dataset(src, _augment, global_batch_size=4, seed=2,
                                             process_index=0, process_count=1)), 9)
    resumed = [_take(iter(pipeline.train_dataset(src, _augment, global_batch_size=4, seed=2, process_index=p,
                                                 process_count=2, start_step=6)), 3) for p in range(2)]
    for k in range(3):
        for key in ("x", "noise"):
            np.testing.assert_array_equal(np.concatenate([resumed[0][k][key], resumed[1][k][key]]), full[6 + k][key])
    with pytest.raises(ValueError, match="start_step"):
        pipeline.train_dataset(src, _augment, global_batch_size=4, seed=2, start_step=-1, process_count=1,
                               process_index=0)


def test_eval_shards_are_padded_disjoint_and_complete():
    src = list(range(11))
    shards = []
    lengths = []
    for p in range(3):
        batches = list(pipeline.eval_dataset(src, lambda r: {"x": np.asarray(r)}, batch_size=2,
                                             process_index=p, process_count=3))
        lengths.append(len(batches))
        x = np.concatenate([b["x"] for b in batches])
        valid = np.concatenate([b["valid"] for b in batches])
        assert valid.dtype == bool
        shards.append(x[valid].tolist())
    assert len(set(lengths)) == 1, "every process must run the same number of eval steps"
    flat = sorted(sum(shards, []))
    assert flat == src


def test_bad_batch_size_names_the_setting():
    with pytest.raises(ValueError, match="global_batch_size"):
        pipeline.train_dataset(list(range(8)), _augment, global_batch_size=3, seed=0,
                               process_index=0, process_count=2)
