"""What both peer processes (jax_peer.py, torch_peer.py) measure about themselves and report.

Standard library only: the PyTorch peer runs in its own environment without JAX.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (`ru_maxrss`, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_now_mb() -> float:
    """This process's current resident memory in MiB (NaN where /proc is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return float("nan")


def emit(result: dict, out: str | None) -> dict:
    """Prints the case's JSON record as the last stdout line (what run.py reads); also to `out`."""
    line = json.dumps(result)
    if out:
        Path(out).write_text(line + "\n")
    print(line, flush=True)
    return result
