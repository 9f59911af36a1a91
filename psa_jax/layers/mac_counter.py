"""Counting convolution multiply-adds the way HRNet's model tables do.

`deep-high-resolution-net.pytorch: lib/utils/utils.py::get_model_summary` hooks every Conv2d and
Linear and adds `weight.numel() * output_h * output_w` per image; HRNet's "GFLOPs" are that sum
divided by 2^30. `count_conv_macs()` opens a counter; while a model is traced inside it (see
`psa_jax.models.summary`), every convolution reports that quantity:

* `Conv2d` / `ConvTranspose2d` call `record_conv_macs` for the convolution they run;
* blocks that evaluate 1x1 convolutions in a cheaper, mathematically equal order (PSA's pooled
  projections) declare the convolutions of their reference structure with the
  `reports_conv_macs(cost)` decorator on `__call__`, where `cost` computes them from the input
  shape. Their forward code holds no counting, and overheads stay comparable with the papers.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["MacCounter", "count_conv_macs", "record_conv_macs", "reports_conv_macs"]


@dataclasses.dataclass
class MacCounter:
    """Accumulated convolution multiply-adds per image."""

    macs: int = 0
    convs: int = 0


_ACTIVE: contextvars.ContextVar[MacCounter | None] = contextvars.ContextVar("psa_jax_mac_counter", default=None)


@contextlib.contextmanager
def count_conv_macs() -> Iterator[MacCounter]:
    """Collects `record_conv_macs` calls made while the block runs (typically under eval_shape)."""
    counter = MacCounter()
    token = _ACTIVE.set(counter)
    try:
        yield counter
    finally:
        _ACTIVE.reset(token)


def record_conv_macs(kernel_numel: int, out_h: int, out_w: int) -> None:
    """Adds one convolution's per-image multiply-adds, `kernel_numel * out_h * out_w`."""
    counter = _ACTIVE.get()
    if counter is not None:
        counter.macs += int(kernel_numel) * int(out_h) * int(out_w)
        counter.convs += 1


ConvCost = Callable[[Any, tuple[int, ...]], Iterable[tuple[int, int, int]]]


def reports_conv_macs(cost: ConvCost) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a module's `__call__(self, x, ...)`: after the call returns, and only while a
    `count_conv_macs` counter is active, records each `(kernel_numel, out_h, out_w)` that
    `cost(self, x.shape)` lists. The wrapped call computes the same values as before."""

    def decorate(call: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(call)
        def wrapper(self, x, *args, **kwargs):
            y = call(self, x, *args, **kwargs)
            if _ACTIVE.get() is not None:
                for kernel_numel, out_h, out_w in cost(self, tuple(x.shape)):
                    record_conv_macs(kernel_numel, out_h, out_w)
            return y
        return wrapper

    return decorate
