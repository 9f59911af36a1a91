"""PSA layers and the comparison blocks: parity with the official PyTorch structure, the paper's
equations, gradients, dtypes, shapes, the Linen bridge, the registry and the converter's errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from psa_jax.convert import ConversionError, from_torch
from psa_jax.layers import (
    ATTENTION_NAMES,
    ChannelOnlyAttention,
    PolarizedSelfAttention,
    PSA_p,
    PSA_s,
    SpatialOnlyAttention,
    make_attention,
    psa_macs,
)
from psa_jax.models import count_params, summary
from psa_jax.torch_reference import randomize_
from psa_jax.torch_reference.psa import make_psa, paper_psa_numpy, random_paper_weights

SHAPES = [(1, 16, 8, 8), (2, 32, 7, 5), (3, 8, 1, 1), (2, 48, 13, 17)]


@nnx.jit
def apply(module, x):
    """One compiled call (eager op-by-op execution compiles every primitive separately)."""
    return module(x)


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.mark.parametrize("kind,cls", [("psa_p", PSA_p), ("psa_s", PSA_s)])
@pytest.mark.parametrize("shape", SHAPES)
def test_official_parity_with_pytorch(kind, cls, shape):
    b, c, h, w = shape
    torch.manual_seed(0)
    ref = randomize_(make_psa(kind, c), seed=c + h, conv_gain=2.0).eval()
    x = torch.randn(b, c, h, w) * 2.0
    expected = _nhwc(ref(x))
    module = cls(c, rngs=nnx.Rngs(1))
    report = from_torch(module, ref.state_dict())
    assert not report.missing and not report.unexpected
    out = np.asarray(apply(module, jnp.asarray(_nhwc(x))))
    assert out.shape == (b, h, w, c)
    assert _rel_err(out, expected) <= 1e-5


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
@pytest.mark.parametrize("shape", [(2, 16, 6, 9), (1, 8, 1, 1)])
def test_paper_formulation_matches_numpy_equations(layout, shape):
    b, c, h, w = shape
    wts = random_paper_weights(c, seed=3, scale=2.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, c, h, w))
    expected = paper_psa_numpy(x, wts, layout).transpose(0, 2, 3, 1)
    k = lambda m: m.reshape(m.shape[0], m.shape[1], 1, 1)  # noqa: E731  (out, in) -> OIHW
    state = {"conv_q_right.weight": k(wts["ch_wq"]), "conv_v_right.weight": k(wts["ch_wv"]),
             "conv_up.weight": k(wts["ch_wz"]), "norm.weight": wts["ch_ln_weight"], "norm.bias": wts["ch_ln_bias"],
             "conv_q_left.weight": k(wts["sp_wq"]), "conv_v_left.weight": k(wts["sp_wv"])}
    module = PolarizedSelfAttention(c, layout=layout, formulation="paper", rngs=nnx.Rngs(0))
    from_torch(module, state)
    out = np.asarray(apply(module, jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32)))
    assert _rel_err(out, expected) <= 1e-5


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_branches_compose_as_the_paper_states(layout):
    c = 16
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, c))
    m = PolarizedSelfAttention(c, layout=layout, rngs=nnx.Rngs(0))

    @nnx.jit
    def composed(m, x):
        a_ch = m.channel_only.weights(x)
        if layout == "parallel":
            return x * a_ch + x * m.spatial_only.weights(x)
        x1 = x * a_ch
        return x1 * m.spatial_only.weights(x1)

    np.testing.assert_allclose(apply(m, x), composed(m, x), rtol=1e-5, atol=1e-6)
    # The branches, built on their own, compute x * A.
    ch = ChannelOnlyAttention(c, layout=layout, rngs=nnx.Rngs(2))
    sp = SpatialOnlyAttention(c, layout=layout, rngs=nnx.Rngs(3))
    gated = nnx.jit(lambda m, x: x * m.weights(x))
    np.testing.assert_allclose(apply(ch, x), gated(ch, x), rtol=1e-6)
    np.testing.assert_allclose(apply(sp, x), gated(sp, x), rtol=1e-6)


@pytest.mark.parametrize("c", [8, 48, 384])
def test_parameter_counts_match_the_layer_table(c):
    count = lambda layout, form: count_params(  # noqa: E731
        PolarizedSelfAttention(c, layout=layout, formulation=form, rngs=nnx.Rngs(0)))
    assert count("parallel", "official") == 2 * c * c + c
    mid = c // 2 // 4
    # C (q_right) + 3 * C * C/2 (v_right, q_left, v_left) + bottleneck conv_up with biases and LN.
    assert count("sequential", "official") == c + 3 * c * (c // 2) + (c // 2 * mid + mid) + 2 * mid + (mid * c + c)
    # Paper: q (C), three C x C/2 projections, W_z (C/2 x C), LayerNorm over C (2C).
    assert count("parallel", "paper") == count("sequential", "paper") == 2 * c * c + 3 * c


_VARIANTS = {"psa_p": (PSA_p, "official"), "psa_s": (PSA_s, "official"),
             "psa_p_paper": (PSA_p, "paper"), "psa_s_paper": (PSA_s, "paper")}


@pytest.mark.parametrize("name", list(_VARIANTS))
def test_registry_name_and_class_build_the_same_block(name):
    cls, form = _VARIANTS[name]
    by_name = make_attention(name, 16, rngs=nnx.Rngs(0))
    by_class = cls(16, formulation=form, rngs=nnx.Rngs(0))
    assert isinstance(by_class, PolarizedSelfAttention)
    assert (by_name.layout, by_name.formulation) == (by_class.layout, by_class.formulation)
    a, b = nnx.state(by_name, nnx.Param), nnx.state(by_class, nnx.Param)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(u, v)
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 16))
    np.testing.assert_array_equal(apply(by_name, x), apply(by_class, x))


@pytest.mark.parametrize("name", list(_VARIANTS))
@pytest.mark.parametrize("c,hw", [(8, (1, 1)), (16, (5, 7)), (48, (13, 17))])
def test_counted_macs_are_the_reference_convolutions(name, c, hw):
    cls, form = _VARIANTS[name]
    layout = "parallel" if cls is PSA_p else "sequential"
    expected = psa_macs(c, hw, layout=layout, formulation=form)
    n, half = hw[0] * hw[1], c // 2
    up = half * (c // 8) + (c // 8) * c if name == "psa_s" else half * c
    assert expected == n * (c + 3 * c * half) + up
    block = summary(cls(c, formulation=form, rngs=nnx.Rngs(0)), hw, channels=c)
    assert block["macs"] == expected
    assert block["convs"] == (6 if name == "psa_s" else 5)
    # Each branch on its own counts its share.
    kw = {"layout": layout, "formulation": form, "rngs": nnx.Rngs(0)}
    branches = [summary(b(c, **kw), hw, channels=c)["macs"] for b in (ChannelOnlyAttention, SpatialOnlyAttention)]
    assert sum(branches) == expected


@pytest.mark.parametrize("name", [n for n in ATTENTION_NAMES if n != "none"])
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    c = 16
    # A C/16 = 1-unit bottleneck can be a dead ReLU for a given input; use C/4 for se/cbam/gc.
    kw = {"reduction": 4} if name in ("se", "cbam", "gc") else {}
    module = make_attention(name, c, rngs=nnx.Rngs(0), **kw)
    if name == "nonlocal":  # its output BN starts at scale 0 (identity block): open it up
        module.bn.scale[...] = jnp.ones_like(module.bn.scale[...])
    x = jax.random.normal(jax.random.key(1), (2, 6, 5, c))
    target = jax.random.normal(jax.random.key(2), x.shape)

    def loss(m):
        return jnp.mean((m(x) - target) ** 2)

    grads = nnx.jit(nnx.grad(loss))(module)
    leaves = jax.tree.leaves_with_path(nnx.state(grads, nnx.Param))
    assert leaves
    for path, g in leaves:
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), f"zero gradient for {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("name", ["psa_p", "psa_s", "psa_p_paper", "psa_s_paper"])
def test_bf16_compute_is_close_to_fp32_and_params_stay_fp32(name):
    c = 32
    x = jax.random.normal(jax.random.key(0), (2, 9, 11, c))
    m32 = make_attention(name, c, rngs=nnx.Rngs(0))
    m16 = make_attention(name, c, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    y32, y16 = apply(m32, x), apply(m16, x)
    assert y16.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m16, nnx.Param)))
    assert _rel_err(np.asarray(y16, np.float32), y32) <= 1e-2


@pytest.mark.parametrize("name", ATTENTION_NAMES)
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (8, 6)])
def test_blocks_keep_shape_under_jit(name, hw):
    c = 16
    module = make_attention(name, c, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, *hw, c))
    y = apply(module, x)
    assert y.shape == x.shape and np.all(np.isfinite(np.asarray(y)))


def test_hrnet_init_makes_psa_p_an_identity_and_psa_s_a_quarter():
    # docs/psa.md: under HRNet's N(0, 1e-3) init, PSA_p ~ x and PSA_s ~ 0.25 x (Ach, Asp ~ 0.5).
    x = jax.random.normal(jax.random.key(0), (2, 16, 12, 48))
    p = apply(PSA_p(48, init="hrnet", rngs=nnx.Rngs(0)), x)
    np.testing.assert_allclose(p, x, rtol=2e-2, atol=2e-2)
    s = make_attention("psa_s", 48, init="hrnet", rngs=nnx.Rngs(0))
    ratio = np.asarray(apply(s, x) / x)
    assert 0.18 < ratio.mean() < 0.32


def test_usable_from_linen_through_the_bridge():
    from flax import linen as nn
    from flax.nnx import bridge

    class LinenNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(16, (3, 3))(x)
            return bridge.ToLinen(PSA_p, args=(16,))(x)

    x = jnp.ones((2, 8, 8, 3))
    net = LinenNet()
    variables = net.init(jax.random.key(0), x)
    y = net.apply(variables, x)
    assert y.shape == (2, 8, 8, 16) and np.all(np.isfinite(np.asarray(y)))
    psa_params = jax.tree.leaves(variables["params"]["ToLinen_0"])
    assert sum(p.size for p in psa_params) == 2 * 16 * 16 + 16


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="channels"):
        PSA_p(15, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="channels must be >= 8"):
        PSA_s(6, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="layout"):
        PolarizedSelfAttention(16, layout="diagonal", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="formulation"):
        PolarizedSelfAttention(16, formulation="blog", rngs=nnx.Rngs(0))
    m = PSA_p(16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rank 4"):
        m(jnp.ones((16, 8, 8)))
    with pytest.raises(ValueError, match="channels=16"):
        m(jnp.ones((1, 8, 8, 12)))
    with pytest.raises(ValueError, match="valid names"):
        make_attention("psa", 16, rngs=nnx.Rngs(0))


def test_from_torch_reports_every_problem_at_once():
    ref = randomize_(make_psa("psa_p", 16), seed=0)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    del sd["conv_q_left.weight"]
    sd["conv_extra.weight"] = torch.zeros(3)
    sd["conv_up.weight"] = torch.zeros(16, 4, 1, 1)
    module = PSA_p(16, rngs=nnx.Rngs(0))
    before = np.asarray(module.channel_only.conv_v_right.kernel[...]).copy()
    with pytest.raises(ConversionError) as err:
        from_torch(module, sd)
    msg = str(err.value)
    assert "1 missing keys" in msg and "conv_q_left.weight" in msg
    assert "1 unexpected keys" in msg and "conv_extra.weight" in msg
    assert "1 shape mismatches" in msg and "conv_up.weight" in msg and "(16, 4, 1, 1)" in msg
    # Nothing was written.
    np.testing.assert_array_equal(module.channel_only.conv_v_right.kernel[...], before)
    # PSA_s weights do not load into PSA_p.
    with pytest.raises(ConversionError, match="conv_up"):
        from_torch(module, randomize_(make_psa("psa_s", 16), seed=0).state_dict())


@pytest.mark.parametrize("channels", [0, 7, 64.0])
def test_channels_must_be_an_even_integer_of_at_least_two(channels):
    # Each condition alone rejects: 0 is even but < 2, 7 is odd, 64.0 is even and large but a float.
    with pytest.raises(ValueError, match="even integer >= 2"):
        PSA_p(channels, rngs=nnx.Rngs(0))


def test_spatial_branch_computes_in_the_module_dtype_else_the_input_dtype():
    """SpatialOnlyAttention.weights casts x (and W_v) to `dtype or x.dtype` before the (B, H, W, C)
    products; its output is fp32 either way, so the compute dtype shows in the values only."""
    c = 16
    x = 3 * jax.random.normal(jax.random.key(1), (2, 5, 7, c))                           # fp32
    xb = x.astype(jnp.bfloat16)
    m16 = PSA_s(c, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    m_none = PSA_s(c, rngs=nnx.Rngs(0))
    m32 = PSA_s(c, dtype=jnp.float32, rngs=nnx.Rngs(0))
    scale = jax.random.uniform(jax.random.key(2), (2, c), minval=0.2, maxval=1.0)       # PSA_s's A_ch path
    for cs in (None, scale):
        w16 = np.asarray(m16.spatial_only.weights(x, cs))
        w32 = np.asarray(m32.spatial_only.weights(x, cs))
        # dtype=bf16 on fp32 input == dtype=None on the bf16 input: the same bf16 computation.
        np.testing.assert_array_equal(w16, np.asarray(m_none.spatial_only.weights(xb, cs)))
        # dtype=None on fp32 input is the fp32 computation.
        np.testing.assert_array_equal(np.asarray(m_none.spatial_only.weights(x, cs)), w32)
        # ... and bf16 differs from fp32 by bf16 rounding (4e-4..8e-4 here), far above fp32's (~6e-8).
        assert 1e-5 < np.max(np.abs(w16 - w32)) < 1e-2
    np.testing.assert_array_equal(np.asarray(m16(x), np.float32), np.asarray(m_none(xb), np.float32))
