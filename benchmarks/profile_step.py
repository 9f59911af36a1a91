"""Where the time of one JAX train step goes, per HLO operation kind (XLA:CPU).

    python benchmarks/profile_step.py --model pose_w32 --attention none --batch 8 [--steps 2] \
        [--top 25] [--mode train|infer] [jax_peer.py tuning switches]

Runs the train step `jax_peer.py` times (the product's `make_train_step`; the model built with the
program options of the same switches) under `jax.profiler.trace`, reads the XSpace with
`jax.profiler.ProfileData`, and sums the host-thread events by the HLO instruction they execute
(XLA:CPU's thunk events carry the instruction name). Instructions are classified with the
optimised HLO of the same executable: oneDNN/XNN custom calls and convolutions by their window
and dilations (forward / input-gradient / weight-gradient), fusions by their root, copies and
transposes, reductions. Prints CPU-seconds per step per class and the top instructions.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import time
from pathlib import Path


import jax_peer  # noqa: E402


def _classify(hlo_text: str) -> dict[str, str]:
    """instruction name -> class, from the optimised HLO module text."""
    classes: dict[str, str] = {}
    computations: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        m = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and "=" not in line.split("{")[0]:
            current = m.group(1)
            computations[current] = []
            continue
        if current is not None:
            computations[current].append(line)

    def conv_kind(line: str) -> str:
        if "lhs_dilate" in line:
            return "conv:input-grad(lhs-dilated)"
        if "rhs_dilate" in line or re.search(r"dim_labels=f01b_i01o", line) or re.search(r"dim_labels=\w+_\w+->01\w\w", line):
            return "conv:weight-grad"
        return "conv:fwd/stride1-like"

    def describe(body: list[str]) -> str:
        text = "\n".join(body)
        if "__onednn" in text or "onednn" in text:
            return "onednn"
        if " convolution(" in text:
            for l in body:
                if " convolution(" in l:
                    return conv_kind(l)
        if " dot(" in text:
            return "dot"
        if " reduce(" in text or " reduce-window(" in text:
            return "reduce"
        if " transpose(" in text:
            return "transpose"
        return "elementwise"

    for comp, body in computations.items():
        for line in body:
            m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+(?:\{[^}]*\})?\s+([\w\-]+)\(", line)
            if not m:
                m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([\w\-]+)\(", line)
                if not m:
                    continue
            name, op = m.group(1), m.group(2)
            if op == "fusion":
                called = re.search(r"calls=%?([\w.\-]+)", line)
                body_c = computations.get(called.group(1), []) if called else []
                kind = re.search(r"kind=(\w+)", line)
                cls = "fusion:" + describe(body_c)
                if "__onednn" in line or (kind and kind.group(1) in ("kCustom",) and "onednn" in "\n".join(body_c)):
                    cls = "onednn-fusion"
                classes[name] = cls
            elif op == "convolution":
                classes[name] = conv_kind(line)
            elif op == "custom-call":
                target = re.search(r'custom_call_target="([^"]+)"', line)
                classes[name] = "custom-call:" + (target.group(1) if target else "?")
            elif op in ("copy", "transpose"):
                classes[name] = "copy/transpose"
            elif op in ("reduce", "reduce-window"):
                classes[name] = "reduce"
            elif op in ("conditional", "while", "call"):
                classes[name] = "control:" + op
            else:
                classes[name] = op
    return classes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--trace_dir", default=None)
    args, rest = p.parse_known_args(argv)
    case = jax_peer._parse(rest)
    jax_peer.configure_flags(case)
    import jax
    from jax.profiler import ProfileData

    from psa_jax.runtime.xla_flags import cpu_compiler_options

    program = jax_peer.program_from_args(case, jax.default_backend())
    model, images, target, kind, loss_fn = jax_peer.build_case(case, program)
    if case.mode == "infer":
        from flax import nnx
        model.eval()
        graphdef, state = nnx.split(model)
        compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, images).compile()
        run = lambda: compiled(state, images).block_until_ready()  # noqa: E731
    else:
        options = cpu_compiler_options(case.cpu_scheduler, platform=jax.default_backend())
        step, state, _ = jax_peer.make_trainer_step(model, loss_fn, compiler_options=options)
        compiled = step.lower(state, images, target).compile()
        holder = [state]

        def run():
            holder[0], loss = compiled(holder[0], images, target)
            loss.block_until_ready()
    hlo_text = compiled.as_text()
    classes = _classify(hlo_text)
    for _ in range(case.warmup):
        run()
    trace_dir = Path(args.trace_dir or tempfile.mkdtemp(prefix="psa_prof_"))
    t = time.perf_counter()
    with jax.profiler.trace(str(trace_dir)):
        for _ in range(case.steps):
            run()
    wall = (time.perf_counter() - t) / case.steps
    xplane = sorted(trace_dir.rglob("*.xplane.pb"))[-1]
    (trace_dir / "optimized_hlo.txt").write_text(hlo_text)
    data = ProfileData.from_file(str(xplane))
    per_name: collections.Counter = collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith("/host"):
            continue
        for line in plane.lines:
            for ev in line.events:
                name = ev.name
                if name in classes:
                    per_name[name] += ev.duration_ns / 1e9
    per_class: collections.Counter = collections.Counter()
    for name, sec in per_name.items():
        per_class[classes[name]] += sec
    total = sum(per_class.values())
    print(f"wall {wall:.3f} s/step; instruction time {total / case.steps:.3f} CPU-s/step "
          f"({len(per_name)} instructions seen)")
    for cls, sec in per_class.most_common():
        print(f"  {cls:40s} {sec / case.steps:8.3f} s  {100 * sec / max(total, 1e-9):5.1f}%")
    print("top instructions:")
    for name, sec in per_name.most_common(args.top):
        print(f"  {name:50s} {classes[name]:32s} {sec / case.steps:8.3f} s")


if __name__ == "__main__":
    main()
