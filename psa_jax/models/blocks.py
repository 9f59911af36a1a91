"""Residual blocks and conv-BN units shared by HRNet and SimpleBaseline, with attention slots.

PyTorch names are kept so that `psa_jax.convert.from_torch` can map reference checkpoints:
`conv1, bn1, conv2, bn2[, conv3, bn3], downsample.{0,1}` and the attention under `deattn`
(the attribute the official PSA code adds to HRNet's BasicBlock).

`ModelOptions.program` (a `psa_jax.layers.xla_cpu.ProgramOptions`, plain by default) is fixed
when a network is built: it goes to every conv and BatchNorm made through `ModelOptions.conv` /
`ModelOptions.bn` and decides whether residual-block outputs pass through `xla_cpu.materialize`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psa_jax.layers import initializers as inits
from psa_jax.layers.conv import Conv2d
from psa_jax.layers.norm import BatchNorm
from psa_jax.layers.registry import make_attention
from psa_jax.layers.xla_cpu import ProgramOptions, materialize, program_options

__all__ = ["ConvBN", "BasicBlock", "Bottleneck", "ModelOptions"]


class ModelOptions:
    """Construction options every block passes down: dtypes, initialisation, attention, program.

    Attributes:
      attention: registry name of the attention block ('none', 'psa_p', ...).
      attention_in_bottleneck: also put attention in Bottlenecks ('all_residual' placement).
      kernel_init: conv weight initialiser (HRNet: N(0, 1e-3)).
      attention_init: init name passed to `make_attention` ('hrnet' or 'reference').
      dtype, param_dtype: compute and storage dtypes.
      program: the `ProgramOptions` of the built network ('plain', 'xla_cpu' or the options
        themselves on input; see `psa_jax.layers.xla_cpu`).
    """

    def __init__(self, *, attention: str = "none", attention_in_bottleneck: bool = False,
                 kernel_init: nnx.Initializer = inits.hrnet_normal, attention_init: str = "hrnet",
                 dtype: jnp.dtype | None = None, param_dtype: jnp.dtype = jnp.float32,
                 program: str | ProgramOptions = "plain"):
        self.attention = attention
        self.attention_in_bottleneck = attention_in_bottleneck
        self.kernel_init = kernel_init
        self.attention_init = attention_init
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.program = program_options(program)

    def conv(self, cin: int, cout: int, k: int, *, stride: int = 1, use_bias: bool = False,
             rngs: nnx.Rngs, kernel_init: nnx.Initializer | None = None) -> Conv2d:
        return Conv2d(cin, cout, k, stride=stride, use_bias=use_bias, kernel_init=kernel_init or self.kernel_init,
                      dtype=self.dtype, param_dtype=self.param_dtype, program=self.program, rngs=rngs)

    def bn(self, c: int, *, rngs: nnx.Rngs) -> BatchNorm:
        return BatchNorm(c, dtype=self.dtype, param_dtype=self.param_dtype, program=self.program, rngs=rngs)

    def attention_block(self, c: int, *, rngs: nnx.Rngs) -> nnx.Module | None:
        if self.attention == "none":
            return None
        return make_attention(self.attention, c, init=self.attention_init, dtype=self.dtype,
                              param_dtype=self.param_dtype, rngs=rngs)


def _block_output(y: jax.Array, materialize_output: bool) -> jax.Array:
    """A residual-block output; with the program's `materialize`, a buffer of its own, so that
    XLA:CPU does not fuse the residual stream's add/ReLU chain into every consumer."""
    return materialize(y) if materialize_output else y


class ConvBN(nnx.Module):
    """conv(k, stride) -> BN [-> ReLU]: PyTorch `Sequential(conv, BN[, ReLU])`, children `0`, `1`."""

    torch_names = {"conv": "0", "bn": "1"}

    def __init__(self, cin: int, cout: int, k: int, *, stride: int = 1, relu: bool = True,
                 opts: ModelOptions, rngs: nnx.Rngs):
        self.conv = opts.conv(cin, cout, k, stride=stride, rngs=rngs)
        self.bn = opts.bn(cout, rngs=rngs)
        self.relu = relu

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.bn(self.conv(x))
        return jax.nn.relu(y) if self.relu else y


class BasicBlock(nnx.Module):
    """`relu(bn2(conv2(A(relu(bn1(conv1(x)))))) + shortcut(x))`, two 3x3 convs, expansion 1.

    `A` is the attention block (`deattn`), placed after conv1-BN-ReLU as in
    `DeLightCMU/PSA: semantic-segmentation/network/hrnetv2.py::BasicBlock`; absent for 'none'.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, *, stride: int = 1, opts: ModelOptions, rngs: nnx.Rngs):
        self.conv1 = opts.conv(inplanes, planes, 3, stride=stride, rngs=rngs)
        self.bn1 = opts.bn(planes, rngs=rngs)
        self.deattn = opts.attention_block(planes, rngs=rngs)
        self.conv2 = opts.conv(planes, planes, 3, rngs=rngs)
        self.bn2 = opts.bn(planes, rngs=rngs)
        needs_shortcut = stride != 1 or inplanes != planes
        self.downsample = ConvBN(inplanes, planes, 1, stride=stride, relu=False, opts=opts, rngs=rngs) \
            if needs_shortcut else None
        self.materialize_output = opts.program.materialize

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, inplanes) -> (B, H/s, W/s, planes)."""
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        if self.deattn is not None:
            out = self.deattn(out)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return _block_output(jax.nn.relu(out + shortcut), self.materialize_output)


class Bottleneck(nnx.Module):
    """`relu(bn3(conv3(A(relu(bn2(conv2(relu(bn1(conv1(x))))))))) + shortcut(x))`, expansion 4.

    1x1 -> 3x3(stride) -> 1x1 convs. With the 'all_residual' placement the attention (`deattn`)
    sits after the 3x3 conv-BN-ReLU ("after the first 3x3 convolution in every residual block",
    the paper's text); the official segmentation code has none in Bottlenecks.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, *, stride: int = 1, opts: ModelOptions, rngs: nnx.Rngs):
        out = planes * self.expansion
        self.conv1 = opts.conv(inplanes, planes, 1, rngs=rngs)
        self.bn1 = opts.bn(planes, rngs=rngs)
        self.conv2 = opts.conv(planes, planes, 3, stride=stride, rngs=rngs)
        self.bn2 = opts.bn(planes, rngs=rngs)
        self.deattn = opts.attention_block(planes, rngs=rngs) if opts.attention_in_bottleneck else None
        self.conv3 = opts.conv(planes, out, 1, rngs=rngs)
        self.bn3 = opts.bn(out, rngs=rngs)
        needs_shortcut = stride != 1 or inplanes != out
        self.downsample = ConvBN(inplanes, out, 1, stride=stride, relu=False, opts=opts, rngs=rngs) \
            if needs_shortcut else None
        self.materialize_output = opts.program.materialize

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, inplanes) -> (B, H/s, W/s, 4 * planes)."""
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        if self.deattn is not None:
            out = self.deattn(out)
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return _block_output(jax.nn.relu(out + shortcut), self.materialize_output)
