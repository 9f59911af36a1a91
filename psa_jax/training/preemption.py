"""Graceful stop on SIGTERM / SIGINT, and decisions every process of a job takes together.

A preemptible TPU VM or a cluster scheduler sends SIGTERM some seconds before it kills a job;
Ctrl-C sends SIGINT. `StopSignals` turns the first such signal into a request: the loop finishes
the steps it has dispatched, writes a checkpoint at the last one, logs where it is and stops with
`Preempted` (train.py exits with `EXIT_PREEMPTED`). A second signal exits at once with the
signal's usual status (128 + signal number); orbax writes each checkpoint into a temporary
directory and renames it when complete, so earlier checkpoints are never damaged.

Multi-process: each process only knows its own signals and clock. `HostFlags` combines per-step
flags (stop requested, checkpoint time reached) of every process with one tiny jitted max over
the mesh, dispatched with the step and read when that step completes, so every process reads the
same values at the same step and no step waits on the host. (JAX's preemption sync point,
`multihost_utils.reached_preemption_sync_point`, only covers SIGTERM delivered through its
coordination service; this covers SIGINT and time-based checkpoints too.)
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["EXIT_PREEMPTED", "Preempted", "StopSignals", "HostFlags"]

logger = logging.getLogger(__name__)

# train.py's exit status after a graceful stop: EX_TEMPFAIL ("try again"), which schedulers can
# map to a requeue; the run resumes from the checkpoint it just wrote.
EXIT_PREEMPTED = 75


class Preempted(Exception):  # noqa: N818  (a stop request, not an error)
    """Training stopped on a signal after writing a checkpoint at `step`."""

    def __init__(self, step: int, signal_name: str, checkpoint: str):
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint written to {checkpoint}. "
                         "Run the same command again to resume.")
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint


class StopSignals:
    """Installs SIGTERM and SIGINT handlers while active (a context manager; the main thread only).

    `requested` becomes True at the first signal; the second signal restores the default action
    and re-raises it, ending the process at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):  # noqa: ARG002
        name = signal.Signals(signum).name
        if self.requested:
            logger.warning("second %s: exiting now (earlier checkpoints are intact)", name)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested, self.signal_name = True, name
        logger.warning("%s received: finishing the dispatched steps, then writing a checkpoint and stopping "
                       "(send it again to exit at once)", name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


class HostFlags:
    """The element-wise max over processes of small per-process int flags, as a device value.

    `combine(flags)` takes this process's flags (a length-`n` int sequence) and returns a
    replicated `jax.Array` of shape (n,) without waiting for it; read it (np.asarray) once the
    step dispatched with it has completed. On one process it returns the flags as NumPy.
    """

    def __init__(self, mesh: jax.sharding.Mesh, n: int):
        self.n = n
        self.multi = jax.process_count() > 1
        if self.multi:
            self._in = NamedSharding(mesh, P(mesh.axis_names))
            self._local = len(self._in.addressable_devices)
            self._max = jax.jit(lambda x: jnp.max(x, axis=0), out_shardings=NamedSharding(mesh, P()))

    def combine(self, flags) -> jax.Array | np.ndarray:
        flags = np.asarray(flags, np.int32).reshape(1, self.n)
        if not self.multi:
            return flags[0]
        x = jax.make_array_from_process_local_data(self._in, np.repeat(flags, self._local, axis=0))
        return self._max(x)
