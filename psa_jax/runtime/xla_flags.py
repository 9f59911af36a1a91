"""Backend-specific XLA settings, applied before JAX initialises its backend.

Call `configure_xla()` at the very start of a program (before the first JAX computation; importing
`jax` is fine, creating an array is not). It does two things:

1. **CPU hosts: oneDNN convolutions.** On XLA:CPU the default fusion path lowers convolutions to
   slow generic code; routing each convolution to oneDNN
   (`--xla_cpu_experimental_onednn_fusion_type=individual_convolution` and taking convolutions
   away from YNNPACK with `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`)
   makes HRNet's convolution-bound train and inference steps markedly faster (measurements in
   `benchmarks/NOTES.md`). The flags are experimental, so they are added only when (a) the
   program will run on the CPU backend and (b) the installed jaxlib knows them (an unknown flag
   in `XLA_FLAGS` aborts the process).
2. **Persistent compilation cache** (`cache_dir`): compiled programs are stored on disk and a
   later process with the same program, flags and jaxlib loads them instead of compiling.

Per-program options (`cpu_compiler_options`, for `jax.jit(..., compiler_options=...)`) choose
XLA:CPU's HLO scheduler for one program: 'memory' (`CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED`) orders
the train step for the smallest live set; XLA's default orders it for concurrency between
independent kernels. The memory scheduler trades a few percent of training speed for a
noticeably smaller XLA temp buffer, most of all with PSA (figures in `benchmarks/NOTES.md`);
train.py uses it on CPU (`config.cpu_scheduler`).

Deciding "will run on CPU" without initialising a backend: `JAX_PLATFORMS` (or `platform=`) is
authoritative when set; otherwise the CPU is assumed only when no accelerator plugin is installed
(`jax_cuda*_plugin`, `jax_rocm*_plugin`, `libtpu`), since JAX would pick that plugin's device
first. GPU and TPU hosts therefore never get the CPU flags.
"""

from __future__ import annotations

import importlib.util
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CPU_ONEDNN_FLAGS", "CPU_SCHEDULERS", "configure_xla", "cpu_compiler_options", "target_platform",
           "jaxlib_has_flags", "enable_compilation_cache", "backend_initialized"]

CPU_ONEDNN_FLAGS: tuple[str, ...] = (
    "--xla_cpu_experimental_onednn_fusion_type=individual_convolution",
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
)

# `cpu_compiler_options(scheduler=...)` names -> XLA's `xla_cpu_scheduler_type` enum values.
CPU_SCHEDULERS: dict[str, str | None] = {
    "default": None,  # XLA's own choice
    "memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    "concurrency": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
}

_ACCELERATOR_PLUGINS: tuple[tuple[str, str], ...] = (
    ("jax_cuda13_plugin", "cuda"), ("jax_cuda12_plugin", "cuda"),
    ("jax_rocm7_plugin", "rocm"), ("jax_rocm60_plugin", "rocm"),
    ("libtpu", "tpu"),
)


def target_platform(platform: str | None = None) -> str:
    """The backend JAX will use, decided without initialising it: 'cpu', 'cuda', 'rocm' or 'tpu'.

    `platform` (e.g. from a config) wins, then the first entry of `JAX_PLATFORMS`, then the first
    installed accelerator plugin; 'cpu' when there is none.
    """
    chosen = platform or os.environ.get("JAX_PLATFORMS", "").split(",")[0].strip()
    if chosen:
        chosen = chosen.lower()
        return "cuda" if chosen == "gpu" else chosen
    for module, name in _ACCELERATOR_PLUGINS:
        if importlib.util.find_spec(module) is not None:
            return name
    return "cpu"


def _jaxlib_binary() -> Path | None:
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in ("libjax_common.so", "xla_extension.so", "_jax.so"):
        candidate = root / name
        if candidate.exists() and candidate.stat().st_size > 1 << 20:
            return candidate
    return None


def jaxlib_has_flags(flags: Sequence[str]) -> bool:
    """Whether every `--name=value` flag's name is compiled into the installed jaxlib.

    Searches the jaxlib shared library for the flag names (memory-mapped, cheap), because XLA
    aborts on an unknown flag and asking XLA would initialise the backend.
    """
    binary = _jaxlib_binary()
    if binary is None:
        return False
    names = [f.lstrip("-").split("=")[0].encode() for f in flags]
    with open(binary, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return all(data.find(name) >= 0 for name in names)


def backend_initialized() -> bool:
    """True when a JAX backend already exists (then `XLA_FLAGS` changes have no effect)."""
    import sys
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # noqa: BLE001  (private API moved: assume the worst)
        return True


def enable_compilation_cache(cache_dir: str | os.PathLike, *, min_compile_time_s: float = 1.0) -> None:
    """Turns on JAX's persistent compilation cache in `cache_dir` (created if missing)."""
    import jax
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def configure_xla(*, platform: str | None = None, cpu_onednn: bool = True,
                  cache_dir: str | os.PathLike | None = None) -> dict[str, object]:
    """Sets the backend-specific XLA flags (see module doc) and, optionally, the compilation cache.

    Args:
      platform: the backend that will be used, if known (default: `target_platform()`).
      cpu_onednn: add `CPU_ONEDNN_FLAGS` on CPU hosts (when the jaxlib has them).
      cache_dir: directory of the persistent compilation cache; None leaves the cache as it is.
    Returns:
      {'platform', 'added_flags', 'xla_flags', 'cache_dir'}: what was decided, for logs.
    Raises:
      RuntimeError: flags were to be added but the JAX backend is already initialised.
    """
    target = target_platform(platform)
    added: list[str] = []
    if target == "cpu" and cpu_onednn and jaxlib_has_flags(CPU_ONEDNN_FLAGS):
        current = os.environ.get("XLA_FLAGS", "")
        present = {f.split("=")[0] for f in current.split()}
        added = [f for f in CPU_ONEDNN_FLAGS if f.split("=")[0] not in present]
        if added:
            if backend_initialized():
                raise RuntimeError("configure_xla() must run before the first JAX computation: the "
                                   "backend is already initialised, so XLA_FLAGS would be ignored. "
                                   "Call it at the top of the program.")
            os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    if cache_dir is not None:
        enable_compilation_cache(cache_dir)
    return {"platform": target, "added_flags": added, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "cache_dir": None if cache_dir is None else str(cache_dir)}


def cpu_compiler_options(scheduler: str, platform: str | None = None) -> dict[str, str]:
    """`compiler_options` for `jax.jit` that pick XLA:CPU's HLO scheduler for one program.

    Args:
      scheduler: a key of `CPU_SCHEDULERS` ('default', 'memory', 'concurrency').
      platform: the backend the program compiles for (e.g. `jax.default_backend()`); default
        `target_platform()`.
    Returns:
      {} for 'default', on GPU/TPU, and with a jaxlib that lacks the option (the program then
      compiles with XLA's defaults); otherwise {'xla_cpu_scheduler_type': <enum value>}.
    Raises:
      ValueError: unknown `scheduler`.
    """
    if scheduler not in CPU_SCHEDULERS:
        raise ValueError(f"unknown XLA:CPU scheduler {scheduler!r}; choose one of {sorted(CPU_SCHEDULERS)}")
    value = CPU_SCHEDULERS[scheduler]
    if value is None or target_platform(platform) != "cpu" or not jaxlib_has_flags(["xla_cpu_scheduler_type", value]):
        return {}
    return {"xla_cpu_scheduler_type": value}
