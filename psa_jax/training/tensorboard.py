"""A small TensorBoard event-file writer for scalars, with no TensorFlow, TensorBoard or protobuf import.

An event file is a TFRecord file (`tensorflow/core/lib/io/record_writer.cc`): each record is

    uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

with CRC32C the Castagnoli CRC (reflected polynomial 0x82F63B78) and
`masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8  (mod 2^32)`.

Each record's data is a serialised `tensorflow.Event` protocol buffer (`tensorflow/core/util/event.proto`),
encoded here by hand with the protobuf wire format (tag = field_number << 3 | wire_type):

    Event      { double wall_time = 1; int64 step = 2;
                 oneof what { string file_version = 3; Summary summary = 5; SessionLog session_log = 7; } }
    Summary    { repeated Value value = 1; }
    Value      { string tag = 1; float simple_value = 2; }
    SessionLog { SessionStatus status = 1; }   (START = 1)

(`Event` field 6 is the deprecated `LogMessage`, not the session log.)

The first record of a file holds `file_version = "brain.Event:2"`. Version 2 tells TensorBoard's
event accumulator (with its default `purge_orphaned_data=True`) to drop, on a `SessionLog START`
event at step s, every event already loaded with step >= s: `SummaryWriter(..., start_step=s)`
writes one, so a run resumed from a checkpoint at step s - 1 hides the curves that the crashed run
had logged after that checkpoint.

Files are named `events.out.tfevents.<int unix time>.<hostname>.<pid>.<counter>` (the counter
keeps two writers opened in the same second apart) and written through `etils.epath`, so the log
directory may be a `gs://` path. Records are buffered and flushed every `flush_every_records`
records, every `flush_every_secs` seconds (checked on each write), on `flush()` and on `close()`.
The file stays open for the writer's life; on `gs://`, epath uses TensorFlow's gfile when TensorFlow
is installed, which uploads the file so far on every flush (with the fsspec/gcsfs backend the object
appears at `close()`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any, Self

from etils import epath

__all__ = ["FILE_VERSION", "SummaryWriter", "crc32c", "masked_crc32c", "scalar_event", "tfrecord"]

FILE_VERSION = "brain.Event:2"
_CRC32C_POLY = 0x82F63B78  # Castagnoli polynomial 0x1EDC6F41, bit-reversed
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of `data`, continuing from a previous `crc` (0 to start).

    Reflected, table driven, initial value and final xor 0xFFFFFFFF; `crc32c(b"123456789") == 0xE3069283`.
    """
    crc ^= _U32
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate the CRC32C right by 15 bits and add 0xa282ead8 (mod 2^32)."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# ---------------------------------------------------------------------------- protobuf wire format
def _varint(value: int) -> bytes:
    value &= _U64  # negative int64 -> two's complement, 10 bytes
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _summary_value(tag: str, value: float) -> bytes:
    return _length_delimited(1, tag.encode("utf-8")) + _key(2, 5) + struct.pack("<f", value)


def _event(wall_time: float, step: int, *, file_version: str | None = None, summary: bytes | None = None,
           session_log: bytes | None = None) -> bytes:
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode("utf-8"))
    if summary is not None:
        out += _length_delimited(5, summary)
    if session_log is not None:
        out += _length_delimited(7, session_log)
    return out


def scalar_event(step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> bytes:
    """A serialised `Event` whose `Summary` holds one `simple_value` (float32) per tag."""
    summary = b"".join(_length_delimited(1, _summary_value(tag, float(v))) for tag, v in scalars.items())
    return _event(time.time() if wall_time is None else wall_time, step, summary=summary)


def _session_start_event(step: int, wall_time: float) -> bytes:
    return _event(wall_time, step, session_log=_key(1, 0) + _varint(1))  # SessionLog.status = START


_FILE_COUNTER = itertools.count()


class SummaryWriter:
    """Writes scalar summaries to a new TensorBoard event file in `logdir` (local or `gs://`).

    Args:
      logdir: folder of the event file; created if missing.
      start_step: if given, a `SessionLog START` event at this step follows the file-version record,
        so TensorBoard discards events of earlier files with step >= start_step (a resumed run
        passes its first new step, i.e. the checkpoint step + 1).
      flush_every_records: flush after this many buffered records.
      flush_every_secs: flush on a write when the last flush is older than this.

    Use `scalars(step, {tag: value})`, `flush()`, `close()` (or `with SummaryWriter(...)`).
    Non-numeric values are refused; NaN and inf are written as such.
    """

    def __init__(self, logdir: str | os.PathLike, *, start_step: int | None = None, flush_every_records: int = 50,
                 flush_every_secs: float = 30.0):
        if flush_every_records < 1:
            raise ValueError(f"flush_every_records must be >= 1, got {flush_every_records}")
        self.logdir = epath.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_COUNTER)}"
        self.path = self.logdir / name
        self._file: Any = self.path.open("wb")
        self._buffer: list[bytes] = []
        self._flush_every_records = flush_every_records
        self._flush_every_secs = flush_every_secs
        self._last_flush = now
        self._closed = False
        self._append(_event(now, 0, file_version=FILE_VERSION))
        if start_step is not None:
            self._append(_session_start_event(int(start_step), now))
        self.flush()

    def _append(self, event: bytes) -> None:
        if self._closed:
            raise RuntimeError(f"SummaryWriter for {self.path} is closed; open a new one to write more")
        self._buffer.append(tfrecord(event))

    def scalars(self, step: int, values: Mapping[str, Any], wall_time: float | None = None) -> None:
        """Writes one event at `step` holding every `tag: value` of `values` as a float32 scalar."""
        scalars = {}
        for tag, v in values.items():
            if not isinstance(tag, str) or not tag:
                raise ValueError(f"TensorBoard tags must be non-empty strings, got {tag!r}")
            try:
                scalars[tag] = float(v)
            except (TypeError, ValueError):
                raise TypeError(f"scalar {tag!r} must be a number, got {type(v).__name__}: {v!r}") from None
        if not scalars:
            return
        self._append(scalar_event(step, scalars, wall_time))
        if (len(self._buffer) >= self._flush_every_records
                or time.time() - self._last_flush >= self._flush_every_secs):
            self.flush()

    def scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Writes one scalar (`scalars(step, {tag: value})`)."""
        self.scalars(step, {tag: value}, wall_time)

    def flush(self) -> None:
        """Writes the buffered records to the file and flushes it."""
        if self._closed:
            return
        if self._buffer:
            self._file.write(b"".join(self._buffer))
            self._buffer.clear()
        self._file.flush()
        self._last_flush = time.time()

    def close(self) -> None:
        """Flushes and closes the file (idempotent)."""
        if self._closed:
            return
        self.flush()
        self._file.close()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # A writer dropped without close() still leaves its buffered records in the file.
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):  # e.g. at interpreter shutdown: nothing sensible to report
                self.close()
