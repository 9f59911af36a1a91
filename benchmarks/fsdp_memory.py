"""Per-device memory of the pose train step under data parallelism and FSDP, from the compiler alone.

    python benchmarks/fsdp_memory.py [--width w48] [--input 384x288] [--batch 32] \
        [--meshes data=8 fsdp=8] [--devices 8] [--out benchmarks/fsdp_memory.json]

Compiles (never runs) train.py's step, `psa_jax.training.train_step.make_train_step(flat_state=True)`
with the pose task's loss (`joints_mse_loss` with per-joint weights), uint8 images normalised on
device, Adam, 17 keypoints, the program train.py builds for CPU ('xla_cpu') and XLA:CPU's
memory-minimising scheduler, on `--devices` host CPU devices (set before JAX starts), once per
mesh. Every argument is a `jax.ShapeDtypeStruct` carrying its sharding, so nothing is allocated.

For each mesh it reports the per-device sizes of `compiled.memory_analysis()` (the SPMD-partitioned
program is the program of one device): arguments, outputs, temporaries, aliased (donated
arguments reused as outputs), and `peak_estimate = argument + output + temp - alias`; and the
parameter + optimizer-state bytes one device stores (`psa_jax.training.sharding.describe`).
Writes the JSON (`--out`) and a markdown table beside it (`.md`), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MB = 2 ** 20


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", default="w48", help="HRNet width: w32, w48, ...")
    p.add_argument("--attention", default="none")
    p.add_argument("--input", default="384x288", help="HxW")
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--devices", type=int, default=8, help="host CPU devices")
    p.add_argument("--meshes", nargs="+", default=["data=8", "fsdp=8"],
                   help="one mesh per entry, axes joined by commas: data=4,fsdp=2")
    p.add_argument("--min_size", type=int, default=2 ** 14, help="state_shardings' min_size")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "fsdp_memory.json"))
    return p.parse_args(argv)


def _mesh_args(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name not in ("data", "fsdp", "model") or not value.lstrip("-").isdigit():
            raise SystemExit(f"--meshes entry {text!r}: expected e.g. data=8 or data=4,fsdp=2")
        out[name] = int(value)
    out.setdefault("data", -1)
    return out


def main(argv=None) -> dict:
    args = _parse(argv)
    os.environ["JAX_NUM_CPU_DEVICES"] = str(args.devices)
    os.environ["JAX_PLATFORMS"] = "cpu"
    from psa_jax.runtime import xla_flags  # imports no JAX
    xla_flags.configure_xla(platform="cpu")  # train.py's CPU flags (oneDNN)

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from psa_jax.data.pose_pipeline import normalize_on_device
    from psa_jax.models import pose_hrnet
    from psa_jax.tasks.pose_losses import joints_mse_loss
    from psa_jax.training.sharding import (
        batch_sharding,
        describe,
        make_mesh,
        state_shardings,
    )
    from psa_jax.training.train_step import make_train_step

    h, w = (int(v) for v in args.input.lower().split("x"))
    b, k = args.batch, 17

    def build():
        model = pose_hrnet(args.width, num_keypoints=k, attention=args.attention, program="xla_cpu")
        return model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    model, optimizer = nnx.eval_shape(build)  # shapes only
    model_gd, model_state = nnx.split(model)
    opt_gd, opt_state = nnx.split(optimizer)

    def loss_fn(out, batch):
        return joints_mse_loss(out.astype(jnp.float32), batch["target"], batch["target_weight"]), {}

    rows = []
    for text in args.meshes:
        mesh = make_mesh(**_mesh_args(text))
        model_sh = state_shardings(model_state, mesh, min_size=args.min_size)
        opt_sh = state_shardings(opt_state, mesh, min_size=args.min_size)
        step = make_train_step(model_gd, opt_gd, loss_fn, schedule=None, model_sharding=model_sh,
                               opt_sharding=opt_sh, mesh=mesh, flat_state=True, preprocess=normalize_on_device,
                               compiler_options=xla_flags.cpu_compiler_options("memory", platform="cpu"))

        def abstract(state, shardings):
            return [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                    for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True)]

        bsh = batch_sharding(mesh)
        batch = {"image": jax.ShapeDtypeStruct((b, h, w, 3), jnp.uint8, sharding=bsh),
                 "target": jax.ShapeDtypeStruct((b, h // 4, w // 4, k), jnp.float32, sharding=bsh),
                 "target_weight": jax.ShapeDtypeStruct((b, k), jnp.float32, sharding=bsh)}
        t0 = time.perf_counter()
        lowered = step.lower(abstract(model_state, model_sh), abstract(opt_state, opt_sh), batch)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        ma = compiled.memory_analysis()
        state_model, state_opt = describe(model_state, model_sh), describe(opt_state, opt_sh)
        row = {
            "mesh": dict(mesh.shape), "mesh_arg": text, "devices": jax.device_count(),
            "per_device_batch": b // (mesh.shape["data"] * mesh.shape["fsdp"]),
            "argument_mb": ma.argument_size_in_bytes / MB, "output_mb": ma.output_size_in_bytes / MB,
            "temp_mb": ma.temp_size_in_bytes / MB, "alias_mb": ma.alias_size_in_bytes / MB,
            "peak_estimate_mb": (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
                                 - ma.alias_size_in_bytes) / MB,
            "params_mb_per_device": state_model["per_device_bytes"] / MB,
            "opt_state_mb_per_device": state_opt["per_device_bytes"] / MB,
            "state_mb_total": (state_model["total_bytes"] + state_opt["total_bytes"]) / MB,
            "sharded_leaves": state_model["sharded_leaves"] + state_opt["sharded_leaves"],
            "leaves": state_model["leaves"] + state_opt["leaves"],
            "lower_s": t1 - t0, "compile_s": t2 - t1,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        del compiled, lowered, step

    result = {"model": f"pose_hrnet {args.width} attention={args.attention}", "input": f"{h}x{w}",
              "global_batch": b, "keypoints": k, "optimizer": "adam", "program": "xla_cpu",
              "backend": jax.default_backend(), "jax": jax.__version__,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}
    header = ("| mesh | batch/device | params MB/device | Adam state MB/device | argument MB | output MB | "
              "temp MB | alias MB | peak estimate MB | compile s |")
    lines = [header, "| " + " | ".join(["---"] * 10) + " |"]
    for r in rows:
        mesh = " x ".join(f"{a}={n}" for a, n in r["mesh"].items() if n > 1) or "1 device"
        lines.append(f"| {mesh} | {r['per_device_batch']} | {r['params_mb_per_device']:.1f} | "
                     f"{r['opt_state_mb_per_device']:.1f} | {r['argument_mb']:.1f} | {r['output_mb']:.1f} | "
                     f"{r['temp_mb']:.1f} | {r['alias_mb']:.1f} | {r['peak_estimate_mb']:.1f} | "
                     f"{r['compile_s']:.0f} |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"{result['model']}, {result['input']}, global batch {b}, Adam, "
                                      f"{jax.device_count()} {jax.default_backend()} devices ({result['date']})\n\n"
                                      f"{table}\n")
    return result


if __name__ == "__main__":
    main()
