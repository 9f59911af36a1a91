"""Shared grain input machinery for the pose and segmentation pipelines.

Both tasks read a random-access source (a `tfds.data_source`, or any object with `__len__` and
`__getitem__`) and turn records into fixed-shape NumPy batches. This module owns the parts that
must be identical for both: per-process sharding, deterministic shuffling, padding of evaluation
shards, batching and the hand-over to a global `jax.Array`.

Determinism: a training element is a pure function of `(seed, position in the global stream)`:
grain shuffles the whole source with `seed` (a new permutation each epoch) and `random_map`
derives the per-element `np.random.Generator` from the same seed and the element's global index.
Global batch `s` is elements `[s * B, (s + 1) * B)` of that stream whatever the process layout,
so a run on 1 process and a run on 4 see the same global batches, and a run resumed on another
layout continues the same data order from the step (`start_step`). The iterator state is the
position in this process's stream only (`{'next_index': n}`), so it can also be saved with the
checkpoint and restored in a fresh process of the same layout.

Multi-host: process `i` of `P` computes rows `[i * B / P, (i + 1) * B / P)` of every global batch
(each process reads and augments only its own rows; every process needs access to the whole
source, as with tfds data sources on a shared file system or bucket); `global_batch` assembles
the per-process rows into one batch-sharded global array (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

Record = Any
Example = dict[str, np.ndarray]

__all__ = ["train_dataset", "eval_dataset", "global_batch", "default_read_options", "process_layout"]


def default_read_options(num_threads: int = 2, prefetch: int = 8) -> grain.ReadOptions:
    """Reader threads and a small prefetch buffer (default 2 and 8 elements).

    grain's default prefetch buffer can hold gigabytes of decoded Cityscapes images (per worker
    process); a small explicit buffer keeps host memory bounded (figures in benchmarks/NOTES.md).
    """
    return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)


def process_layout(process_index: int | None = None, process_count: int | None = None) -> tuple[int, int]:
    """Returns `(process_index, process_count)`, defaulting to this JAX process."""
    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process_index={index} must lie in [0, process_count={count})")
    return index, count


def _per_process_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size < process_count or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of the number of "
            f"JAX processes ({process_count}); change config.batch_size")
    return global_batch_size // process_count


def train_dataset(
    source: Sequence[Record],
    transform: Callable[[Record, np.random.Generator], Example],
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
    worker_count: int = 0,
    start_step: int = 0,
) -> grain.IterDataset:
    """An infinite, shuffled, augmented and batched training stream: this process's rows of
    every global batch.

    Args:
      source: random-access records (`len(source)`, `source[i]`).
      transform: `(record, rng) -> dict of np.ndarray`, the augmentation + target encoding; all of
        its randomness must come from `rng` for the stream to be reproducible.
      global_batch_size: examples per step summed over all processes (B).
      seed: shuffling and augmentation seed.
      process_index, process_count: this process's rows; default: the JAX process layout.
      read_options: grain reader threads / prefetch (default `default_read_options()`).
      worker_count: >0 moves the transform into that many worker processes (`mp_prefetch`).
      start_step: the first global batch yielded (resuming at step `start_step` on any layout).

    Returns:
      A `grain.IterDataset`; `iter()` of it yields dicts with a leading batch dimension of
      `B // process_count` (rows `[i * B / P, (i + 1) * B / P)` of global batch `start_step`,
      then `start_step + 1`, ...) and supports `get_state()` / `set_state()`.
    """
    index, count = process_layout(process_index, process_count)
    local_batch = _per_process_batch(global_batch_size, count)
    if len(source) == 0:
        raise ValueError("the training source is empty: check the dataset split and its filters")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
    stream = grain.MapDataset.source(source).seed(seed).shuffle().repeat().random_map(transform)
    first = start_step * local_batch
    # Local element k is row (index * b + k % b) of global batch (k // b).
    rows = grain.MapDataset.range(first, first + (len(stream) - global_batch_size) // global_batch_size * local_batch)
    ds = rows.map(_GlobalRows(stream, global_batch_size, local_batch, index))
    ds = ds.batch(local_batch, drop_remainder=True)
    it_ds = ds.to_iter_dataset(read_options or default_read_options())
    if worker_count > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it_ds


class _GlobalRows:
    """Maps this process's element index k to its element of the global stream (picklable for
    grain's worker processes)."""

    def __init__(self, stream: grain.MapDataset, global_batch_size: int, local_batch: int, process_index: int):
        self.stream, self.global_batch_size = stream, global_batch_size
        self.local_batch, self.process_index = local_batch, process_index

    def __call__(self, k: int) -> Example:
        step, row = divmod(int(k), self.local_batch)
        return self.stream[step * self.global_batch_size + self.process_index * self.local_batch + row]


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags. train.py parses them (absl `app.run`); code that
    imports this pipeline elsewhere (a notebook, another trainer) never did, and grain would fail
    with `UnparsedFlagAccessError` in its workers: use the flags' defaults then."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class _PaddedShard(Sequence):
    """This process's records `source[index::count]`, padded to `length` with the last one.

    Each element is `(record, valid)`; padding elements repeat the last real record of the shard
    (or of the whole source, for an empty shard) with `valid=False`.
    """

    def __init__(self, source: Sequence[Record], index: int, count: int, length: int):
        self._source = source
        self._indices = range(index, len(source), count)
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> tuple[Record, bool]:
        if not 0 <= i < self._length:
            raise IndexError(i)
        if i < len(self._indices):
            return self._source[self._indices[i]], True
        last = self._indices[-1] if len(self._indices) else len(self._source) - 1
        return self._source[last], False


def eval_dataset(
    source: Sequence[Record],
    transform: Callable[[Record], Example],
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
    """A single ordered pass over this process's shard, in equal-sized padded batches.

    Every process yields the same number of batches (so that collective evaluation steps line
    up); the last batches are padded with copies of the last record and every batch carries a
    boolean `'valid'` field (`False` on padding) that evaluators must use as a mask.

    Args:
      source: random-access records.
      transform: `record -> dict of np.ndarray` (deterministic preprocessing).
      batch_size: examples per batch on this process.
    """
    index, count = process_layout(process_index, process_count)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    n = len(source)
    if n == 0:
        raise ValueError("the evaluation source is empty: check the dataset split and its filters")
    per_process = -(-n // count)
    padded = -(-per_process // batch_size) * batch_size

    def _apply(item: tuple[Record, bool]) -> Example:
        record, valid = item
        example = dict(transform(record))
        example["valid"] = np.asarray(valid)
        return example

    ds = grain.MapDataset.source(_PaddedShard(source, index, count, padded)).map(_apply)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.to_iter_dataset(read_options or default_read_options())


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Assembles each process's local batch into global arrays sharded along the batch axis.

    Args:
      local_batch: this process's slice of the batch, every leaf with the same leading size.
      sharding: e.g. `NamedSharding(mesh, P('data'))`; leaves of higher rank get the same
        leading-axis partitioning (trailing axes replicated).
    """
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
