"""Checks a config before anything is built or compiled, with errors that name the fix.

- `check_overrides(config, overrides)`: every `--config.KEY=VALUE` names an existing key; an
  unknown one is a `ConfigKeyError` listing the closest valid keys (difflib over the flattened key
  set, plus abbreviations: `learning_rate` -> `lr`). `define_config_flag` runs it on the command
  line before ml_collections applies the overrides (which would end in a bare
  `AttributeError: "'nonexistent'"` traceback).
- `check_layout(config, devices)`: the mesh (`config.mesh.data / fsdp / model`) fits the devices
  and the global batch splits over the batch axes: the batch of B examples is cut into
  `config.grad_accum_steps` = k micro-batches of B / k, each split over data * fsdp devices, and
  over the processes that load it. A mismatch is a `LayoutError` with the numbers and the nearest
  valid `--config.batch_size` values, instead of JAX's `IndivisibleError` from inside a compile.
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections as mlc

__all__ = [
    "ConfigKeyError",
    "LayoutError",
    "check_layout",
    "check_overrides",
    "config_keys",
    "define_config_flag",
    "load_config_file",
    "overrides_in_argv",
    "valid_batch_sizes",
]


class ConfigKeyError(KeyError):
    """An override names a config key that does not exist; the message lists the closest ones."""

    def __str__(self) -> str:  # KeyError would repr() the message (quotes, escaped newlines)
        return str(self.args[0]) if self.args else ""


class LayoutError(ValueError):
    """The mesh or the batch does not fit the devices; the message gives the numbers and the fix."""


# ---------------------------------------------------------------------------------------- config keys
def config_keys(config: Any, prefix: str = "") -> dict[str, bool]:
    """Every dotted key of `config` -> whether it is a section (a nested ConfigDict or dict).

    E.g. pose_config() gives {'seed': False, ..., 'optimizer': True, 'optimizer.lr': False, ...}.
    """
    out: dict[str, bool] = {}
    for name, value in config.items():
        key = f"{prefix}{name}"
        section = isinstance(value, (mlc.ConfigDict, dict))
        out[key] = section
        if section:
            out.update(config_keys(value, key + "."))
    return out


def _initials(name: str) -> str:
    parts = [p for p in name.split("_") if p]
    return "".join(p[0] for p in parts) if len(parts) > 1 else ""


def _suggestions(key: str, keys: dict[str, bool], n: int = 3) -> list[str]:
    """The valid keys closest to the unknown `key`, best first: in its own section an abbreviation
    (learning_rate -> lr, wd -> weight_decay) or a close spelling of the last name, then the same
    name in another section (schedule.lr -> optimizer.lr), then close spellings of the whole path."""
    leaves = [k for k, section in keys.items() if not section]
    parent, _, leaf = key.rpartition(".")
    sibling_leaves = {k.rpartition(".")[2]: k for k in leaves if k.rpartition(".")[0] == parent}
    found = [full for name, full in sibling_leaves.items() if name == _initials(leaf) or leaf == _initials(name)]
    found += [sibling_leaves[name] for name in difflib.get_close_matches(leaf, list(sibling_leaves), n=n, cutoff=0.6)]
    found += [k for k in leaves if k.rpartition(".")[2] == leaf]
    elsewhere = [k for k in leaves if k.rpartition(".")[0] != parent]  # its own section was matched by name
    found += difflib.get_close_matches(key, elsewhere, n=n, cutoff=0.6)
    return list(dict.fromkeys(k for k in found if k != key))[:n]


def check_overrides(config: Any, overrides: Iterable[str]) -> None:
    """Raises ConfigKeyError for the first override whose key is not in `config`.

    Args:
      config: the ConfigDict the overrides apply to (the config file's, before overriding).
      overrides: 'KEY=VALUE' or 'KEY' strings (`load_config`'s form; `overrides_in_argv` gives them
        from a command line), KEY dotted ('optimizer.lr').
    """
    keys = config_keys(config)
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if key in keys:
            if keys[key]:
                raise ConfigKeyError(f"config key '{key}' is a section, not a value: set its keys one by one, "
                                     f"e.g. --config.{next(k for k in keys if k.startswith(key + '.'))}=...")
            continue
        # a leaf used as a section: optimizer.lr.x
        parts = key.split(".")
        for i in range(1, len(parts)):
            head = ".".join(parts[:i])
            if head in keys and not keys[head]:
                raise ConfigKeyError(f"unknown config key '{key}': '{head}' is a value, not a section "
                                     f"(--config.{head}=VALUE)")
        close = _suggestions(key, keys)
        parent = key.rpartition(".")[0]
        if close:
            hint = "did you mean " + " or ".join(f"'{k}'" for k in close) + "?"
        elif parent in keys:
            hint = f"the keys of '{parent}' are: " + ", ".join(
                k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent)
        else:
            hint = "the top-level keys are: " + ", ".join(k for k in keys if "." not in k)
        raise ConfigKeyError(f"unknown config key '{key}' (--config.{override}); {hint}")


def overrides_in_argv(argv: Sequence[str], name: str = "config") -> list[str]:
    """The `KEY=VALUE` (or bare `KEY` for booleans) of each `--NAME.KEY...` in an absl command line:
    `--config.a.b=1`, `--config.a.b 1`, `--config.flag`, `--noconfig.flag`; parsing stops at `--`."""
    out = []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":
            break
        body = arg.lstrip("-")
        if not arg.startswith("-") or body == arg:
            continue
        for prefix in (f"{name}.", f"no{name}."):
            if body.startswith(prefix):
                key = body[len(prefix):]
                if "=" not in key and i + 1 < len(args) and not args[i + 1].startswith("-") and prefix == f"{name}.":
                    key = f"{key}={args[i + 1]}"  # '--config.a.b 1' (value in the next argument)
                out.append(key)
                break
    return out


def _config_path(argv: Sequence[str], name: str, default: str) -> str:
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(args):
            return args[i + 1]
        for prefix in (f"--{name}=", f"-{name}="):
            if arg.startswith(prefix):
                return arg[len(prefix):]
    return default


def load_config_file(path: str) -> mlc.ConfigDict:
    """The `get_config()` of the config file `path` (which may end in `:arg`), unlocked, with no
    override applied: what `check_overrides` checks overrides against."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["psa_jax", f"--config={path}"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", path, "config", flag_values=values, lock_config=False, sys_argv=argv)
    values(argv)
    return values.config


def define_config_flag(name: str, default: str, help_text: str, *, argv: Sequence[str] | None = None,
                       lock_config: bool = True) -> None:
    """`config_flags.DEFINE_config_file(name, default, help_text)` for an entry point, after checking
    the command line's `--NAME.KEY=...` overrides against the config file (`check_overrides`).

    A failure (unknown key, unreadable config file) ends the process with one line
    `error: <Type>: <message>` and exit status 1 (`runtime.entry_point.exit_with_error`)."""
    from ml_collections import config_flags

    from psa_jax.runtime.entry_point import exit_with_error

    argv = list(sys.argv if argv is None else argv)
    try:
        overrides = overrides_in_argv(argv, name)
        if overrides:
            check_overrides(load_config_file(_config_path(argv, name, default)), overrides)
        config_flags.DEFINE_config_file(name, default, help_text, lock_config=lock_config, sys_argv=argv)
    except Exception as err:  # noqa: BLE001 - any failure here is the command line's; report it in one line
        exit_with_error(err)


# ---------------------------------------------------------------------------------------- layout
def valid_batch_sizes(batch_size: int, multiple: int) -> list[int]:
    """The multiples of `multiple` nearest `batch_size`: the one below (if > 0) and the one above."""
    below = (batch_size // multiple) * multiple
    above = below + multiple
    return [b for b in (below, above) if b > 0 and b != batch_size]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_layout(config: Any, devices: Sequence[Any] | None = None, *, batch: bool = True) -> dict[str, int]:
    """Checks `config.mesh` against `devices` (default: all of JAX's) and, with `batch`,
    `config.batch_size` / `config.grad_accum_steps` against the mesh and the processes.

    Rules (n devices over p processes; mesh data x fsdp x model; k = grad_accum_steps):
      fsdp * model divides n; data = n / (fsdp * model) when -1, else data * fsdp * model = n;
      B = batch_size is a multiple of k; B / k is a multiple of data * fsdp (each micro-batch
      splits over the batch axes); B is a multiple of p (each process loads B / p examples).
    Returns {'devices', 'processes', 'data', 'fsdp', 'model', 'batch_shards'}; raises LayoutError
    naming the keys, the numbers and the overrides that fit.
    """
    if devices is None:
        import jax
        devices = jax.devices()
    devices = list(devices)
    n = len(devices)
    processes = len({getattr(d, "process_index", 0) for d in devices})
    mesh = config.mesh
    data, fsdp, model = mesh.data, getattr(mesh, "fsdp", 1), mesh.model
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    for key, size in (("fsdp", fsdp), ("model", model)):
        if not _positive_int(size):
            raise LayoutError(f"config.mesh.{key}={size!r} must be a positive integer (a divisor of the {n} "
                              f"devices: {divisors})")
    if n % (fsdp * model):
        raise LayoutError(f"config.mesh.fsdp={fsdp} x config.mesh.model={model} = {fsdp * model} does not divide the "
                          f"{n} devices; choose sizes whose product is one of {divisors}")
    if data == -1:
        data = n // (fsdp * model)
    elif not _positive_int(data) or data * fsdp * model != n:
        fit = n // (fsdp * model)
        raise LayoutError(f"config.mesh.data={data} x fsdp={fsdp} x model={model} = "
                          f"{data * fsdp * model if _positive_int(data) else data} but there are {n} devices; use "
                          f"--config.mesh.data={fit} (or -1: every device not on 'fsdp' / 'model')")
    shards = data * fsdp
    layout = {"devices": n, "processes": processes, "data": data, "fsdp": fsdp, "model": model,
              "batch_shards": shards}
    if not batch:
        return layout
    b, k = config.batch_size, getattr(config, "grad_accum_steps", 1)
    if not _positive_int(b):
        raise LayoutError(f"config.batch_size={b!r} must be a positive integer (the global batch)")
    if not _positive_int(k):
        raise LayoutError(f"config.grad_accum_steps={k!r} must be a positive integer (1: no accumulation)")
    multiple = math.lcm(k * shards, processes)
    if b % multiple:
        why = []
        if b % k:
            why.append(f"it does not split into config.grad_accum_steps={k} micro-batches")
        elif (b // k) % shards:
            what = f"its micro-batch of {b // k} examples (batch / grad_accum_steps={k})" if k > 1 else "it"
            why.append(f"{what} does not split over the {shards} devices of the batch axes (mesh data={data} x "
                       f"fsdp={fsdp})")
        if b % processes:
            why.append(f"it does not split over the {processes} processes")
        fixes = " or ".join(f"--config.batch_size={v}" for v in valid_batch_sizes(b, multiple))
        raise LayoutError(f"config.batch_size={b} does not fit {n} devices: {'; '.join(why)}. The global batch must "
                          f"be a multiple of {multiple}: use {fixes}"
                          + (", or fewer accumulation steps (--config.grad_accum_steps)" if k > 1 else ""))
    return layout
