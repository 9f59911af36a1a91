"""Starting a multi-process job (a TPU pod slice, a multi-GPU cluster) from `config.distributed`.

Every process of a job runs the same `train.py` command. Before JAX touches a device, each calls
`initialize(config.distributed)`, which calls `jax.distributed.initialize` when the job has more
than one process:

- `initialize='auto'` (default): initialise when `coordinator_address` / `num_processes` /
  `process_id` are set, or when a cluster launcher is detected (`detect_cluster`); a plain
  single-process run does nothing.
- `'always'`: initialise (JAX detects the cluster itself when the three values are left empty).
- `'never'`: one process, whatever the environment says.

Explicit values (one process per GPU, launched by hand) must be given together:
`coordinator_address='host:port'` of process 0, `num_processes`, and each process's `process_id`.
On CPU the processes exchange collectives through gloo (`jax_cpu_collectives_implementation`).
A process that stops sending heartbeats for `heartbeat_timeout_s` seconds makes the others fail
with an error instead of waiting forever.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax

__all__ = ["detect_cluster", "initialize"]

logger = logging.getLogger(__name__)


def _more_than_one(value: str | None) -> bool:
    try:
        return int(value or "0") > 1
    except ValueError:
        return False


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The launcher of a multi-process job from its environment variables, or None.

    'slurm' (`SLURM_JOB_ID` with `SLURM_NTASKS` > 1), 'mpi' (Open MPI's `OMPI_COMM_WORLD_SIZE` > 1),
    'tpu' (a Cloud TPU VM with more than one worker in `TPU_WORKER_HOSTNAMES`). JAX's own cluster
    detection then finds the coordinator and this process's id.
    """
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_ID") and _more_than_one(env.get("SLURM_NTASKS")):
        return "slurm"
    if _more_than_one(env.get("OMPI_COMM_WORLD_SIZE")):
        return "mpi"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
        return "tpu"
    return None


def initialize(dist: Any, environ: Mapping[str, str] | None = None) -> bool:
    """Starts `jax.distributed` as `dist` (the `config.distributed` group) asks; returns whether
    this is a multi-process run. Must run before anything creates a JAX backend."""
    mode = dist.initialize
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"config.distributed.initialize={mode!r} is not one of 'auto', 'always', 'never'")
    given = {"coordinator_address": dist.coordinator_address or None,
             "num_processes": dist.num_processes if dist.num_processes > 0 else None,
             "process_id": dist.process_id if dist.process_id >= 0 else None}
    explicit = {k: v for k, v in given.items() if v is not None}
    if mode == "never":
        if explicit:
            raise ValueError(f"config.distributed.initialize='never' but {sorted(explicit)} are set; "
                             "drop them or use initialize='auto'")
        return False
    cluster = detect_cluster(environ)
    if mode == "auto" and not explicit and cluster is None:
        return False
    if explicit and len(explicit) < 3:
        missing = sorted(set(given) - set(explicit))
        raise ValueError(f"config.distributed: {sorted(explicit)} set but {missing} not; give coordinator_address "
                         "('host:port' of process 0), num_processes and process_id together, or none of them to "
                         "let JAX detect the cluster (SLURM, Open MPI, Cloud TPU)")
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    # CPU processes exchange collectives through gloo (no effect on GPU/TPU); set before the backend starts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logger.info("starting jax.distributed (%s)", ", ".join(f"{k}={v}" for k, v in explicit.items())
                or f"detected: {cluster or 'by JAX'}")
    jax.distributed.initialize(**explicit, heartbeat_timeout_seconds=int(dist.heartbeat_timeout_s))
    logger.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                jax.local_device_count(), jax.device_count())
    return jax.process_count() > 1
