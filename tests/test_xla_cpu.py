"""XLA:CPU program variants (`psa_jax.layers.xla_cpu`: program options, materialisation points,
the strided-conv phase VJP; BatchNorm's hand-written VJP in `psa_jax.layers.norm`) against the
plain program, and the XLA flag configuration of `psa_jax.runtime.xla_flags`.

Every rewrite must be the identity on values and gradients: each test computes the same thing
built with the rewrite and without it (or against NumPy) and compares. The choice is a
construction option (`program=`), so the tests build both variants side by side."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from psa_jax.layers.conv import Conv2d, _conv2d_plain, conv2d
from psa_jax.layers.norm import BatchNorm, batch_norm_train
from psa_jax.layers.xla_cpu import (PLAIN, XLA_CPU, ProgramOptions, conv2d_phase_vjp, materialize,
                                    phase_conv_input_grad, program_for_platform, program_options)
from psa_jax.runtime import xla_flags

# ------------------------------------------------------------------------------ program options


def test_program_options_names_presets_and_platforms():
    assert program_options("plain") == PLAIN == ProgramOptions()
    assert program_options("xla_cpu") == XLA_CPU == ProgramOptions(True, True, True)
    custom = ProgramOptions(materialize=True)
    assert program_options(custom) is custom
    assert len({PLAIN, XLA_CPU, custom}) == 3                       # hashable: usable as static data
    with pytest.raises(dataclasses.FrozenInstanceError):
        PLAIN.materialize = True
    assert program_for_platform("cpu") == "xla_cpu"
    for platform in ("gpu", "cuda", "rocm", "tpu", "METAL"):
        assert program_for_platform(platform) == "plain"


@pytest.mark.parametrize("bad", ["bogus", "cpu", "", None, 1])
def test_program_options_rejects_unknown_names_listing_the_valid_ones(bad):
    with pytest.raises(ValueError, match="valid: 'plain', 'xla_cpu'"):
        program_options(bad)
    with pytest.raises(ValueError, match="valid: 'plain', 'xla_cpu'"):
        Conv2d(2, 2, 3, program=bad, rngs=nnx.Rngs(0))               # also at stride 1, where unused
    with pytest.raises(ValueError, match="valid: 'plain', 'xla_cpu'"):
        BatchNorm(2, program=bad)


def _jaxpr(module, x, *, grad: bool = False) -> str:
    """The jaxpr of `sum(module(x)^2)` in training mode, or (grad) of its gradient in (params, x).

    A custom VJP shows as `custom_vjp_call` in the forward jaxpr; a gradient jaxpr holds its
    backward rule inlined."""
    graphdef, state = nnx.split(module)

    def loss(st, v):
        return jnp.sum(nnx.merge(graphdef, st)(v) ** 2)

    return str(jax.make_jaxpr(jax.grad(loss, (0, 1)) if grad else loss)(state, x))


def test_default_layers_build_the_plain_program():
    """Without `program=`, a strided conv and a training-mode BatchNorm contain no rewrite."""
    x = jnp.ones((2, 8, 8, 3))
    conv, bn = Conv2d(3, 4, 3, stride=2, rngs=nnx.Rngs(0)), BatchNorm(3)
    for module in (conv, bn):
        for grad in (False, True):
            text = _jaxpr(module, x, grad=grad)
            assert "custom_vjp_call" not in text and "cond" not in text
    assert "lhs_dilation=(2, 2)" in _jaxpr(conv, x, grad=True)        # XLA's own transpose
    conv_cpu = Conv2d(3, 4, 3, stride=2, program="xla_cpu", rngs=nnx.Rngs(0))
    assert "custom_vjp_call" in _jaxpr(conv_cpu, x)
    assert "lhs_dilation=(2, 2)" not in _jaxpr(conv_cpu, x, grad=True)  # the phase convolutions
    assert "custom_vjp_call" in _jaxpr(BatchNorm(3, program="xla_cpu"), x)


def test_each_option_switches_only_its_own_rewrite():
    x = jnp.ones((2, 8, 8, 3))
    only_bn = ProgramOptions(fused_batchnorm=True)
    assert "custom_vjp_call" not in _jaxpr(Conv2d(3, 4, 3, stride=2, program=only_bn, rngs=nnx.Rngs(0)), x)
    assert "custom_vjp_call" in _jaxpr(BatchNorm(3, program=only_bn), x)
    only_conv = ProgramOptions(phase_conv_vjp=True)
    assert "custom_vjp_call" in _jaxpr(Conv2d(3, 4, 3, stride=2, program=only_conv, rngs=nnx.Rngs(0)), x)
    assert "custom_vjp_call" not in _jaxpr(BatchNorm(3, program=only_conv), x)
    # A stride-1 convolution has no lhs-dilated gradient to replace: plain whatever the program.
    assert "custom_vjp_call" not in _jaxpr(Conv2d(3, 4, 3, program=XLA_CPU, rngs=nnx.Rngs(0)), x)


# ----------------------------------------------------------------------------------- materialize

def test_materialize_is_a_cond():
    x = jnp.ones((2, 3))
    assert "cond" in str(jax.make_jaxpr(materialize)(x))


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_materialize_propagates_nan_and_inf(special):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for where in [(0, 0), (2, 1)]:                    # the predicate's element and any other one
        xs = x.copy()
        xs[where] = special
        out = np.asarray(jax.jit(materialize)(jnp.asarray(xs)))
        np.testing.assert_array_equal(out, xs)        # NaN == NaN position-wise in assert_array_equal


def test_materialize_gradient_is_identity():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5)), jnp.float32)
    f = lambda v: jnp.sum(jnp.sin(materialize(v * 2.0)) ** 2)      # noqa: E731
    g = lambda v: jnp.sum(jnp.sin(v * 2.0) ** 2)                   # noqa: E731
    np.testing.assert_allclose(jax.jit(jax.grad(f))(x), jax.jit(jax.grad(g))(x), rtol=0, atol=0)
    nan_x = x.at[0, 0].set(jnp.nan)
    grad_nan = np.asarray(jax.grad(f)(nan_x))
    assert np.isnan(grad_nan[0, 0]) and np.all(np.isfinite(grad_nan.reshape(-1)[1:]))


def test_materialize_keeps_dtype_and_empty_arrays():
    for dtype in (jnp.float32, jnp.bfloat16, jnp.int32):
        x = jnp.arange(6).astype(dtype)
        y = jax.jit(materialize)(x)
        assert y.dtype == dtype
        np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x, np.float32))
    assert materialize(jnp.zeros((0, 3))).shape == (0, 3)


# ------------------------------------------------------------------------ strided convolution VJP

CONV_CASES = [  # (H, W, k, stride, padding): odd and even sizes, k < s, k > s, windows that miss the tail
    (7, 9, 3, 2, 1), (8, 6, 3, 2, 1), (5, 5, 1, 2, 0), (11, 4, 3, 3, 1), (6, 7, 5, 2, 2), (3, 3, 3, 2, 0),
    (9, 10, 4, 2, 1), (2, 2, 3, 2, 1), (1, 1, 3, 2, 1),
]


@pytest.mark.parametrize("h,w,k,s,p", CONV_CASES)
def test_phase_vjp_matches_plain_conv(h, w, k, s, p):
    rng = np.random.default_rng(h * 100 + w)
    x = jnp.asarray(rng.standard_normal((2, h, w, 3)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, 3, 4)), jnp.float32)

    def loss(conv):
        return lambda x, kk: jnp.sum(jnp.sin(conv(x, kk, s, p)) * jnp.arange(4.0))

    y_plain = _conv2d_plain(x, kernel, s, p)
    y_phase = conv2d_phase_vjp(x, kernel, s, p)
    np.testing.assert_array_equal(y_phase, y_plain)
    gp = jax.jit(jax.grad(loss(_conv2d_plain), (0, 1)))(x, kernel)
    gq = jax.jit(jax.grad(loss(conv2d_phase_vjp), (0, 1)))(x, kernel)
    for a, b in zip(gq, gp):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_phase_input_grad_against_numpy_scatter():
    """The input gradient restated as a scatter-add over every window (NumPy, float64)."""
    rng = np.random.default_rng(3)
    h, w, k, s, p = 9, 7, 3, 2, 1
    dy = rng.standard_normal((1, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, 5))
    kernel = rng.standard_normal((k, k, 2, 5))
    dx_pad = np.zeros((1, h + 2 * p, w + 2 * p, 2))
    for i in range(dy.shape[1]):
        for j in range(dy.shape[2]):
            dx_pad[0, s * i:s * i + k, s * j:s * j + k] += np.einsum("uvco,o->uvc", kernel, dy[0, i, j])
    got = phase_conv_input_grad(jnp.asarray(dy, jnp.float32), jnp.asarray(kernel, jnp.float32),
                                 (1, h, w, 2), s, p)
    np.testing.assert_allclose(got, dx_pad[:, p:p + h, p:p + w], rtol=1e-5, atol=1e-5)


def test_phase_vjp_propagates_nan():
    x = jnp.ones((1, 6, 6, 2)).at[0, 3, 2, 1].set(jnp.nan)
    kernel = jnp.ones((3, 3, 2, 2))
    g_plain = jax.grad(lambda kk: jnp.sum(_conv2d_plain(x, kk, 2, 1)))(kernel)
    g_phase = jax.grad(lambda kk: jnp.sum(conv2d_phase_vjp(x, kk, 2, 1)))(kernel)
    np.testing.assert_array_equal(np.isnan(g_phase), np.isnan(g_plain))
    dy_nan = jax.grad(lambda xx: jnp.sum(conv2d_phase_vjp(xx, kernel.at[0, 0, 0, 0].set(jnp.nan), 2, 1)))(
        jnp.ones((1, 6, 6, 2)))
    assert np.isnan(np.asarray(dy_nan)).any()


def test_phase_vjp_bfloat16_close_to_plain():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((2, 10, 8, 8)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 8, 8)) * 0.2, jnp.bfloat16)
    f = lambda conv: jax.grad(lambda xx: jnp.sum(conv(xx, kernel, 2, 1).astype(jnp.float32) ** 2))(x)  # noqa: E731
    a, b = f(conv2d_phase_vjp), f(_conv2d_plain)
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=0.05, atol=0.05)


def test_conv2d_uses_phase_vjp_only_when_asked():
    x = jnp.ones((1, 8, 8, 2))
    kernel = jnp.ones((3, 3, 2, 2))

    def grad_jaxpr(**kw):
        return str(jax.make_jaxpr(jax.grad(lambda xx: jnp.sum(conv2d(xx, kernel, 2, 1, **kw))))(x))

    assert "lhs_dilation=(2, 2)" not in grad_jaxpr(phase_vjp=True)   # phases: stride-1 convolutions only
    assert "lhs_dilation=(2, 2)" in grad_jaxpr()                       # XLA's own transpose: the s-dilated cotangent


def test_conv_module_gradients_same_with_and_without_workarounds():
    """A stride-2 Conv2d -> BatchNorm -> ReLU chain: loss and gradients equal in both programs."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((2, 13, 11, 4)), jnp.float32)

    class Net(nnx.Module):
        def __init__(self, program):
            self.conv = Conv2d(4, 6, 3, stride=2, program=program, rngs=nnx.Rngs(0))
            self.bn = BatchNorm(6, program=program)

        def __call__(self, v):
            return jax.nn.relu(self.bn(self.conv(v)))

    def grads(program):
        net = Net(program)
        loss, g = nnx.value_and_grad(lambda m: jnp.sum(m(x) ** 2))(net)
        return loss, nnx.to_pure_dict(nnx.state(g)), np.asarray(net.bn.mean[...])

    on = grads("xla_cpu")
    off = grads("plain")
    np.testing.assert_allclose(on[0], off[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(on[1]), jax.tree.leaves(off[1])):
        # BatchNorm's two backward paths round differently: tolerance relative to the largest entry.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
    np.testing.assert_allclose(on[2], off[2], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------- BatchNorm's hand-written VJP

def _batchnorm_step(x, g, *, fused: bool, dtype=None):
    """Training-mode BatchNorm on x: (sum(y * g), running mean, running var, d_scale, d_bias, dx)."""
    c = x.shape[-1]
    bn = BatchNorm(c, dtype=dtype, program=ProgramOptions(fused_batchnorm=fused))
    bn.scale.set_value(jnp.linspace(0.5, 2.0, c))
    bn.bias.set_value(jnp.linspace(-1.0, 1.0, c))

    @nnx.jit
    def run(bn, x):
        loss = lambda m, v: jnp.sum(m(v).astype(jnp.float32) * g)       # noqa: E731
        value, (grads, dx) = nnx.value_and_grad(loss, argnums=(0, 1))(bn, x)
        return value, grads.scale[...], grads.bias[...], dx

    value, d_scale, d_bias, dx = run(bn, x)
    return [np.asarray(v, np.float32) for v in (value, bn.mean[...], bn.var[...], d_scale, d_bias, dx)]


@pytest.mark.parametrize("shape", [(4, 5, 6, 8), (3, 7, 1, 5), (2, 3)])
def test_fused_batchnorm_equals_autodiff(shape):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal(shape) * 3.0 + 1.5, jnp.float32)
    x = x.at[..., 0].set(2.0)                                  # a constant channel: variance 0
    g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    fused = _batchnorm_step(x, g, fused=True)
    plain = _batchnorm_step(x, g, fused=False)
    names = ("loss", "running mean", "running var", "d_scale", "d_bias", "dx")
    for name, a, b in zip(names, fused, plain):
        if a.ndim:                       # channel 0 below: 1/std = 316 there amplifies rounding
            a, b = a[..., 1:], b[..., 1:]
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(b).max())), err_msg=name)
    # The constant channel: x_hat = 0 exactly, so d_scale = 0 (autodiff's one-pass formula leaves
    # a rounding residue of sum(g x) / std - mean sum(g) / std there) and dx = scale/std (g - mean g).
    assert fused[3][0] == 0.0 and abs(plain[3][0]) < 1e-2
    np.testing.assert_allclose(fused[5][..., 0], plain[5][..., 0], rtol=1e-4, atol=1e-3)


def test_fused_batchnorm_gradient_against_numpy():
    """Golden values: the BatchNorm gradient written out in float64 NumPy."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3, 4)) * 2.0 - 0.5
    g = rng.standard_normal((6, 3, 4))
    scale, bias, eps = np.array([0.5, 1.0, 2.0, -1.0]), np.array([0.1, 0.0, -0.3, 1.0]), 1e-5
    n = 18
    mean = x.mean((0, 1))
    std = np.sqrt(x.var((0, 1)) + eps)
    x_hat = (x - mean) / std
    y = x_hat * scale + bias
    d_bias, d_scale = g.sum((0, 1)), (g * x_hat).sum((0, 1))
    dx = scale / std * (g - d_bias / n - x_hat * d_scale / n)

    f32 = lambda v: jnp.asarray(v, jnp.float32)                 # noqa: E731
    out, vjp = jax.vjp(lambda v, s, b: batch_norm_train(v, s, b, eps, jnp.float32), f32(x), f32(scale), f32(bias))
    np.testing.assert_allclose(out[0], y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[2], x.var((0, 1)) * n / (n - 1), rtol=1e-5)
    got_dx, got_ds, got_db = vjp((f32(g), jnp.zeros(4), jnp.zeros(4)))
    np.testing.assert_allclose(got_dx, dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_ds, d_scale, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_db, d_bias, rtol=1e-5, atol=1e-5)


def test_fused_batchnorm_bfloat16_close_to_float32():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((4, 6, 5, 8)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((4, 6, 5, 8)), jnp.float32)
    reference = _batchnorm_step(x, g, fused=False)
    low = _batchnorm_step(x.astype(jnp.bfloat16), g, fused=True, dtype=jnp.bfloat16)
    dx = jax.grad(lambda v: jnp.sum(batch_norm_train(v, jnp.ones(8), jnp.zeros(8), 1e-5, jnp.bfloat16)[0]
                                    .astype(jnp.float32)))(x.astype(jnp.bfloat16))
    assert dx.dtype == jnp.bfloat16                          # the input gradient keeps the input's dtype
    for a, b in zip(low[3:], reference[3:]):                 # gradients within bfloat16 rounding
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05 * float(np.abs(b).max()))


def test_fused_batchnorm_only_in_training_mode_and_when_asked():
    x = jnp.ones((2, 3, 3, 4))
    bn = BatchNorm(4, program="xla_cpu")

    def jaxpr(m):
        graphdef, state = nnx.split(m)
        return str(jax.make_jaxpr(lambda st, v: nnx.merge(graphdef, st)(v))(state, x))

    assert "custom_vjp_call" in jaxpr(bn)
    bn.eval()
    assert "custom_vjp_call" not in jaxpr(bn)                 # eval: running statistics, no VJP
    bn.train()
    assert "custom_vjp_call" in jaxpr(bn)
    assert "custom_vjp_call" not in jaxpr(BatchNorm(4))       # the default program: autodiff


def test_fused_batchnorm_propagates_nan():
    x = jnp.asarray(np.random.default_rng(6).standard_normal((3, 4, 4, 3)), jnp.float32).at[1, 2, 0, 1].set(jnp.nan)
    g = jnp.ones((3, 4, 4, 3), jnp.float32)
    fused, plain = _batchnorm_step(x, g, fused=True), _batchnorm_step(x, g, fused=False)
    for a, b in zip(fused, plain):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert np.isnan(fused[-1][..., 1]).all() and not np.isnan(fused[-1][..., 0]).any()


# ------------------------------------------------------------------------------------ xla_flags

def test_target_platform_from_argument_and_env(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert xla_flags.target_platform() == "cuda"
    assert xla_flags.target_platform("tpu") == "tpu"
    monkeypatch.setenv("JAX_PLATFORMS", "gpu")
    assert xla_flags.target_platform() == "cuda"
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert xla_flags.target_platform() == "cpu"


def test_jaxlib_flag_detection():
    assert xla_flags.jaxlib_has_flags(["--xla_cpu_use_thunk_runtime=true"])   # a long-standing flag
    assert not xla_flags.jaxlib_has_flags(["--xla_cpu_no_such_flag_for_psa_jax=1"])


def test_cpu_compiler_options_pick_the_scheduler():
    assert xla_flags.cpu_compiler_options("default", platform="cpu") == {}
    for platform in ("cuda", "tpu"):                      # never on accelerators
        assert xla_flags.cpu_compiler_options("memory", platform=platform) == {}
    if not xla_flags.jaxlib_has_flags(["xla_cpu_scheduler_type"]):
        pytest.skip("this jaxlib has no xla_cpu_scheduler_type option")
    assert xla_flags.cpu_compiler_options("memory", platform="cpu") == {
        "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    with pytest.raises(ValueError, match="'concurrency', 'default', 'memory'"):
        xla_flags.cpu_compiler_options("memroy", platform="cpu")


def test_configure_xla_leaves_accelerators_plain(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    for platform in ("cuda", "tpu", "rocm"):
        info = xla_flags.configure_xla(platform=platform)
        assert info["added_flags"] == [] and info["platform"] == platform
        assert "onednn" not in info["xla_flags"]


def test_configure_xla_on_cpu(monkeypatch):
    """In this process the backend is initialised, so adding flags must refuse loudly; flags
    already present are kept without error."""
    jnp.zeros(1).block_until_ready()
    if not xla_flags.jaxlib_has_flags(xla_flags.CPU_ONEDNN_FLAGS):
        pytest.skip("this jaxlib has no oneDNN fusion flags")
    monkeypatch.setenv("XLA_FLAGS", "")
    with pytest.raises(RuntimeError, match="before the first JAX computation"):
        xla_flags.configure_xla(platform="cpu")
    monkeypatch.setenv("XLA_FLAGS", " ".join(xla_flags.CPU_ONEDNN_FLAGS))
    info = xla_flags.configure_xla(platform="cpu")
    assert info["added_flags"] == []
    assert xla_flags.configure_xla(platform="cpu", cpu_onednn=False)["added_flags"] == []


def test_configure_xla_in_fresh_process_adds_flags(tmp_path):
    """A new interpreter: flags are added before the backend starts and XLA accepts them."""
    import subprocess
    import sys
    import json
    code = ("import os, json; os.environ.pop('XLA_FLAGS', None)\n"
            "from psa_jax.runtime.xla_flags import configure_xla\n"
            "off = configure_xla(platform='cpu', cpu_onednn=False)\n"
            "off_env = os.environ.get('XLA_FLAGS', '')\n"
            f"info = configure_xla(platform='cpu', cache_dir={str(tmp_path / 'cache')!r})\n"
            "import jax, jax.numpy as jnp\n"
            "print(int(jnp.sum(jnp.arange(4))), info['added_flags'] == [] or 'onednn' in os.environ['XLA_FLAGS'],\n"
            "      jax.config.jax_compilation_cache_dir is not None)\n"
            f"json.dump({{'off': off['added_flags'], 'off_env': off_env, 'on': info['added_flags'],\n"
            f"           'env': os.environ['XLA_FLAGS'], 'platform': jax.default_backend()}},\n"
            f"          open({str(tmp_path / 'info.json')!r}, 'w'))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["6", "True", "True"]
    info = json.loads((tmp_path / "info.json").read_text())
    # Switched off (cpu_onednn=False): nothing added, XLA_FLAGS stays empty.
    assert info["off"] == [] and info["off_env"] == ""
    if not xla_flags.jaxlib_has_flags(xla_flags.CPU_ONEDNN_FLAGS):  # same jaxlib as the child's
        pytest.skip("this jaxlib has no oneDNN fusion flags")
    # Switched on: exactly the two oneDNN/YNNPACK convolution flags, in XLA_FLAGS, and XLA ran with them.
    assert info["on"] == list(xla_flags.CPU_ONEDNN_FLAGS) == [
        "--xla_cpu_experimental_onednn_fusion_type=individual_convolution",
        "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"]
    assert info["env"].split() == info["on"] and info["platform"] == "cpu"
