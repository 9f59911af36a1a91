"""Counting convolution multiply-adds the way HRNet's model tables do.

`deep-high-resolution-net.pytorch: lib/utils/utils.py::get_model_summary` hooks every Conv2d and
Linear and adds `weight.numel() * output_h * output_w` per image; HRNet's "GFLOPs" are that sum
divided by 2^30. Our `Conv2d` reports the same quantity into the active counter while a model is
traced, so `psa_jax.models.summary` reproduces the published numbers. Blocks that evaluate a 1x1
convolution in a cheaper, mathematically equal order (PSA's pooled projections) report the cost
the reference structure pays, via `record_conv_macs`, so overheads stay comparable with the paper.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

__all__ = ["MacCounter", "count_conv_macs", "record_conv_macs"]


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
