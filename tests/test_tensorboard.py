"""psa_jax.training.tensorboard: CRC32C, TFRecord framing and Event encoding, read back with TensorFlow."""

import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from psa_jax.training import tensorboard as tb

tf = pytest.importorskip("tensorflow")


def _events(path):
    return list(tf.compat.v1.train.summary_iterator(os.fspath(path)))


def _record_count(path) -> int:
    """Number of complete TFRecords in a file (framing only)."""
    data, n, pos = pathlib.Path(path).read_bytes(), 0, 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        pos += 12 + length + 4
        n += pos <= len(data)
    return n


def test_crc32c_golden_values():
    # RFC 3720 (iSCSI) appendix B.4 and the common check value of CRC-32C.
    assert tb.crc32c(b"123456789") == 0xE3069283
    assert tb.crc32c(b"") == 0
    assert tb.crc32c(bytes(32)) == 0x8A9136AA
    assert tb.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tb.crc32c(bytes(range(32))) == 0x46DD794E
    # Continuing a CRC over a split message gives the CRC of the whole.
    assert tb.crc32c(b"56789", tb.crc32c(b"1234")) == 0xE3069283


def test_tfrecord_framing_is_byte_identical_to_tensorflow(tmp_path):
    payloads = [b"", b"x", b"123456789", bytes(range(256)) * 3]
    ref = tmp_path / "ref.tfrecord"
    with tf.io.TFRecordWriter(os.fspath(ref)) as w:
        for p in payloads:
            w.write(p)
    assert b"".join(tb.tfrecord(p) for p in payloads) == ref.read_bytes()


def test_scalars_read_back_by_tensorflow(tmp_path):
    with tb.SummaryWriter(tmp_path / "logs", flush_every_records=1000) as w:
        w.scalars(3, {"train/loss": 1.5, "train/lr": np.float32(0.1)})
        w.scalar("eval/AP", 0.75, 10)
        w.scalar("train/loss", float("nan"), 12)
        w.scalar("big", 2.0, 2**40)  # int64 steps beyond 32 bits
        w.scalar("neg", -3.25, -1)  # negative varint (two's complement)
    files = sorted((tmp_path / "logs").iterdir())
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents.")
    events = _events(files[0])
    assert events[0].file_version == tb.FILE_VERSION and not events[0].HasField("summary")
    got = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert got[:3] == [(3, "train/loss", 1.5), (3, "train/lr", pytest.approx(0.1, rel=1e-7)), (10, "eval/AP", 0.75)]
    assert got[3][:2] == (12, "train/loss") and np.isnan(got[3][2])
    assert got[4:] == [(2**40, "big", 2.0), (-1, "neg", -3.25)]
    assert all(e.wall_time > 1.6e9 for e in events)


def test_session_start_event_marks_a_resumed_run(tmp_path):
    with tb.SummaryWriter(tmp_path, start_step=7) as w:
        w.scalar("train/loss", 0.5, 7)
    events = _events(w.path)
    assert events[0].file_version == tb.FILE_VERSION
    assert events[1].session_log.status == tf.compat.v1.SessionLog.START and events[1].step == 7
    assert [(e.step, e.summary.value[0].tag) for e in events[2:]] == [(7, "train/loss")]


def test_tensorflow_reader_rejects_a_corrupted_record(tmp_path):
    """TF's reader checks both CRCs: ours pass above, and one flipped data byte is caught."""
    with tb.SummaryWriter(tmp_path) as w:
        w.scalar("a", 1.0, 1)
    data = bytearray(w.path.read_bytes())
    data[-6] ^= 0x01  # inside the last record's data (a float byte)
    bad = tmp_path / "bad" / w.path.name
    bad.parent.mkdir()
    bad.write_bytes(bytes(data))
    with pytest.raises(tf.errors.DataLossError):
        _events(bad)


def test_buffering_flushes_every_n_records_and_on_close(tmp_path):
    w = tb.SummaryWriter(tmp_path, flush_every_records=3, flush_every_secs=1e9)
    assert _record_count(w.path) == 1  # the file-version record, flushed at open
    w.scalar("a", 1.0, 1)
    w.scalar("a", 2.0, 2)
    assert _record_count(w.path) == 1
    w.scalar("a", 3.0, 3)
    assert _record_count(w.path) == 4
    w.scalar("a", 4.0, 4)
    w.flush()
    assert _record_count(w.path) == 5
    w.scalar("a", 5.0, 5)
    w.close()
    w.close()  # idempotent
    assert [e.summary.value[0].simple_value for e in _events(w.path)[1:]] == [1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(RuntimeError, match="closed"):
        w.scalar("a", 6.0, 6)


def test_time_based_flush(tmp_path):
    w = tb.SummaryWriter(tmp_path, flush_every_records=1000, flush_every_secs=0.0)
    w.scalar("a", 1.0, 1)
    assert _record_count(w.path) == 2
    w.close()


def test_two_writers_in_one_second_get_different_files(tmp_path):
    a, b = tb.SummaryWriter(tmp_path), tb.SummaryWriter(tmp_path)
    a.scalar("x", 1.0, 1)
    b.scalar("x", 2.0, 1)
    a.close()
    b.close()
    assert a.path != b.path and len(list(tmp_path.iterdir())) == 2
    assert a.path.name.split(".")[3].isdigit() and a.path.name.split(".")[-1].isdigit()
    assert _events(a.path)[1].summary.value[0].simple_value == 1.0
    assert _events(b.path)[1].summary.value[0].simple_value == 2.0


def test_bad_input_is_refused_with_the_tag_named(tmp_path):
    with tb.SummaryWriter(tmp_path) as w:
        with pytest.raises(TypeError, match="'train/name'"):
            w.scalars(1, {"train/name": "abc"})
        with pytest.raises(ValueError, match="tags must be non-empty strings"):
            w.scalars(1, {"": 1.0})
    with pytest.raises(ValueError, match="flush_every_records"):
        tb.SummaryWriter(tmp_path, flush_every_records=0)


def test_import_needs_no_tensorflow_tensorboard_or_protobuf():
    code = ("import sys, psa_jax.training.tensorboard as t; t.crc32c(b'x'); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorboard') "
            "or m.startswith('google.protobuf')); print(bad); assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr + out.stdout
