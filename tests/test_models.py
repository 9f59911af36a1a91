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
from psa_jax.models.hrnet import HighResolutionModule
from psa_jax.models.options import model_options

pytestmark = pytest.mark.usefixtures("tiny_hrnet")  # tests/conftest.py: the 'w8_tiny' HRNet


LOSS_DROP = 0.8  # the pose network: its loss after 6 adam steps on one batch is below this x the first


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


def _adam_steps(model, images, target_fn, steps, lr):
    """`steps` optax.adam updates of target_fn(model(images)) on one fixed batch, training mode.

    Returns the losses before each update and the gradients of the first and second steps."""
    model.train()
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt, x):
        value, grads = nnx.value_and_grad(lambda m: target_fn(m(x)))(m)
        opt.update(m, grads)
        return value, grads

    losses, first = [], []
    for _ in range(steps):
        value, grads = step(model, optimizer, images)
        losses.append(float(value))
        if len(first) < 2:
            first.append(grads)
    return losses, first[0], first[1]


def _zero_gradient_leaves(grads, under):
    """Names of the Param leaves under the path prefix `under` whose gradient is exactly zero, and
    how many leaves were looked at."""
    flat = [(".".join(map(str, path)), leaf[...]) for path, leaf in nnx.to_flat_state(nnx.state(grads, nnx.Param))]
    mine = [(name, g) for name, g in flat if under in f".{name}."]
    return [name for name, g in mine if not np.any(np.asarray(g))], len(mine)


# Attention parameters whose gradient is zero at initialisation by design: the non-local block's
# output BatchNorm starts with scale 0 (the block starts as the identity), so only that BN's own
# parameters get a gradient at step 0 and the rest from step 1 on; GC's softmax logit bias is
# shift-invariant (its gradient is 0 at every step).
_ZERO_AT_START = {"nonlocal": ("g.", "phi.", "theta.", "w_z."), "gc": ()}
_ALWAYS_ZERO = {"gc": ("conv_mask.bias",)}


def _check_attention_gradients(attention, grads0, grads1, under=".deattn."):
    zero0, count = _zero_gradient_leaves(grads0, under)
    assert count > 0 or attention == "none"
    zero1, _ = _zero_gradient_leaves(grads1, under)
    always = _ALWAYS_ZERO.get(attention, ())
    late = _ZERO_AT_START.get(attention, ())
    leaf = lambda name: name.split(under.strip("."), 1)[-1].strip(".")  # noqa: E731
    bad0 = [n for n in zero0 if not leaf(n).startswith(always + late)]
    # step 1 only for the leaves that start at zero by design (a ReLU of SE/CBAM's 2-unit bottleneck
    # may legitimately die after the first update)
    bad1 = [n for n in zero1 if leaf(n).startswith(late)]
    assert not bad0, f"{attention}: zero gradient at step 0 for {bad0}"
    assert not bad1, f"{attention}: zero gradient at step 1 for {bad1}"


@pytest.mark.parametrize("attention", ATTENTION_NAMES)
def test_every_attention_option_trains_in_both_residual_blocks(attention):
    """The attention slot of HRNet's BasicBlock and (placement 'all_residual') Bottleneck: 10 adam
    steps on one fixed batch bring the loss below 0.6x (BasicBlock) / 0.85x (Bottleneck), and every attention parameter has a
    non-zero gradient (per leaf) at the first step. Widths of 32 attention channels keep every
    reduced width (C/8 in official PSA_s, C/16 in SE/CBAM/GC) at 2 or more: with 1 channel a
    LayerNorm's output is constant and the branch before it gets no gradient."""
    opts = model_options(attention, "all_residual", None, jnp.float32)
    for block in (BasicBlock(32, 32, opts=opts, rngs=nnx.Rngs(0)), Bottleneck(128, 32, opts=opts, rngs=nnx.Rngs(0))):
        c = 32 if isinstance(block, BasicBlock) else 128
        x = jax.random.normal(jax.random.key(0), (2, 9, 7, c))
        target = jax.random.normal(jax.random.key(1), (2, 9, 7, c))
        assert (block.deattn is None) == (attention == "none")
        assert nnx.jit(lambda m, x: m(x))(block, x).shape == x.shape
        losses, grads0, grads1 = _adam_steps(block, x, lambda y: jnp.mean((y - target) ** 2), 10, 1e-2)
        _check(losses[0], grads0)
        _check_attention_gradients(attention, grads0, grads1)
        name = type(block).__name__
        assert all(np.isfinite(losses)), (name, losses)
        # measured (fp32, CPU): <= 0.53 for BasicBlock, <= 0.80 for Bottleneck (whose ReLU output
        # cannot follow the negative half of the random target), over every attention option
        drop = 0.6 if isinstance(block, BasicBlock) else 0.85
        assert losses[-1] < drop * losses[0], (name, losses)


def test_the_pose_network_trains_with_psa():
    model = pose_hrnet("w8_tiny", attention="psa_p", num_keypoints=5)
    x = jax.random.normal(jax.random.key(0), (2, 64, 32, 3))
    loss, grads, y = _train_grads(model, x, lambda y: jnp.mean(y ** 2), with_outputs=True)
    assert y.shape == (2, 16, 8, 5)
    _check(loss, grads)
    # 6 adam steps on a fixed batch and target: the loss drops, and every PSA parameter of every
    # block (q/v convolutions of both branches, conv_up) has its own non-zero gradient at the start
    target = jax.random.uniform(jax.random.key(1), (2, 16, 8, 5))
    losses, grads0, grads1 = _adam_steps(model, x, lambda y: jnp.mean((y - target) ** 2), 6, 1e-2)
    _check(losses[0], grads0)
    _check_attention_gradients("psa_p", grads0, grads1)
    zero, count = _zero_gradient_leaves(grads0, ".deattn.")
    assert count == 5 * sum(1 for path, _ in nnx.iter_graph(model) if path and path[-1] == "deattn")
    assert losses[-1] < LOSS_DROP * losses[0], losses


def test_a_train_step_on_an_8_device_data_mesh_equals_the_1_device_step():
    """make_train_step with the global batch split over 8 CPU devices gives the loss, parameters and
    BatchNorm statistics of the same step on one device (BatchNorm's batch statistics are global)."""
    from psa_jax.training.train_step import make_mesh, make_train_step, state_shardings

    assert jax.device_count() == 8
    opts = model_options("psa_p", "basic", None, jnp.float32)

    def build():
        model = nnx.Sequential(Conv2d(3, 16, 3, stride=2, rngs=nnx.Rngs(0)), BatchNorm(16),
                               BasicBlock(16, 16, opts=opts, rngs=nnx.Rngs(1)), Conv2d(16, 3, 1, rngs=nnx.Rngs(2)))
        return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    rng = np.random.default_rng(0)
    batches = [{"image": jnp.asarray(rng.normal(size=(16, 12, 10, 3)) * 2 + 1, jnp.float32),
                "target": jnp.asarray(rng.normal(size=(16, 6, 5, 3)), jnp.float32)} for _ in range(2)]
    loss_fn = lambda out, b: (jnp.mean((out - b["target"]) ** 2), {})  # noqa: E731
    one = jax.make_mesh((1, 1), ("data", "model"), devices=jax.devices()[:1],
                        axis_types=(jax.sharding.AxisType.Auto,) * 2)
    results = {}
    for name, mesh in (("8", make_mesh(-1, 1)), ("1", one)):
        assert mesh.shape["data"] == int(name)
        model, optimizer = build()
        mgd, mst = nnx.split(model)
        ogd, ost = nnx.split(optimizer)
        msh, osh = state_shardings(mst, mesh), state_shardings(ost, mesh)
        step = make_train_step(mgd, ogd, loss_fn, schedule=None, model_sharding=msh, opt_sharding=osh, mesh=mesh)
        mst, ost = jax.device_put(mst, msh), jax.device_put(ost, osh)
        losses = []
        for batch in batches:
            mst, ost, metrics = step(mst, ost, batch)
            losses.append(float(metrics["loss"]))
        assert len(jax.tree.leaves(mst)[0].sharding.device_set) == int(name)
        results[name] = (losses, nnx.to_flat_state(nnx.state(nnx.merge(mgd, mst), nnx.Param)),
                         nnx.to_flat_state(nnx.state(nnx.merge(mgd, mst), nnx.BatchStat)))
    (l8, p8, s8), (l1, p1, s1) = results["8"], results["1"]
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    assert len(p8) == len(p1) > 10 and len(s8) == len(s1) >= 4
    for (k8, a), (k1, b) in list(zip(p8, p1)) + list(zip(s8, s1)):
        assert k8 == k1
        np.testing.assert_allclose(np.asarray(a[...]), np.asarray(b[...]), rtol=1e-4, atol=1e-5, err_msg=str(k8))
    initial = nnx.to_flat_state(nnx.state(build()[0], nnx.BatchStat))
    assert not np.allclose(np.asarray(s1[0][1][...]), np.asarray(initial[0][1][...]))  # the statistics moved


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


def test_every_network_constructor_takes_the_program_and_defaults_to_plain(tiny_hrnet):
    plain = {("phase_vjp", False), ("fused_bn", False), ("materialize", False)}
    cpu = {("phase_vjp", True), ("fused_bn", True), ("materialize", True)}
    builders = {
        "pose_hrnet": lambda **kw: pose_hrnet("w8_tiny", **kw),
        "seg_hrnet": lambda **kw: seg_hrnet("w8_tiny", **kw),
        "seg_hrnet_ocr": lambda **kw: seg_hrnet("w8_tiny", ocr=True, **kw),
        "mscale_ocr": lambda **kw: mscale_ocr("w8_tiny", **kw),
        "pose_resnet": lambda **kw: pose_resnet(26, **kw),
        # The classes take the program inside their `ModelOptions`.
        "PoseHRNet": lambda **kw: PoseHRNet(tiny_hrnet, num_keypoints=3, opts=ModelOptions(**kw),
                                            rngs=nnx.Rngs(0)),
        "SegHRNetV2": lambda **kw: SegHRNetV2(tiny_hrnet, num_classes=3, align_corners=False,
                                              opts=ModelOptions(**kw), rngs=nnx.Rngs(0)),
        "OCRNet": lambda **kw: OCRNet(tiny_hrnet, num_classes=3, align_corners=False, opts=ModelOptions(**kw),
                                      rngs=nnx.Rngs(0)),
        "MscaleOCR": lambda **kw: MscaleOCR(tiny_hrnet, num_classes=3, opts=ModelOptions(**kw), rngs=nnx.Rngs(0)),
        "PoseResNet": lambda **kw: PoseResNet(26, num_keypoints=3, opts=ModelOptions(**kw), rngs=nnx.Rngs(0)),
        "HRNetBackbone": lambda **kw: HRNetBackbone(tiny_hrnet, multi_scale_output=True, upsample="bilinear",
                                                    opts=ModelOptions(**kw), rngs=nnx.Rngs(0)),
    }
    for name, build in builders.items():
        assert _program_flags(build()) == plain, name
        assert _program_flags(build(program="xla_cpu")) == cpu, name
        assert _program_flags(build(program=XLA_CPU)) == cpu, name
    only_bn = _program_flags(pose_hrnet("w8_tiny", program=ProgramOptions(fused_batchnorm=True)))
    assert only_bn == {("phase_vjp", False), ("fused_bn", True), ("materialize", False)}
    opts = model_options("none", "basic", None, jnp.float32, "xla_cpu")
    assert _program_flags(PoseHRNet(tiny_hrnet, num_keypoints=3, opts=opts, rngs=nnx.Rngs(0))) == cpu
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
    # The image batch is split over the batch axes ('data' x 'fsdp' = n x 1 devices); parameters replicated.
    image_arg = (f'tensor<{n}x256x192x3xf32> {{sdy.sharding = #sdy.sharding<@mesh, '
                 '[{"data", "fsdp"}, {}, {}, {}]>')
    assert image_arg in text
    assert 'tensor<64xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}]>' in text  # e.g. the stem BN, replicated
