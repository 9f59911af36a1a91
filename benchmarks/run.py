"""Runs every benchmark and prints the table: psa_jax (JAX) against the PyTorch peer, same machine, same run.

    python benchmarks/run.py            # everything (about 1 hour on a 2-core CPU)
    python benchmarks/run.py --quick    # about 2-3 minutes: W32 (no attention), 1 round, quick pipelines
    python benchmarks/run.py --cases pose_w32:psa_p --rounds 5 --no_pipelines
    python benchmarks/run.py --only_pipelines  # keep results.json's model cases, re-measure the pipelines
    python benchmarks/run.py --cases seg_w48_ocr:none --merge --no_pipelines  # re-measure one case in place
    python benchmarks/run.py --accelerator --torch_python python3  # GPU host: bf16, larger batches, W48

Each measurement is a separate process (`jax_peer.py` / `torch_peer.py`), so that peak resident
memory is the case's own. The two frameworks alternate process by process (JAX first in odd
rounds, PyTorch first in even ones) and every number in the table is the median over rounds.
JAX's `compile_s` is the first train step's trace + compile in round 1 with an empty persistent
compilation cache; later rounds load it from the cache (`compile_cached_s`).

The PyTorch peer needs its own environment (`bash benchmarks/setup_torch_env.sh` creates
`benchmarks/.venv-torch` with torch 2.14.1, torchvision 0.29.1, timm); without it the JAX cases
still run and the table says the peer is missing.

Outputs: `benchmarks/results.json` (machine, versions, date, load, one record per case and
framework with framework, model, attention, batch, input, train_img_s, infer_img_s, peak_rss_mb,
compile_s and the per-round values) and `benchmarks/RESULTS.md` (the Markdown table the README
shows); with `--accelerator`, `results_accelerator.json` / `RESULTS_accelerator.md`, which add the
device allocator's peak (`peak_device_mb`) and model FLOP utilisation (train FLOP/s over the chip's
dense bf16 peak, `--peak_tflops`, known for H100/H200/A100). FLOPs per image come from
`psa_jax.models.summary` (executed multiply-adds x 2); a train step is counted as 3x the forward pass, so `train_gflop_s = 3 * 2 * executed_gmacs * train_img_s`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from psa_jax.runtime.host_memory import HUGE_PAGE_ENV

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JAX_PYTHON = Path(sys.executable)
TORCH_PYTHON = HERE / ".venv-torch" / "bin" / "python"

# (model, attention, batch, input, with PyTorch peer, steps)
CPU_CASES = [
    ("pose_w32", "none", 8, "256x192", True, 4),
    ("pose_w32", "psa_p", 8, "256x192", True, 4),
    ("pose_w32", "psa_s", 8, "256x192", True, 4),
    ("seg_w48_ocr", "none", 1, "256x512", True, 3),
]
QUICK_CASES = [("pose_w32", "none", 8, "256x192", True, 2)]
# On an accelerator (not lent on the 2-core development machine): larger batch, W48, bf16.
ACCEL_CASES = [
    ("pose_w32", "none", 64, "256x192", True, 20),
    ("pose_w32", "psa_p", 64, "256x192", True, 20),
    ("pose_w32", "psa_s", 64, "256x192", True, 20),
    ("pose_w48", "psa_s", 32, "384x288", True, 20),
    ("seg_w48_ocr", "psa_s", 4, "512x1024", True, 10),
]
# Both frameworks' processes get the huge-page environment (`psa_jax.runtime.host_memory`):
# it removes XLA:CPU's per-step page faults on its temp buffer; PyTorch's speed does not change
# with it (benchmarks/NOTES.md). It must be in the environment when a process starts.
HOST_ENV = dict(HUGE_PAGE_ENV)
RECORD_KEYS = ("framework", "model", "attention", "batch", "input", "train_img_s", "infer_img_s", "peak_rss_mb",
               "compile_s")


# Dense bf16 peak TFLOP/s by the vendors' datasheets (SXM parts), for model FLOP utilisation.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}


def _child_env(**extra: str) -> dict:
    """The environment of a case process: the repository first on PYTHONPATH (kept entries after)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="3", **extra)


def _run(cmd: list[str], timeout: float) -> dict:
    """Runs one case process; returns its JSON (last stdout line) or {'error': ...}."""
    env = _child_env(**HOST_ENV)
    env.pop("XLA_FLAGS", None)  # each case configures its own
    t = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": f"exit {out.returncode}: {out.stderr.strip()[-1500:]}"}
    result = json.loads(lines[-1])
    result["process_wall_s"] = round(time.perf_counter() - t, 1)
    return result


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def run_case(model: str, attention: str, batch: int, size: str, peer: bool, steps: int, *, rounds: int,
             cache_dir: Path, torch_ok: bool, dtype: str, timeout: float, log, warmup: int = 1,
             torch_python: Path = TORCH_PYTHON) -> list[dict]:
    """`rounds` alternating JAX / PyTorch processes for one case; returns one record per framework."""
    common = ["--model", model, "--attention", attention, "--batch", str(batch), "--input", size,
              "--steps", str(steps), "--warmup", str(warmup)]
    jax_cmd = [str(JAX_PYTHON), str(HERE / "jax_peer.py"), *common, "--dtype", dtype, "--cache_dir", str(cache_dir)]
    torch_cmd = [str(torch_python), str(HERE / "torch_peer.py"), *common]
    runs: dict[str, list[dict]] = {"jax": [], "pytorch": []}
    if not (peer and torch_ok):
        rounds = 1  # nothing to alternate with
    for r in range(rounds):
        order = ["jax", "pytorch"] if r % 2 == 0 else ["pytorch", "jax"]
        for fw in order:
            if fw == "pytorch" and not (peer and torch_ok):
                continue
            cmd = list(jax_cmd) if fw == "jax" else list(torch_cmd)
            if r == 0:
                cmd.append("--flops")
            load = _load()
            res = _run(cmd, timeout)
            res["load_before"] = load
            runs[fw].append(res)
            msg = res.get("error") or (f"train {res.get('train_img_s', 0):.2f} img/s, infer "
                                       f"{res.get('infer_img_s', 0):.2f} img/s, peak {res.get('peak_rss_mb', 0):.0f} MB"
                                       + (f", compile {res['compile_s']:.1f} s" if "compile_s" in res else ""))
            log(f"  round {r + 1}/{rounds} {fw:8s} {model} {attention:6s} b{batch} {size}: {msg} (load {load})")
    records = []
    for fw, rs in runs.items():
        ok = [x for x in rs if "error" not in x]
        if not rs:
            continue
        rec = {"framework": fw, "model": model, "attention": attention, "batch": batch, "input": size,
               "dtype": next((x["dtype"] for x in rs if "dtype" in x), dtype if fw == "jax" else "float32")}
        if not ok:
            rec["error"] = rs[0]["error"]
            records.append(rec)
            continue
        for key in ("train_img_s", "infer_img_s", "peak_rss_mb", "train_cpu_s", "infer_cpu_s", "peak_rss_total_mb",
                    "peak_device_mb"):
            rec[key] = _median([x.get(key) for x in ok])
        if fw == "jax":
            rec["compile_s"] = ok[0].get("compile_s")
            rec["trace_s"] = ok[0].get("trace_s")
            rec["compile_cached_s"] = _median([x.get("compile_s") for x in ok[1:]])
            rec["infer_compile_s"] = ok[0].get("infer_compile_s")
        else:
            rec["compile_s"] = None
        first = ok[0]
        for key in ("executed_gmacs", "hrnet_gflops", "params", "psa_blocks", "backend", "device", "device_name",
                    "xla_flags", "memory_format", "compiler_options"):
            if key in first:
                rec[key] = first[key]
        rec["rounds"] = [{k: x.get(k) for k in ("train_img_s", "infer_img_s", "peak_rss_mb", "compile_s",
                                                 "train_cpu_s", "load_before", "error") if k in x} for x in rs]
        if rec.get("executed_gmacs"):
            flop = 2e9 * rec["executed_gmacs"]
            rec["train_gflop_s"] = 3 * flop * rec["train_img_s"] / 1e9 if rec.get("train_img_s") else None
            rec["infer_gflop_s"] = flop * rec["infer_img_s"] / 1e9 if rec.get("infer_img_s") else None
        records.append(rec)
    return records


def run_pipelines(quick: bool, timeout: float, log) -> dict:
    out = {}
    for name in ("pose_pipeline", "seg_pipeline"):
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            # The segmentation benchmark's full setting times 3 sources x every augmentation preset
            # for 3 trials; its quick setting (1 trial, 3 s) is what the table reports.
            quick_here = quick or name == "seg_pipeline"
            cmd = [str(JAX_PYTHON), str(HERE / f"{name}.py"), "--out", f.name] + (["--quick"] if quick_here else [])
            log(f"  {name} ...")
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                                  env=_child_env())
            if proc.returncode != 0:
                out[name] = {"error": proc.stderr.strip()[-1500:]}
            else:
                out[name] = json.loads(Path(f.name).read_text())
    return out


def _versions(torch_ok: bool, torch_python: Path = TORCH_PYTHON) -> dict:
    v = {"python": platform.python_version()}
    code = "import jax, jaxlib, flax, optax; print(jax.__version__, jaxlib.__version__, flax.__version__, optax.__version__)"
    jax_v = subprocess.run([str(JAX_PYTHON), "-c", code], capture_output=True, text=True).stdout.split()
    v.update(zip(("jax", "jaxlib", "flax", "optax"), jax_v))
    if torch_ok:
        code = "import torch, timm; print(torch.__version__, timm.__version__, torch.get_num_threads())"
        t = subprocess.run([str(torch_python), "-c", code], capture_output=True, text=True).stdout.split()
        v.update(zip(("torch", "timm", "torch_threads"), t))
    return v


def _machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(mem_gb, 1),
            "platform": platform.platform(), "gpus": _gpus()}


def _gpus() -> list[str]:
    """'name, memory, driver' of each NVIDIA GPU (nvidia-smi), [] where there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _peak_tflops(gpus: list[str]) -> float | None:
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if gpus and name in gpus[0]:
            return tflops
    return None


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(results: dict) -> str:
    m, v = results["machine"], results["versions"]
    lines = [
        "# Benchmarks: psa_jax (JAX) and the PyTorch peer",
        "",
        f"Measured {results['date']} by `python benchmarks/run.py{' --quick' if results['quick'] else ''}` on "
        f"{m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB)"
        f"{''.join(f', GPU {g}' for g in m.get('gpus') or [])}, {m['platform']}; "
        f"load average {results['load_start']} at the start, {results['load_end']} at the end. "
        f"JAX {v.get('jax')} / jaxlib {v.get('jaxlib')} / flax {v.get('flax')}; "
        f"PyTorch peer: torch {v.get('torch', 'not installed')} / timm {v.get('timm', '-')} "
        f"({v.get('torch_threads', '-')} threads). Medians of {results['rounds']} alternating rounds.",
        "",
        "Train = forward + backward + Adam update, BatchNorm in training mode; inference = eval-mode "
        "forward. `peak RSS` is the train process's peak resident memory; `compile` the first JAX "
        "train step's trace + compile (empty cache; `cached` = loaded from the persistent "
        "compilation cache). Ratios are JAX / PyTorch (> 1: JAX faster; memory: < 1 is JAX smaller). "
        f"Every process ran with {' '.join(f'{k}={v}' for k, v in results.get('host_env', {}).items())} "
        "(see benchmarks/NOTES.md).",
        "",
    ]
    device_mem = any(rec.get("peak_device_mb") for rec in results["cases"])
    peak = results.get("peak_tflops")
    if device_mem:
        lines += ["`peak device MB`: the GPU allocator's peak in the train phase (JAX `memory_stats()`, "
                  "PyTorch `max_memory_allocated()`).", ""]
    if peak:
        lines += [f"MFU: train FLOP/s (3 x forward FLOPs x img/s) over the chip's dense bf16 peak of {peak} "
                  "TFLOP/s.", ""]
    extra = (["peak device MB"] if device_mem else []) + (["MFU %"] if peak else [])
    head = ["model", "attention", "batch", "input", "framework", "train img/s", "infer img/s", "peak RSS MB",
            *extra, "compile s (cached)", "GFLOP/img", "train GFLOP/s"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    by_case: dict[tuple, dict] = {}
    for rec in results["cases"]:
        by_case.setdefault((rec["model"], rec["attention"], rec["batch"], rec["input"]), {})[rec["framework"]] = rec
    ratios = []
    for (model, att, batch, size), fws in by_case.items():
        for fw in ("jax", "pytorch"):
            rec = fws.get(fw)
            if rec is None:
                continue
            if "error" in rec:
                lines.append(f"| {model} | {att} | {batch} | {size} | {fw} | error: {rec['error'][:80]} |"
                             + "|" * (len(head) - 6))
                continue
            comp = "-" if rec.get("compile_s") is None else (
                f"{rec['compile_s']:.0f} ({_fmt(rec.get('compile_cached_s'), '.0f')})")
            gflop = 2 * rec["executed_gmacs"] if rec.get("executed_gmacs") else None
            cells = [model, att, batch, size, fw, _fmt(rec.get("train_img_s")), _fmt(rec.get("infer_img_s")),
                     _fmt(rec.get("peak_rss_mb"), ".0f")]
            if device_mem:
                cells.append(_fmt(rec.get("peak_device_mb"), ".0f"))
            if peak:
                gfs = rec.get("train_gflop_s")
                cells.append(_fmt(None if gfs is None else 100 * gfs / (1000 * peak), ".1f"))
            cells += [comp, _fmt(gflop, ".1f"), _fmt(rec.get("train_gflop_s"), ".0f")]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        j, t = fws.get("jax"), fws.get("pytorch")
        if j and t and "error" not in j and "error" not in t:
            mem_key = "peak_device_mb" if device_mem else "peak_rss_mb"
            mem = (j[mem_key] / t[mem_key]) if j.get(mem_key) and t.get(mem_key) else None
            ratios.append((model, att, batch, size, j["train_img_s"] / t["train_img_s"],
                           j["infer_img_s"] / t["infer_img_s"], mem))
    if ratios:
        what = "peak device memory" if device_mem else "peak memory"
        lines += ["", "| model | attention | batch | input | train JAX/PyTorch | inference JAX/PyTorch | "
                  f"{what} JAX/PyTorch |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for model, att, batch, size, tr, inf, mem in ratios:
            lines.append(f"| {model} | {att} | {batch} | {size} | {tr:.2f} | {inf:.2f} | {_fmt(mem)} |")
    pipes = results.get("pipelines") or {}
    if pipes:
        when = f", measured {results['pipelines_date']}" if results.get("pipelines_date") else ""
        lines += ["", f"Input pipelines (samples/s per core; grain, one reader thread per core{when}):", ""]
        pose = pipes.get("pose_pipeline", {})
        if "grain_all_cores" in pose:
            g = pose["grain_all_cores"]
            lines.append(f"* pose (COCO sample images, {pose['setting']['codec']} codec, "
                         f"{pose['setting'].get('image_dtype', 'float32')} batches, "
                         f"{'x'.join(map(str, pose['setting']['input']))}): {g['samples_per_s_per_core']} samples/s "
                         f"per core ({g['samples_per_s']} total, {g['samples_per_cpu_s']} per CPU-second); "
                         f"grain with one thread: {pose['grain_1_thread']['samples_per_cpu_s']} per CPU-second; "
                         f"one thread without grain: {pose['single_thread']['samples_per_cpu_s']} per CPU-second."
                         + (f" Plain crop + Gaussian baseline (no augmentation) in the same run: "
                            f"{pose['plain_baseline']['samples_per_s_per_core']} per core; ours / plain "
                            f"{pose['vs_plain']['samples_per_s']}." if "plain_baseline" in pose else ""))
        seg = pipes.get("seg_pipeline", {})
        for key, entry in (seg.get("throughput") or {}).items():
            g = entry["grain_all_cores"]
            lines.append(f"* segmentation {key} (generated 1024x2048 images): {g['samples_per_s_per_core']} "
                         f"samples/s per core ({g.get('samples_per_cpu_s', '-')} per CPU-second)")
        for name, entry in pipes.items():
            if "error" in entry:
                lines.append(f"* {name}: error {entry['error'][:200]}")
    if results.get("accelerator"):
        lines += ["", f"Accelerator: {results['accelerator']}"]
    if results.get("notes"):
        lines += ["", f"Note: {results['notes']}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="W32 without attention, 1 round, quick pipelines")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds per case (default 3; quick 1)")
    p.add_argument("--cases", default=None, help="comma list of model:attention to run, e.g. pose_w32:psa_p")
    p.add_argument("--accelerator", action="store_true", help="the accelerator case list (bf16)")
    p.add_argument("--dtype", default=None, help="JAX compute dtype (default float32 on CPU, bfloat16 with "
                                                 "--accelerator)")
    p.add_argument("--no_pipelines", action="store_true")
    p.add_argument("--only_pipelines", action="store_true",
                   help="keep the model cases of --out_json, re-measure the input pipelines, rewrite the table")
    p.add_argument("--merge", action="store_true",
                   help="with --cases: replace only those cases in --out_json and keep its other cases and "
                        "pipelines (the table's note says what was re-measured when)")
    p.add_argument("--no_torch", action="store_true")
    p.add_argument("--torch_python", default=str(TORCH_PYTHON),
                   help="the interpreter with torch + timm (default: benchmarks/.venv-torch)")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="dense bf16 peak of the accelerator for MFU (default: known GPUs by name)")
    p.add_argument("--timeout", type=float, default=1800, help="per process")
    p.add_argument("--out_json", default=None, help="default benchmarks/results.json (results_accelerator.json)")
    p.add_argument("--out_md", default=None, help="default benchmarks/RESULTS.md (RESULTS_accelerator.md)")
    args = p.parse_args(argv)
    suffix = "_accelerator" if args.accelerator else ""
    args.out_json = args.out_json or str(HERE / f"results{suffix}.json")
    args.out_md = args.out_md or str(HERE / f"RESULTS{suffix}.md")
    torch_python = Path(args.torch_python)
    rounds = args.rounds or (1 if args.quick else 3)
    cases = QUICK_CASES if args.quick else (ACCEL_CASES if args.accelerator else CPU_CASES)
    dtype = args.dtype or ("bfloat16" if args.accelerator else "float32")
    if args.cases:
        wanted = {tuple(c.split(":")) for c in args.cases.split(",")}
        pool = ACCEL_CASES if args.accelerator else CPU_CASES
        cases = [c for c in pool if (c[0], c[1]) in wanted]
        if not cases:
            raise SystemExit(f"--cases {args.cases!r} matches none of " + ", ".join(f"{c[0]}:{c[1]}" for c in pool))
    torch_ok = (torch_python.exists() or shutil.which(str(torch_python)) is not None) and not args.no_torch

    def log(msg: str) -> None:
        print(msg, flush=True)

    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick, "rounds": rounds, "machine": _machine(), "versions": _versions(torch_ok, torch_python),
        "load_start": _load(), "host_env": HOST_ENV, "cases": [],
    }
    gpus = results["machine"]["gpus"]
    results["accelerator"] = ", ".join(gpus) if args.accelerator else "none lent to this run (CPU only)"
    results["peak_tflops"] = (args.peak_tflops or _peak_tflops(gpus)) if args.accelerator else None
    if not torch_ok:
        log(f"PyTorch peer environment not found at {torch_python}: run `bash benchmarks/setup_torch_env.sh`; "
            "measuring JAX only.")
    if args.merge and not args.cases:
        raise SystemExit("--merge needs --cases (the cases to re-measure)")
    if args.merge or args.only_pipelines:  # rewrite a previous results file in part
        previous = json.loads(Path(args.out_json).read_text())
        results.update({k: previous[k] for k in ("date", "quick", "rounds", "versions", "load_start", "host_env",
                                                  "accelerator", "peak_tflops", "cases", "pipelines",
                                                  "pipelines_date", "notes") if k in previous})
    if args.merge:
        ran = {c[:4] for c in cases}
        results["cases"] = [r for r in results["cases"] if (r["model"], r["attention"], r["batch"], r["input"])
                            not in ran]
        note = (f"{', '.join(f'{c[0]}:{c[1]}' for c in cases)} re-measured "
                f"{datetime.datetime.now().astimezone().isoformat(timespec='minutes')} ({rounds} rounds).")
        results["notes"] = f"{results.get('notes') or ''} {note}".strip()
    if args.only_pipelines:
        results["pipelines_date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        cases = []
    with tempfile.TemporaryDirectory(prefix="psa_jax_cache_") as cache_dir:
        for model, att, batch, size, peer, steps in cases:
            log(f"{model} attention={att} batch={batch} input={size}")
            results["cases"] += run_case(model, att, batch, size, peer, steps, rounds=rounds,
                                         cache_dir=Path(cache_dir), torch_ok=torch_ok, dtype=dtype,
                                         timeout=args.timeout, log=log, warmup=3 if args.accelerator else 1,
                                         torch_python=torch_python)
            Path(args.out_json).write_text(json.dumps(results, indent=1) + "\n")  # partial results
    if args.merge:  # the table keeps the case list's order
        order = [c[:2] for c in (ACCEL_CASES if args.accelerator else CPU_CASES)]
        results["cases"].sort(key=lambda r: order.index((r["model"], r["attention"]))
                              if (r["model"], r["attention"]) in order else len(order))
    if not args.no_pipelines:
        log("input pipelines")
        results["pipelines"] = run_pipelines(args.quick, args.timeout, log)
    results["load_end"] = _load()
    Path(args.out_json).write_text(json.dumps(results, indent=1) + "\n")
    md = markdown(results)
    Path(args.out_md).write_text(md)
    print()
    print(md)
    return results


if __name__ == "__main__":
    main()
