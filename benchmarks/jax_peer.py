"""One JAX benchmark case in its own process: train step and inference throughput, compile time, peak RSS.

    python benchmarks/jax_peer.py --model pose_w32 --attention psa_p --batch 8 --input 256x192 \
        [--steps 5] [--warmup 2] [--mode both|train|infer] [--dtype float32|bfloat16] \
        [--tuning cpu|plain] [--cache_dir DIR] [--flops] [--out result.json]

Train step: the product's own, `psa_jax.training.train_step.make_train_step`, the function
train.py jits, on a one-axis data mesh, with Adam and without the optional grad-norm metric
(train.py's default): `nnx.value_and_grad` of the MSE to the heatmaps (pose) or the pixel
cross-entropy (segmentation), BatchNorm in training mode. Inference = eval-mode forward under
`jax.jit`.

Timing: `--warmup` calls, then `--steps` calls each timed on its own (blocked on the result); the
median is reported as images/s. `compile_s` is the first train step's trace + lower + XLA compile
(with a cold cache unless `--cache_dir` holds an entry). Peak resident memory is the process's
`ru_maxrss` after the train phase (`peak_rss_mb`, the number compared with PyTorch) and after
everything (`peak_rss_total_mb`); on an accelerator also the device allocator's peak
(`peak_device_mb`, `memory_stats()['peak_bytes_in_use']` after the train phase). The result is
one JSON object on the last stdout line (and in `--out`).

Program and flags: with `--tuning cpu` (the default) the network is built with the program
`psa_jax.layers.xla_cpu.program_for_platform` picks for the backend ('xla_cpu' on CPU, 'plain'
elsewhere) and the oneDNN XLA flags are set on CPU hosts. `--tuning plain` switches off every
CPU workaround: the oneDNN flags and all `ProgramOptions` (materialisation points, the strided-conv
phase VJP, BatchNorm's hand-written VJP), for the ablations in benchmarks/NOTES.md; individual ones
can be switched off with `--no_onednn` (an XLA flag), `--no_materialize`, `--no_phase_vjp`,
`--no_fused_batchnorm` (program options).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from peer_io import emit, peak_rss_mb, rss_now_mb  # noqa: E402  (benchmarks/, this script's folder)


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pose_w32", help="pose_w18_small | pose_w32 | pose_w48 | seg_w48_ocr | seg_w48")
    p.add_argument("--attention", default="none")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input", default="256x192", help="HxW")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--infer_steps", type=int, default=None, help="default: --steps")
    p.add_argument("--mode", default="both", choices=("both", "train", "infer"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--tuning", default="cpu", choices=("cpu", "plain"))
    p.add_argument("--no_onednn", action="store_true")
    p.add_argument("--no_materialize", action="store_true")
    p.add_argument("--no_phase_vjp", action="store_true")
    p.add_argument("--no_fused_batchnorm", action="store_true")
    p.add_argument("--cache_dir", default=None, help="persistent compilation cache directory")
    p.add_argument("--flops", action="store_true", help="also count executed MACs per image")
    p.add_argument("--dump_hlo", default=None, help="write the optimised train-step HLO here")
    p.add_argument("--no_trim", action="store_true", help="do not return the compiler's freed heap to the OS")
    p.add_argument("--keep_caches", action="store_true",
                   help="skip jax.clear_caches() after compiling the train step (train.py clears them)")
    from psa_jax.runtime.xla_flags import CPU_SCHEDULERS  # imports no JAX
    p.add_argument("--cpu_scheduler", default="memory", choices=sorted(CPU_SCHEDULERS),
                   help="XLA:CPU HLO scheduler of the train step (train.py: config.cpu_scheduler)")
    p.add_argument("--compile_only", action="store_true", help="stop after compiling the train step")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def build_case(args: argparse.Namespace, program=None):
    """(model, images, target, kind, loss_on_outputs(outputs, target)) for the case's arguments.

    `program`: the model's `ProgramOptions` (or name); default `program_from_args(args)`.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from psa_jax.models import pose_hrnet, seg_hrnet

    h, w = (int(v) for v in args.input.lower().split("x"))
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else None
    program = program_from_args(args) if program is None else program
    kind, _, width = args.model.partition("_")
    width = width.replace("_ocr", "")
    if kind == "pose":
        model = pose_hrnet(width, attention=args.attention, dtype=dtype, program=program)
        target = jnp.zeros((args.batch, h // 4, w // 4, 17), jnp.float32)
    elif kind == "seg":
        model = seg_hrnet(width, ocr=args.model.endswith("_ocr"), attention=args.attention, dtype=dtype,
                          program=program)
        target = jnp.asarray(np.random.default_rng(0).integers(0, 19, (args.batch, -(-h // 4), -(-w // 4))),
                             jnp.int32)
    else:
        raise SystemExit(f"unknown --model {args.model!r}")
    images = jnp.asarray(np.random.default_rng(1).standard_normal((args.batch, h, w, 3)), jnp.float32)

    def loss_on_outputs(out, y):
        if kind == "pose":
            return jnp.mean(jnp.square(out.astype(jnp.float32) - y))
        logits = out[0] if isinstance(out, tuple) else out
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))

    return model, images, target, kind, loss_on_outputs


def make_trainer_step(model, loss_on_outputs, compiler_options=None):
    """The step train.py runs: `psa_jax.training.train_step.make_train_step(flat_state=True)` on a
    one-axis data mesh over the local devices, replicated state, Adam, no schedule.

    Returns (step, state, unflatten): `step(state, x, y) -> (state, loss)` with
    `state = (model_leaves, opt_leaves)` (`step.lower(...)` for ahead-of-time compilation), and
    `unflatten(state) -> (model, optimizer)`.
    """
    import jax
    import optax
    from flax import nnx

    from psa_jax.training import train_step as ts

    mesh = ts.make_mesh()
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    model_gd, model_state = nnx.split(model)
    opt_gd, opt_state = nnx.split(optimizer)
    model_sh, opt_sh = ts.state_shardings(model_state, mesh), ts.state_shardings(opt_state, mesh)

    def loss_fn(out, batch):
        return loss_on_outputs(out, batch["target"]), {}

    inner = ts.make_train_step(model_gd, opt_gd, loss_fn, schedule=None, model_sharding=model_sh,
                               opt_sharding=opt_sh, mesh=mesh, flat_state=True, compiler_options=compiler_options)

    class Step:
        """`inner` behind the (state, x, y) -> (state, loss) calling convention; `lower` for AOT."""

        def __init__(self, fn):
            self.fn = fn

        def lower(self, state, x, y):
            return Step(self.fn.lower(*state, {"image": x, "target": y}))

        def compile(self):
            return Step(self.fn.compile())

        def __call__(self, state, x, y):
            model_leaves, opt_leaves, metrics = self.fn(*state, {"image": x, "target": y})
            return (model_leaves, opt_leaves), metrics["loss"]

        def __getattr__(self, name):  # memory_analysis(), as_text(), ... of the wrapped stage
            return getattr(self.fn, name)

    def unflatten(state):
        return (nnx.merge(model_gd, jax.tree.unflatten(jax.tree.structure(model_sh), state[0])),
                nnx.merge(opt_gd, jax.tree.unflatten(jax.tree.structure(opt_sh), state[1])))

    state = (jax.device_put(jax.tree.leaves(model_state), jax.tree.leaves(model_sh)),
             jax.device_put(jax.tree.leaves(opt_state), jax.tree.leaves(opt_sh)))
    return Step(inner), state, unflatten


def device_peak_mb() -> float | None:
    """Peak bytes the first device's allocator held so far, in MiB (None where it reports none, e.g. CPU)."""
    import jax
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001  (backends without allocator statistics)
        return None
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2 ** 20


def configure_flags(args: argparse.Namespace) -> dict:
    """XLA flags and the compilation cache, before the backend starts (`--tuning`, `--no_onednn`)."""
    from psa_jax.runtime.xla_flags import configure_xla  # imports no JAX backend
    return configure_xla(cpu_onednn=not (args.tuning == "plain" or args.no_onednn), cache_dir=args.cache_dir)


def program_from_args(args: argparse.Namespace, platform: str | None = None):
    """The model's `ProgramOptions`: the platform's program (`--tuning cpu`) minus the switched-off
    options, or the plain program (`--tuning plain`). `platform`: default `target_platform()`."""
    from psa_jax.layers.xla_cpu import PLAIN, program_for_platform, program_options
    from psa_jax.runtime.xla_flags import target_platform

    if args.tuning == "plain":
        return PLAIN
    base = program_options(program_for_platform(target_platform(platform)))
    return dataclasses.replace(base, materialize=base.materialize and not args.no_materialize,
                               phase_conv_vjp=base.phase_conv_vjp and not args.no_phase_vjp,
                               fused_batchnorm=base.fused_batchnorm and not args.no_fused_batchnorm)


def main(argv=None) -> dict:
    args = _parse(argv)
    xla = configure_flags(args)

    import jax
    import numpy as np
    from flax import nnx

    from psa_jax.models.summary import summary

    program = program_from_args(args, jax.default_backend())   # after configure_flags: flags are set
    model, images, target, kind, loss_on_outputs = build_case(args, program)
    h, w = images.shape[1:3]

    result: dict = {"framework": "jax", "model": args.model, "attention": args.attention, "batch": args.batch,
                    "input": f"{h}x{w}", "dtype": args.dtype, "tuning": args.tuning,
                    "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
                    "xla_flags": xla["xla_flags"], "jax": jax.__version__,
                    "materialize": program.materialize, "phase_vjp": program.phase_conv_vjp,
                    "fused_batchnorm": program.fused_batchnorm}

    if args.mode in ("both", "train"):
        result["rss_before_compile_mb"] = rss_now_mb()
        from psa_jax.runtime.xla_flags import cpu_compiler_options
        options = cpu_compiler_options(args.cpu_scheduler, platform=jax.default_backend())
        result["compiler_options"] = options
        step, state, unflatten = make_trainer_step(model, loss_on_outputs, compiler_options=options)
        t0, c0 = time.perf_counter(), time.process_time()
        lowered = step.lower(state, images, target)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        result.update(trace_s=t1 - t0, xla_compile_s=t2 - t1, compile_s=t2 - t0, compile_cpu_s=time.process_time() - c0,
                      rss_after_compile_mb=peak_rss_mb())
        if not args.no_trim:
            from psa_jax.runtime.host_memory import trim_host_memory
            del lowered
            if not args.keep_caches:
                jax.clear_caches()
            trim_host_memory()
            result["rss_after_trim_mb"] = rss_now_mb()
        try:
            mem = compiled.memory_analysis()
            result.update(xla_temp_mb=mem.temp_size_in_bytes / 2 ** 20, xla_args_mb=mem.argument_size_in_bytes / 2 ** 20,
                          xla_out_mb=mem.output_size_in_bytes / 2 ** 20, xla_alias_mb=mem.alias_size_in_bytes / 2 ** 20)
        except Exception:  # noqa: BLE001  (not every backend reports it)
            pass
        if args.dump_hlo:
            Path(args.dump_hlo).write_text(compiled.as_text())
        if args.compile_only:
            print(json.dumps(result), flush=True)
            return result
        times, cpu, faults = [], [], []
        for i in range(args.warmup + args.steps):
            t, c = time.perf_counter(), time.process_time()
            f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            state, loss = compiled(state, images, target)
            loss.block_until_ready()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
        result["train_page_faults"] = statistics.median(faults)
        if not np.isfinite(float(loss)):
            raise SystemExit(f"train step produced a non-finite loss {float(loss)}")
        result.update(train_step_s=statistics.median(times), train_img_s=args.batch / statistics.median(times),
                      train_step_times=times, train_cpu_s=statistics.median(cpu), peak_rss_mb=peak_rss_mb(),
                      peak_device_mb=device_peak_mb())
        model, _ = unflatten(state)
        del state, compiled

    if args.mode in ("both", "infer"):
        model.eval()
        graphdef, state = nnx.split(model)

        def forward(state, x):
            out = nnx.merge(graphdef, state)(x)
            return out[0] if isinstance(out, tuple) else out

        fwd = jax.jit(forward)
        t = time.perf_counter()
        compiled_fwd = fwd.lower(state, images).compile()
        result["infer_compile_s"] = time.perf_counter() - t
        times, cpu = [], []
        for i in range(args.warmup + (args.infer_steps or args.steps)):
            t, c = time.perf_counter(), time.process_time()
            compiled_fwd(state, images).block_until_ready()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        result.update(infer_img_s=args.batch / statistics.median(times), infer_step_times=times,
                      infer_cpu_s=statistics.median(cpu))
        if "peak_rss_mb" not in result:
            result["peak_rss_mb"] = peak_rss_mb()
    result["peak_rss_total_mb"] = peak_rss_mb()

    if args.flops:
        s = summary(model, (h, w))
        result.update(params=s["params"], hrnet_gflops=s["gflops"], executed_gmacs=s["executed_gmacs"])
    return emit(result, args.out)


if __name__ == "__main__":
    main()
