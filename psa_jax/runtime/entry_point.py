"""What train.py and eval.py do first when run from the command line, and how they end.

    if __name__ == "__main__":
        define_config_flag(...)        # psa_jax.training.preflight
        run_main(main)                 # instead of absl's app.run(main)

`run_main` makes a failed run's last line its error: `error: <Type>: <message>` on one line of
stderr, exit status 1, after the cleanups registered with `register_cleanup` (e.g. closing
checkpoint managers, which waits for saves in flight and stops orbax's threads). The full
traceback is printed above that line when the environment sets PSA_JAX_TRACEBACK=1.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from psa_jax.runtime import xla_flags

__all__ = ["TRACEBACK_ENV", "error_line", "exit_with_error", "register_cleanup", "run_cleanups", "run_main",
           "start_process"]

# Where compiled programs are kept between runs (override with $PSA_JAX_XLA_CACHE).
DEFAULT_XLA_CACHE = os.path.expanduser("~/.cache/psa_jax/xla")

# Set to 1 to see the whole traceback of a failed run above its one-line error.
TRACEBACK_ENV = "PSA_JAX_TRACEBACK"

_CLEANUPS: list[Callable[[], None]] = []


def start_process() -> None:
    """CPU-only XLA flags and the persistent compilation cache (before the JAX backend starts),
    then INFO logging with orbax/absl's per-save chatter turned down."""
    xla_flags.configure_xla(cache_dir=os.environ.get("PSA_JAX_XLA_CACHE", DEFAULT_XLA_CACHE))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)


def register_cleanup(fn: Callable[[], None]) -> None:
    """Adds `fn` (no arguments) to what `run_main` runs when `main` ends, failed or not (latest
    registered first). Registering the same function twice runs it once."""
    if fn not in _CLEANUPS:
        _CLEANUPS.append(fn)


def run_cleanups() -> None:
    """Runs the registered cleanups; a cleanup's own error is logged, never raised."""
    for fn in reversed(list(_CLEANUPS)):
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - a cleanup must not hide the run's own error
            logging.getLogger("psa_jax").warning("cleanup %s failed: %s", getattr(fn, "__qualname__", fn),
                                                 error_line(err))


def error_line(err: BaseException) -> str:
    """`<Type>: <message>` on one line (the message's newlines and runs of spaces collapsed)."""
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _traceback_wanted() -> bool:
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def exit_with_error(err: BaseException, status: int = 1) -> NoReturn:
    """Prints `err` as the process's last line, `error: <Type>: <message>` on stderr (with the
    traceback above it when PSA_JAX_TRACEBACK=1, else a hint saying so), and exits with `status`."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    if _traceback_wanted():
        traceback.print_exception(err)
    else:
        print(f"(the full traceback: {TRACEBACK_ENV}=1)", file=sys.stderr)
    print(f"error: {error_line(err)}", file=sys.stderr)
    sys.stderr.flush()
    sys.exit(status)


def _exit_now(status: int) -> NoReturn:
    """Ends the process without the interpreter's shutdown. After a failed checkpoint read, that
    shutdown garbage-collects orbax/tensorstore futures and coroutines and prints their warnings
    *after* the error line; the cleanups (checkpoint managers closed, saves finished) have run."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run_main(main: Callable[[list[str]], object], argv: list[str] | None = None) -> NoReturn:
    """absl's `app.run(main)` (flags parsed, then `main(argv)`), then the registered cleanups; an
    exception from `main` ends the process with `exit_with_error` (last line: the error, status
    1). SystemExit and KeyboardInterrupt pass through (after the cleanups)."""
    from absl import app

    def wrapped(args):
        try:
            result = main(args)
        except Exception as err:  # noqa: BLE001 - every failure of a run ends in its one-line error
            run_cleanups()
            try:
                exit_with_error(err)
            except SystemExit as stop:
                _exit_now(stop.code)
        except BaseException:
            run_cleanups()
            raise
        run_cleanups()
        return result

    app.run(wrapped, argv=argv)
    raise AssertionError("absl.app.run returned")  # pragma: no cover - app.run always exits
