"""Ahead-of-time compilation of the train step."""

from __future__ import annotations

import logging
import time

import jax

from psa_jax.runtime.host_memory import trim_host_memory

__all__ = ["compile_step"]

logger = logging.getLogger(__name__)


def compile_step(step_fn, *args, clear_caches: bool = True):
    """Compiles the jitted `step_fn` ahead of time for the (fixed) shapes of `args` and frees
    what JAX kept from tracing and lowering it.

    With `clear_caches`, `jax.clear_caches()` drops the jaxprs and lowered modules of every traced
    function; the compiled step is returned, so it is not compiled twice, but other jitted
    functions trace again on their next call. Then the compiler's freed heap goes back to the OS
    (`trim_host_memory`). An AOT-compiled step accepts only the shapes it was compiled for: every
    training batch must have the same shapes (the pipelines drop the last partial batch).
    """
    t = time.perf_counter()
    compiled = step_fn.lower(*args).compile()
    if clear_caches:
        jax.clear_caches()
    trim_host_memory()
    logger.info("train step compiled in %.1f s", time.perf_counter() - t)
    return compiled
