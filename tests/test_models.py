"""Networks: published counts, shapes, gradients for every network and attention option, bad
input, bf16, the program option (`program=`), and the W32 pose train step compiling under jit
with a sharded batch."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from psa_jax.layers import ATTENTION_NAMES, BatchNorm, Conv2d
from psa_jax.layers.xla_cpu import XLA_CPU, ProgramOptions
from psa_jax.models import (HRNetBackbone, MscaleOCR, OCRNet, PoseHRNet, PoseResNet, SegHRNetV2, mscale_ocr,
                            pose_hrnet, pose_resnet, seg_hrnet, summary)
from psa_jax.models.blocks import BasicBlock, Bottleneck, ModelOptions
from psa_jax.models.hrnet import HRNET_SPECS, HighResolutionModule, HRNetSpec, StageSpec
from psa_jax.models.options import model_options

TINY = HRNetSpec("w8_tiny", 1, 16, (StageSpec(1, (1, 1), (8, 16)), StageSpec(1, (1, 1, 1), (8, 16, 32)),
                                    StageSpec(1, (1, 1, 1, 1), (8, 16, 32, 64))))


@pytest.fixture(autouse=True)
def tiny_hrnet(monkeypatch):
    monkeypatch.setitem(HRNET_SPECS, "w8_tiny", TINY)


@pytest.mark.parametrize("width,hw,params,gflops", [
    (32, (256, 192), 28_536_113, 7.12), (32, (384, 288), 28_536_113, 16.02), (48, (256, 192), 63_595_745, 14.61)])
def test_pose_counts_match_the_published_tables(width, hw, params, gflops):
    s = summary(pose_hrnet(width), hw)
    assert s["params"] == params
    assert round(s["gflops"], 2) == gflops


def test_segmentation_counts_match_the_published_table():
    s = summary(seg_hrnet(48, num_classes=19), (1024, 2048))
    assert s["params"] == 65_859_379
    assert round(s["gflops"], 1) == 696.2


def test_psa_overhead_in_params_matches_the_per_block_formula():
    # 104 BasicBlocks in stages 2-4 of W32: 32 at C=32, 32 at 64, 28 at 128, 12 at 256.
    blocks = {32: 32, 64: 32, 128: 28, 256: 12}
    base = summary(pose_hrnet(32), (256, 192))["params"]
    p = summary(pose_hrnet(32, attention="psa_p"), (256, 192))["params"]
    assert p - base == sum(n * (2 * c * c + c) for c, n in blocks.items())


def _train_grads(model, images, target_fn, *, with_outputs=False):
    """(loss, grads) of target_fn(model(images)) in training mode; with_outputs: also the outputs."""
    model.train()

    @nnx.jit
    def step(m, x):
        def loss(m):
            y = m(x)
            return target_fn(y), y
        (value, y), grads = nnx.value_and_grad(loss, has_aux=True)(m)
        return value, grads, y

    value, grads, y = step(model, images)
    return (value, grads, y) if with_outputs else (value, grads)


def _check(loss, grads):
    assert np.isfinite(float(loss))
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert leaves and all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


@pytest.mark.parametrize("attention", ATTENTION_NAMES)
def test_every_attention_option_trains_in_both_residual_blocks(attention):
    """The attention slot of HRNet's BasicBlock and (placement 'all_residual') Bottleneck."""
    opts = model_options(attention, "all_residual", None, jnp.float32)
    for block in (BasicBlock(16, 16, opts=opts, rngs=nnx.Rngs(0)), Bottleneck(32, 8, opts=opts, rngs=nnx.Rngs(0))):
        x = jax.random.normal(jax.random.key(0), (2, 9, 7, 16 if isinstance(block, BasicBlock) else 32))
        assert (block.deattn is None) == (attention == "none")
        assert nnx.jit(lambda m, x: m(x))(block, x).shape == x.shape
        _check(*_train_grads(block, x, lambda y: jnp.mean(y ** 2)))


def test_the_pose_network_trains_with_psa():
    model = pose_hrnet("w8_tiny", attention="psa_p", num_keypoints=5)
    x = jax.random.normal(jax.random.key(0), (2, 64, 32, 3))
    loss, grads, y = _train_grads(model, x, lambda y: jnp.mean(y ** 2), with_outputs=True)
    assert y.shape == (2, 16, 8, 5)
    _check(loss, grads)


@pytest.mark.parametrize("name", ["seg_hrnet", "seg_hrnet_ocr", "mscale_ocr", "pose_resnet", "pose_all_residual"])
def test_every_network_has_documented_outputs_and_finite_gradients(name):
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    if name == "seg_hrnet":
        model = seg_hrnet("w8_tiny", num_classes=7, attention="psa_s")
        model.eval()
        assert nnx.jit(lambda m, x: m(x))(model, x[:, :50, :60]).shape == (2, 13, 15, 7)  # any size works
        _check(*_train_grads(model, x, lambda y: jnp.mean(y ** 2)))
    elif name == "seg_hrnet_ocr":
        model = seg_hrnet("w8_tiny", num_classes=7, ocr=True, attention="psa_p")
        loss, grads, (main, aux) = _train_grads(model, x, lambda y: jnp.mean(y[0] ** 2) + 0.4 * jnp.mean(y[1] ** 2),
                                                with_outputs=True)
        assert main.shape == aux.shape == (2, 16, 16, 7)
        _check(loss, grads)
        model.eval()
        assert nnx.jit(lambda m, x: m(x))(model, x).shape == (2, 16, 16, 7)
    elif name == "mscale_ocr":
        model = mscale_ocr("w8_tiny", num_classes=7, attention="psa_p", eval_scales=(0.5, 1.0))
        loss, grads, out = _train_grads(model, x, lambda y: sum(jnp.mean(v ** 2) for v in y.values()),
                                        with_outputs=True)  # training mode: the two-scale dict
        assert set(out) == {"pred", "aux", "pred_lo", "pred_hi"}
        assert all(v.shape == (2, 64, 64, 7) for v in out.values())
        _check(loss, grads)
        model.eval()
        assert nnx.jit(lambda m, x: m(x))(model, x).shape == (2, 64, 64, 7)
    elif name == "pose_resnet":
        model = pose_resnet(26, num_keypoints=17, attention="psa_p")
        loss, grads, y = _train_grads(model, x, lambda y: jnp.mean(y ** 2), with_outputs=True)
        assert y.shape == (2, 16, 16, 17)
        _check(loss, grads)
    else:
        model = pose_hrnet("w8_tiny", attention="psa_s", placement="all_residual")
        assert model.backbone.layer1[0].deattn is not None
        _check(*_train_grads(model, x, lambda y: jnp.mean(y ** 2)))


def test_batchnorm_running_statistics_are_updated_in_training_only():
    model = pose_hrnet("w8_tiny")
    x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3)) * 3 + 1
    before = np.asarray(model.backbone.bn1.mean[...]).copy()
    _train_grads(model, x, lambda y: jnp.mean(y))
    after = np.asarray(model.backbone.bn1.mean[...])
    assert not np.allclose(before, after)
    # Momentum 0.1 towards the batch mean of the first conv's output.
    conv = np.asarray(nnx.jit(lambda m, x: m.backbone.conv1(x))(model, x))
    np.testing.assert_allclose(after, 0.9 * before + 0.1 * conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    model.eval()
    nnx.jit(lambda m, x: m(x))(model, x)
    np.testing.assert_array_equal(model.backbone.bn1.mean[...], after)


def test_bf16_compute_keeps_fp32_parameters_and_close_outputs():
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    m32 = pose_hrnet("w8_tiny", attention="psa_p", rngs=nnx.Rngs(3))
    m16 = pose_hrnet("w8_tiny", attention="psa_p", dtype=jnp.bfloat16, rngs=nnx.Rngs(3))
    for m in (m32, m16):
        m.eval()
    y32 = nnx.jit(lambda m, x: m(x))(m32, x)
    y16 = nnx.jit(lambda m, x: m(x))(m16, x)
    assert y16.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m16, nnx.Param)))
    err = float(jnp.max(jnp.abs(y16.astype(jnp.float32) - y32)) / jnp.max(jnp.abs(y32)))
    assert err < 5e-2


def test_bad_arguments_name_the_valid_choices():
    with pytest.raises(ValueError, match="valid: 18, 32, 48, 'w18_small'"):
        pose_hrnet(40)
    with pytest.raises(ValueError, match="valid names: none, psa_p"):
        pose_hrnet(32, attention="psa")
    with pytest.raises(ValueError, match="placement"):
        seg_hrnet(48, placement="everywhere")
    model = pose_hrnet("w8_tiny")
    with pytest.raises(ValueError, match="multiples of 32"):
        model(jnp.ones((1, 70, 64, 3)))
    with pytest.raises(ValueError, match="NHWC RGB"):
        model(jnp.ones((1, 64, 64, 1)))


def _program_flags(model: nnx.Module) -> set[tuple[str, bool]]:
    """{(kind, on)} over the strided convs, BatchNorms and materialisation sites of `model`."""
    flags = set()
    for _, node in nnx.iter_graph(model):
        if isinstance(node, Conv2d) and node.stride > 1:
            flags.add(("phase_vjp", node.phase_vjp))
        elif isinstance(node, BatchNorm):
            flags.add(("fused_bn", node.fused_vjp))
        elif isinstance(node, (BasicBlock, Bottleneck, HighResolutionModule)):
            flags.add(("materialize", node.materialize_output))
    return flags


def test_every_network_constructor_takes_the_program_and_defaults_to_plain():
    plain = {("phase_vjp", False), ("fused_bn", False), ("materialize", False)}
    cpu = {("phase_vjp", True), ("fused_bn", True), ("materialize", True)}
    builders = {
        "pose_hrnet": lambda **kw: pose_hrnet("w8_tiny", **kw),
        "seg_hrnet": lambda **kw: seg_hrnet("w8_tiny", **kw),
        "seg_hrnet_ocr": lambda **kw: seg_hrnet("w8_tiny", ocr=True, **kw),
        "mscale_ocr": lambda **kw: mscale_ocr("w8_tiny", **kw),
        "pose_resnet": lambda **kw: pose_resnet(26, **kw),
        # The classes take the program inside their `ModelOptions`.
        "PoseHRNet": lambda **kw: PoseHRNet(TINY, num_keypoints=3, opts=ModelOptions(**kw), rngs=nnx.Rngs(0)),
        "SegHRNetV2": lambda **kw: SegHRNetV2(TINY, num_classes=3, align_corners=False, opts=ModelOptions(**kw),
                                              rngs=nnx.Rngs(0)),
        "OCRNet": lambda **kw: OCRNet(TINY, num_classes=3, align_corners=False, opts=ModelOptions(**kw),
                                      rngs=nnx.Rngs(0)),
        "MscaleOCR": lambda **kw: MscaleOCR(TINY, num_classes=3, opts=ModelOptions(**kw), rngs=nnx.Rngs(0)),
        "PoseResNet": lambda **kw: PoseResNet(26, num_keypoints=3, opts=ModelOptions(**kw), rngs=nnx.Rngs(0)),
        "HRNetBackbone": lambda **kw: HRNetBackbone(TINY, multi_scale_output=True, upsample="bilinear",
                                                    opts=ModelOptions(**kw), rngs=nnx.Rngs(0)),
    }
    for name, build in builders.items():
        assert _program_flags(build()) == plain, name
        assert _program_flags(build(program="xla_cpu")) == cpu, name
        assert _program_flags(build(program=XLA_CPU)) == cpu, name
    only_bn = _program_flags(pose_hrnet("w8_tiny", program=ProgramOptions(fused_batchnorm=True)))
    assert only_bn == {("phase_vjp", False), ("fused_bn", True), ("materialize", False)}
    opts = model_options("none", "basic", None, jnp.float32, "xla_cpu")
    assert _program_flags(PoseHRNet(TINY, num_keypoints=3, opts=opts, rngs=nnx.Rngs(0))) == cpu
    with pytest.raises(ValueError, match="valid: 'plain', 'xla_cpu'"):
        pose_hrnet("w8_tiny", program="bogus")


def test_the_xla_cpu_program_trains_to_the_same_numbers():
    """Pose HRNet built plain (default) and with program='xla_cpu': the plain training-mode
    program holds no materialisation cond and no custom VJP, the other both; loss, gradients and
    running statistics agree."""
    x = jax.random.normal(jax.random.key(2), (2, 64, 64, 3)) * 2 + 0.5
    loss_of = lambda y: jnp.mean(jnp.sin(y) ** 2)  # noqa: E731
    results = {}
    for program in ("plain", "xla_cpu"):
        model = pose_hrnet("w8_tiny", num_keypoints=3, **({} if program == "plain" else {"program": program}))
        graphdef, state = nnx.split(model)
        text = str(jax.make_jaxpr(lambda st, v: loss_of(nnx.merge(graphdef, st)(v)))(state, x))
        assert (("cond" in text), ("custom_vjp_call" in text)) == ((program == "xla_cpu"),) * 2, program
        loss, grads = _train_grads(model, x, loss_of)
        results[program] = (float(loss), jax.tree.leaves(nnx.state(grads, nnx.Param)),
                            jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    (l0, g0, s0), (l1, g1, s1) = results["plain"], results["xla_cpu"]
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(g1, g0):   # BatchNorm's two backward paths round differently
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    for a, b in zip(s1, s0):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_w32_pose_train_step_lowers_with_a_batch_sharded_over_devices():
    """Traces and lowers the full W32 + PSA_p train step under jit with NamedShardings.

    XLA:CPU's compilation of this program takes minutes on 2 cores, so the test stops at the
    lowered program; `benchmarks/run.py` compiles and runs it (and reports the compile time).
    """
    from psa_jax.tasks.pose_losses import joints_mse_loss
    from psa_jax.training.train_step import make_mesh, make_train_step, state_shardings

    model = pose_hrnet(32, attention="psa_p", program="xla_cpu")  # what train.py builds for a CPU mesh
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    mgd, mst = nnx.split(model)
    ogd, ost = nnx.split(optimizer)
    mesh = make_mesh(-1, 1)
    step = make_train_step(mgd, ogd, lambda out, b: (joints_mse_loss(out, b["target"], b["target_weight"]), {}),
                           schedule=optax.constant_schedule(1e-3), model_sharding=state_shardings(mst, mesh),
                           opt_sharding=state_shardings(ost, mesh), mesh=mesh)
    n = jax.device_count()
    batch = {"image": jax.ShapeDtypeStruct((n, 256, 192, 3), jnp.float32),
             "target": jax.ShapeDtypeStruct((n, 64, 48, 17), jnp.float32),
             "target_weight": jax.ShapeDtypeStruct((n, 17), jnp.float32)}
    abstract = lambda t: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)  # noqa: E731
    lowered = step.lower(abstract(mst), abstract(ost), batch)
    text = lowered.as_text()
    assert text.count("stablehlo.convolution") >= 293 * 3  # forward, input and weight gradients
    # The image batch is split over the 'data' axis of the mesh (n devices); parameters replicated.
    image_arg = f'tensor<{n}x256x192x3xf32> {{sdy.sharding = #sdy.sharding<@mesh, [{{"data"}}, {{}}, {{}}, {{}}]>'
    assert image_arg in text
    assert 'tensor<64xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}]>' in text  # e.g. the stem BN, replicated
