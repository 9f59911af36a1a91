r"""Attention ablation: one training run per (attention, seed), then means, paired differences and costs.

    python -m psa_jax.tools.ablate --config=configs/pose_synthetic_demo.py --workdir=workdirs/ablation \
        --attention=none,psa_p,psa_s --seeds=0,1,2 [--config.KEY=VALUE ...]
    python -m psa_jax.tools.ablate ... --print_commands     # the per-run train.py commands, for a scheduler
    python -m psa_jax.tools.ablate ... --aggregate_only     # only collect what the runs have written

Every run is an ordinary train.py run in WORKDIR/<attention>/seed<k> (checkpoints, metrics.jsonl,
curves.png; resumable), with the config file and the user's overrides plus exactly two more:
`model.attention=<attention>` and `seed=<k>` (and `data.data_dir=WORKDIR/data`, shared by every
run, when the config leaves it empty). The runs go one after another, seed by seed (seed 0 of
every attention first, so an interrupted study already holds complete pairs), each as a separate
`train.py` process whose output goes to its run's train.log: a run that crashes is reported and
the study goes on, and every run starts in a fresh process (its own XLA flags, memory and
accelerator). `--in_process` calls `psa_jax.training.loop.train` in this process instead
(notebooks, tests, networks registered in-process only).

Rerunning the command skips finished runs (final_metrics.json holding the metric), resumes
unfinished ones from their checkpoints and retries failed ones. A run directory whose config.json
differs from what the study would run now (other overrides) is an error: the comparison must be
between runs of one recipe.

Outputs (psa_jax.tools.ablation_stats has the statistics): WORKDIR/ablation.json (every number,
every run's status), WORKDIR/ablation.md (the table), WORKDIR/ablation.png (per-seed points, means,
intervals). See docs/ablation.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from etils import epath

from psa_jax.tools import ablation_stats

__all__ = [
    "RunSpec",
    "Study",
    "SubprocessRunner",
    "in_process_runner",
    "main",
    "make_study",
    "model_costs",
    "plot_study",
    "run_state",
    "run_study",
]

logger = logging.getLogger("psa_jax.ablate")

FAILURE_FILE = "ablate_failure.json"   # written by this tool into a run directory whose training crashed
TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "train.py")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a study: its grid point, directory, config overrides and train.py command."""

    attention: str
    seed: int
    workdir: str
    overrides: tuple[str, ...]          # KEY=VALUE, as --config.KEY=VALUE
    config_path: str

    def command(self, python: str = sys.executable, train_script: str = TRAIN_SCRIPT) -> list[str]:
        """`python train.py --config=... --workdir=... --config.KEY=VALUE ...` as an argument list."""
        return [python, train_script, f"--config={self.config_path}", f"--workdir={self.workdir}",
                *(f"--config.{o}" for o in self.overrides)]

    def load_config(self):
        """The config train.py builds from `command()`."""
        from psa_jax.training.config_schema import load_config

        return load_config(self.config_path, self.overrides)


@dataclasses.dataclass(frozen=True)
class Study:
    """The grid of an ablation and what it measures."""

    config_path: str
    workdir: str
    attentions: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...]          # the user's, plus data.data_dir when the config leaves it empty
    baseline: str
    metric: str
    metric_mode: str
    task: str

    def run(self, attention: str, seed: int) -> RunSpec:
        return RunSpec(attention, seed, os.path.join(self.workdir, attention, f"seed{seed}"),
                       (*self.overrides, f"model.attention={attention}", f"seed={seed}"), self.config_path)

    def runs(self) -> list[RunSpec]:
        """Every run, seed by seed (all attentions of seed 0 first)."""
        return [self.run(a, s) for s in self.seeds for a in self.attentions]


def _absolute_config_path(path: str) -> str:
    file, sep, arg = path.partition(":")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"--config: no config file at {file!r}")
    return os.path.abspath(file) + sep + arg


def make_study(config_path: str, workdir: str, attentions: Sequence[str], seeds: Sequence[int],
               overrides: Sequence[str] = (), *, baseline: str = "none", metric: str | None = None) -> Study:
    """Checks the grid and the overrides (loading the baseline run's config) and fixes the study.

    Raises ValueError naming the problem: an attention not in the registry, a repeated attention or
    seed, a baseline that is not run, an override that sets model.attention or seed (the study sets
    those), an override without '=', or an unknown config key (from load_config).
    """
    from psa_jax.layers.registry import ATTENTION_NAMES
    from psa_jax.tasks.registry import get_task
    from psa_jax.training.config_schema import load_config

    attentions, seeds = tuple(attentions), tuple(int(s) for s in seeds)
    unknown = [a for a in attentions if a not in ATTENTION_NAMES]
    if unknown:
        raise ValueError(f"--attention: unknown attention {', '.join(map(repr, unknown))}; valid names (from "
                         f"psa_jax.layers.registry): {', '.join(ATTENTION_NAMES)}")
    if not attentions or len(set(attentions)) != len(attentions):
        raise ValueError(f"--attention must list distinct attention names, got {list(attentions)}")
    if baseline not in attentions:
        raise ValueError(f"--attention must include the baseline {baseline!r}: every difference is measured "
                         f"against it (got {','.join(attentions)}; add {baseline} or change --baseline)")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds must list distinct non-negative integers, got {list(seeds)}")
    for o in overrides:
        key, eq, _ = o.partition("=")
        if not eq:
            raise ValueError(f"override {o!r} must be KEY=VALUE (as --config.KEY=VALUE)")
        if key in ("model.attention", "seed"):
            raise ValueError(f"--config.{key} is set per run by the study; use --attention / --seeds instead")
    config_path = _absolute_config_path(config_path)
    workdir = workdir if "://" in workdir else os.path.abspath(workdir)
    overrides = tuple(overrides)
    config = load_config(config_path, (*overrides, f"model.attention={baseline}", f"seed={seeds[0]}"))
    if not config.data.get("data_dir", "x"):
        overrides += (f"data.data_dir={epath.Path(workdir) / 'data'}",)
    task = get_task(config, workdir)
    metric_mode = task.metric_mode
    if metric is not None and metric != task.metric and not metric.endswith("/" + task.metric):
        logger.warning("--metric=%s: its direction is taken as the task metric's (%s is better)", metric,
                       "higher" if metric_mode == "max" else "lower")
    return Study(config_path, workdir, attentions, seeds, overrides, baseline, metric or task.metric, metric_mode,
                 config.task)


# ---------------------------------------------------------------------------------------------- run states
def run_state(run_dir: str, metric: str) -> tuple[str, float | None, str | None]:
    """(status, value, error) of a run directory.

    'finished': final_metrics.json holds a finite `metric` (value); 'no_metric': final_metrics.json
    exists without it (error says which keys it has; not retried); 'failed': this tool recorded a
    crash (ablate_failure.json; retried); 'unfinished': the run started (config.json, metrics.jsonl or
    checkpoints exist; resumed); 'missing': nothing there.
    """
    run_path = epath.Path(run_dir)
    final = run_path / "final_metrics.json"
    if final.exists():
        results = json.loads(final.read_text())
        value = results.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return ablation_stats.FINISHED, float(value), None
        return "no_metric", None, (f"final_metrics.json has {metric}={value!r}; its keys: "
                                   f"{', '.join(sorted(results))}")
    failure = run_path / FAILURE_FILE
    if failure.exists():
        return "failed", None, json.loads(failure.read_text()).get("error", "")
    if any((run_path / p).exists() for p in ("checkpoints", "metrics.jsonl", "config.json")):
        return "unfinished", None, None
    return "missing", None, None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def check_run_config(run: RunSpec) -> None:
    """Raises ValueError when the run directory's config.json (written when its training started)
    differs from the config the study would give it now, naming the keys that differ."""
    path = epath.Path(run.workdir) / "config.json"
    if not path.exists():
        return
    try:
        written = _flatten(json.loads(path.read_text()))
    except json.JSONDecodeError:
        return  # a run killed while writing it; train() writes it again
    wanted = _flatten(json.loads(run.load_config().to_json_best_effort()))
    differ = sorted(k for k in set(written) & set(wanted) if written[k] != wanted[k])
    if differ:
        shown = "; ".join(f"{k}: run has {written[k]!r}, study wants {wanted[k]!r}" for k in differ[:8])
        raise ValueError(f"{run.workdir} was started with another config ({len(differ)} keys differ: {shown}). The "
                         "runs of a study must share one recipe: use a new --workdir, or delete that run directory")


# ---------------------------------------------------------------------------------------------- runners
Runner = Callable[[RunSpec], str | None]   # runs one run to its end; returns None or the error text


@dataclasses.dataclass
class SubprocessRunner:
    """Runs `python train.py ...` for a run, its stdout and stderr appended to RUN/train.log.

    Returns None when the process exits with 0, else an error naming the exit status and holding
    the log's last lines.
    """

    python: str = sys.executable
    train_script: str = TRAIN_SCRIPT
    tail_lines: int = 20

    def __call__(self, run: RunSpec) -> str | None:
        if not os.path.isfile(self.train_script):
            raise FileNotFoundError(f"train.py not found at {self.train_script}: run the study from a source checkout "
                                    "of psa_jax, or use --in_process")
        os.makedirs(run.workdir, exist_ok=True)
        log_path = os.path.join(run.workdir, "train.log")
        cmd = run.command(self.python, self.train_script)
        with open(log_path, "a") as log:
            log.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')} psa_jax.tools.ablate: "
                      f"{shlex.join(cmd)}\n")
            log.flush()
            code = subprocess.run(cmd, check=False, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        if code == 0:
            return None
        with open(log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-self.tail_lines:])
        return f"train.py exited with status {code} (log: {log_path}); last lines:\n{tail}"


def in_process_runner(run: RunSpec) -> str | None:
    """Runs `psa_jax.training.loop.train(config, run.workdir)` in this process; an exception is
    returned as the error text (KeyboardInterrupt stops the study)."""
    import traceback

    from psa_jax.training.loop import train

    try:
        train(run.load_config(), run.workdir)
    except Exception as e:  # noqa: BLE001 - any crash of one run is reported and the study goes on
        logger.error("%s seed %d failed: %r", run.attention, run.seed, e)
        return "".join(traceback.format_exception(e))
    return None


# ---------------------------------------------------------------------------------------------- costs
def model_costs(config) -> dict[str, Any]:
    """{'params', 'gflops', 'input_size'} of `config`'s network (`psa_jax.models.summary`) for one
    image of the training input size (pose: data.input_size; segmentation: data.crop_size)."""
    from flax import nnx

    from psa_jax.models.summary import summary
    from psa_jax.tasks.registry import get_task

    data = config.data
    size = tuple(data.input_size) if "input_size" in data else tuple(data.crop_size)
    model = get_task(config, "/nonexistent").build_model(nnx.Rngs(0))
    s = summary(model, size)
    return {"params": int(s["params"]), "gflops": float(s["gflops"]), "input_size": list(size)}


def _costs(study: Study, cost_fn: Callable[[Any], dict]) -> dict[str, dict]:
    costs = {}
    for a in study.attentions:
        try:
            costs[a] = cost_fn(study.run(a, study.seeds[0]).load_config())
        except Exception as e:  # noqa: BLE001 - reported in the table, the study's results stand
            logger.warning("parameter/GFLOP count of %s failed: %r", a, e)
            costs[a] = {"error": f"{type(e).__name__}: {e}"}
    return costs


# ---------------------------------------------------------------------------------------------- plot
def plot_study(summary: dict, path: str | os.PathLike) -> str:
    """ablation.png: left, each run's metric (points, one marker per seed), each attention's mean
    (bar) and the 95% t interval of the mean; right, the per-seed differences to the baseline, their
    mean and the paired interval, against a line at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries, seeds, metric = summary["attentions"], summary["seeds"], summary["metric"]
    others = [e for e in entries if e["attention"] != summary["baseline"]]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(4 + 1.3 * len(entries) + 1.3 * max(len(others), 1), 4.2),
                                 gridspec_kw={"width_ratios": [len(entries), max(len(others), 1)]})
    markers = "osD^v<>pPX*h"
    jitter = [0.0] if len(seeds) == 1 else [-0.15 + 0.3 * i / (len(seeds) - 1) for i in range(len(seeds))]
    pct = f"{summary['confidence']:.0%}"
    for x, e in enumerate(entries):
        for i, s in enumerate(seeds):
            v = e["per_seed"][str(s)]
            if v is not None:
                ax.scatter(x + jitter[i], v, marker=markers[i % len(markers)], color="tab:blue", alpha=0.7, zorder=3,
                           label=f"seed {s}" if x == 0 else None)
        if e["mean"] is not None:
            ax.hlines(e["mean"], x - 0.3, x + 0.3, color="black", lw=2, zorder=4)
        if e["mean_ci"]:
            ax.vlines(x + 0.3, *e["mean_ci"], color="black", lw=1.2)
    ax.set_xticks(range(len(entries)), [e["attention"] for e in entries])
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per run; mean and {pct} t interval")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    for x, e in enumerate(others):
        d = e["diff"]
        for i, s in enumerate(seeds):
            if str(s) in d["per_seed"]:
                bx.scatter(x + jitter[i], d["per_seed"][str(s)], marker=markers[i % len(markers)], color="tab:orange",
                           alpha=0.7, zorder=3)
        if d["mean"] is not None:
            lo, hi = d["ci"] if d["ci"] else (d["mean"], d["mean"])
            bx.errorbar(x + 0.3, d["mean"], yerr=[[d["mean"] - lo], [hi - d["mean"]]], fmt="s", color="black",
                        capsize=4, zorder=4)
    bx.axhline(0.0, color="gray", lw=1, ls="--")
    bx.set_xticks(range(len(others)), [e["attention"] for e in others])
    bx.set_xlim(-0.6, max(len(others), 1) - 0.4)
    bx.set_ylabel(f"Δ {metric} vs {summary['baseline']}")
    bx.set_title(f"paired by seed; mean and {pct} t interval")
    bx.grid(axis="y", alpha=0.3)
    better = "higher" if summary["metric_mode"] == "max" else "lower"
    fig.suptitle(f"{summary.get('task', '')} ablation, {len(seeds)} seeds ({better} {metric} is better)", fontsize=10)
    fig.tight_layout()
    with epath.Path(path).open("wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
    return os.fspath(path)


# ---------------------------------------------------------------------------------------------- the study
def run_study(study: Study, *, runner: Runner | None = None, execute: bool = True,
              cost_fn: Callable[[Any], dict] | None = model_costs, command: str = "") -> dict:
    """Runs every run of `study` that has no result yet (unless `execute` is False), then writes
    WORKDIR/ablation.json, .md and .png and returns the summary (see ablation_stats.aggregate).

    runner: how a run is executed (default: SubprocessRunner()); cost_fn: config -> {'params',
    'gflops', 'input_size'} (None: no cost columns); command: the command line, quoted in the outputs.
    """
    from psa_jax.training.metrics_log import read_metrics

    runner = runner or SubprocessRunner()
    runs = study.runs()
    for run in runs:   # before any training: a mismatched run directory stops the study at once
        check_run_config(run)
    results = []
    for i, run in enumerate(runs):
        status, value, error = run_state(run.workdir, study.metric)
        if execute and status not in (ablation_stats.FINISHED, "no_metric"):
            logger.info("[%d/%d] %s seed %d: %s -> training in %s", i + 1, len(runs), run.attention, run.seed,
                        status, run.workdir)
            failure = epath.Path(run.workdir) / FAILURE_FILE
            if failure.exists():
                failure.unlink()
            run_error = runner(run)
            status, value, error = run_state(run.workdir, study.metric)
            if status == ablation_stats.FINISHED and run_error is not None:
                logger.warning("%s seed %d wrote its final metrics but then failed: %s", run.attention, run.seed,
                               run_error)
            elif status != ablation_stats.FINISHED and status != "no_metric":
                error = run_error or "training returned without writing final_metrics.json"
                status = "failed"
            if status == "failed":
                failure.parent.mkdir(parents=True, exist_ok=True)
                failure.write_text(json.dumps({"error": error}, indent=2))
            logger.info("[%d/%d] %s seed %d: %s%s", i + 1, len(runs), run.attention, run.seed, status,
                        f" ({study.metric}={value:.4f})" if value is not None else f": {error}")
        else:
            logger.info("[%d/%d] %s seed %d: %s", i + 1, len(runs), run.attention, run.seed, status)
        rate = ablation_stats.median_throughput(read_metrics(epath.Path(run.workdir) / "metrics.jsonl"))
        results.append(ablation_stats.RunResult(run.attention, run.seed, status, value, rate, error, run.workdir))

    costs = _costs(study, cost_fn) if cost_fn is not None else {}
    summary = ablation_stats.aggregate(results, attentions=study.attentions, seeds=study.seeds, metric=study.metric,
                                       metric_mode=study.metric_mode, baseline=study.baseline, costs=costs)
    sizes = [c["input_size"] for c in costs.values() if "input_size" in c]
    summary.update({"task": study.task, "config": study.config_path, "overrides": list(study.overrides),
                    "command": command, "cost_input_size": sizes[0] if sizes else None,
                    "train_commands": {f"{r.attention}/seed{r.seed}": shlex.join(r.command()) for r in runs}})
    out = epath.Path(study.workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    (out / "ablation.md").write_text(ablation_stats.markdown_report(
        summary, title=f"Attention ablation: {os.path.basename(study.config_path)}"))
    plot_study(summary, out / "ablation.png")
    return summary


# ---------------------------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(options, config overrides KEY=VALUE from every --config.KEY=VALUE)."""
    p = argparse.ArgumentParser(prog="python -m psa_jax.tools.ablate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="config file, as train.py's --config")
    p.add_argument("--workdir", required=True, help="study directory; run k of attention A goes to WORKDIR/A/seedk")
    p.add_argument("--attention", required=True,
                   help="comma-separated attention names (psa_jax.layers.registry), the baseline included")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (config.seed of each run)")
    p.add_argument("--baseline", default="none", help="the attention the paired differences are taken against")
    p.add_argument("--metric", default=None, help="final metric compared (default: the task's, AP / mIoU)")
    p.add_argument("--print_commands", action="store_true",
                   help="print the train.py command of every run without a result, one a line, and stop")
    p.add_argument("--aggregate_only", action="store_true", help="train nothing; report what the runs have written")
    p.add_argument("--in_process", action="store_true",
                   help="train in this process (psa_jax.training.loop.train) instead of one train.py process per run")
    p.add_argument("--no_costs", action="store_true", help="skip the parameter / GFLOP counts")
    overrides, rest = [], []
    for a in argv:
        if a.startswith("--config."):
            key_value = a[len("--config."):]
            if "=" not in key_value:
                p.error(f"{a}: write config overrides as --config.KEY=VALUE (with '=')")
            overrides.append(key_value)
        else:
            rest.append(a)
    args = p.parse_args(rest)
    return args, overrides


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = parse_args(argv)
    try:
        seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if args.in_process:
        from psa_jax.runtime.entry_point import start_process

        start_process()
    else:
        import jax

        # This process only counts parameters; the accelerator is left to the train.py processes.
        jax.config.update("jax_platforms", "cpu")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        study = make_study(args.config, args.workdir, _split(args.attention), seeds, overrides,
                           baseline=args.baseline, metric=args.metric)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"psa_jax.tools.ablate: {e}") from None
    if args.print_commands:
        skipped = 0
        for run in study.runs():
            check_run_config(run)
            if run_state(run.workdir, study.metric)[0] in (ablation_stats.FINISHED, "no_metric"):
                skipped += 1
                continue
            print(shlex.join(run.command()))
        if skipped:
            print(f"# {skipped} finished runs not listed", file=sys.stderr)
        return 0
    command = shlex.join(["python", "-m", "psa_jax.tools.ablate", *argv])
    try:
        summary = run_study(study, runner=in_process_runner if args.in_process else SubprocessRunner(),
                            execute=not args.aggregate_only, cost_fn=None if args.no_costs else model_costs,
                            command=command)
    except ValueError as e:
        raise SystemExit(f"psa_jax.tools.ablate: {e}") from None
    print((epath.Path(study.workdir) / "ablation.md").read_text())
    n_missing = len(summary["not_finished"])
    print(f"wrote {os.path.join(study.workdir, 'ablation.{json,md,png}')}"
          + (f"; {n_missing} runs without a result (listed above)" if n_missing else ""))
    return 1 if n_missing else 0


if __name__ == "__main__":
    sys.exit(main())
