"""Statistics of an attention ablation: per-attention means over seeds and paired differences to a baseline.

Pure aggregation (numpy, scipy; no JAX), used by `psa_jax.tools.ablate` and testable on hand-made results.

For attention `a` with finished seeds S_a and metric values x_{a,s}:

* mean  m_a = (1/n) sum_s x_{a,s},  sample standard deviation  sd_a = sqrt(sum_s (x_{a,s} - m_a)^2 / (n - 1));
* the 95% interval of the mean  m_a +- t_{0.975, n-1} sd_a / sqrt(n)  (shown in the plot);
* the difference to the baseline, paired by seed: over the seeds P finished for both `a` and the baseline,
  d_s = x_{a,s} - x_{baseline,s},  and the 95% paired t interval
  mean(d) +- t_{0.975, |P|-1} sd(d) / sqrt(|P|)
  (Student's t quantile with |P| - 1 degrees of freedom; undefined for |P| < 2). Pairing by seed
  removes what the seed does to both runs alike (data order, augmentation draws; the seeded
  initialisation of the layers the two networks share).

A run that is not finished (missing, unfinished or failed) is never dropped silently: it is listed
with its status, its value is absent from the per-seed list, and a pair with a missing side is
excluded from the paired difference and named in `excluded_seeds`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "FINISHED",
    "INTERVAL_NAME",
    "PairedDifference",
    "RunResult",
    "aggregate",
    "markdown_report",
    "mean_interval",
    "mean_sd",
    "median_throughput",
    "paired_difference",
    "t_quantile",
]

FINISHED = "finished"
INTERVAL_NAME = "95% paired t interval (Student's t, n_pairs - 1 degrees of freedom) on per-seed differences"


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One (attention, seed) run of a study.

    status: 'finished' (its final metric is `value`), 'unfinished' (started, not done), 'missing'
      (never started) or 'failed' (its training crashed; `error` says how).
    img_per_s: median training throughput of the run (None when it logged none).
    """

    attention: str
    seed: int
    status: str
    value: float | None = None
    img_per_s: float | None = None
    error: str | None = None
    workdir: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == FINISHED and self.value is not None and math.isfinite(self.value)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """mean(d) with its t interval for d_s = x_{treatment,s} - x_{baseline,s} over `seeds_used`."""

    n_pairs: int
    mean: float | None
    sd: float | None
    t_quantile: float | None
    low: float | None
    high: float | None
    differences: dict[int, float]
    seeds_used: list[int]
    excluded_seeds: list[int]


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation with n - 1 in the denominator); (None, None) for no values,
    sd None for one value."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else None
    return mean, sd


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile t_{p, df} (e.g. t_{0.975, 2} = 4.3027)."""
    if df < 1:
        raise ValueError(f"Student's t needs df >= 1, got df={df}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {p}")
    from scipy.stats import t

    return float(t.ppf(p, df))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float | None, float | None]:
    """mean +- t_{(1+confidence)/2, n-1} sd / sqrt(n); (None, None) for fewer than 2 values."""
    if len(values) < 2:
        return None, None
    mean, sd = mean_sd(values)
    half = t_quantile(0.5 + confidence / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def paired_difference(treatment: Mapping[int, float | None], baseline: Mapping[int, float | None],
                      confidence: float = 0.95) -> PairedDifference:
    """Paired-by-seed difference treatment - baseline and its t interval.

    Args:
      treatment, baseline: seed -> metric value (None or NaN: that run has no result). Seeds that
        are not in both with a finite value are excluded and listed in `excluded_seeds`.
      confidence: the interval's coverage (0.95: t_{0.975, n-1}).
    """
    seeds = sorted(set(treatment) | set(baseline))

    def ok(v):
        return v is not None and math.isfinite(v)

    used = [s for s in seeds if ok(treatment.get(s)) and ok(baseline.get(s))]
    excluded = [s for s in seeds if s not in used]
    diffs = {s: float(treatment[s]) - float(baseline[s]) for s in used}
    mean, sd = mean_sd(list(diffs.values()))
    t = low = high = None
    if len(used) >= 2:
        t = t_quantile(0.5 + confidence / 2, len(used) - 1)
        half = t * sd / math.sqrt(len(used))
        low, high = mean - half, mean + half
    return PairedDifference(n_pairs=len(used), mean=mean, sd=sd, t_quantile=t, low=low, high=high,
                            differences=diffs, seeds_used=used, excluded_seeds=excluded)


def median_throughput(records: Iterable[Mapping[str, Any]]) -> float | None:
    """Median `img_per_s` of the training records of a metrics.jsonl (None when there are none)."""
    rates = [float(r["img_per_s"]) for r in records
             if r.get("kind") == "train" and r.get("img_per_s") is not None and math.isfinite(float(r["img_per_s"]))]
    return statistics.median(rates) if rates else None


def aggregate(runs: Sequence[RunResult], *, attentions: Sequence[str], seeds: Sequence[int], metric: str,
              metric_mode: str = "max", baseline: str = "none", costs: Mapping[str, Mapping[str, Any]] | None = None,
              confidence: float = 0.95) -> dict[str, Any]:
    """The study's summary (what ablation.json holds).

    Args:
      runs: one RunResult per (attention, seed) that exists in any state; a requested pair without
        a RunResult is reported as 'missing'.
      attentions, seeds: the study's grid (order kept in the output).
      metric, metric_mode: the metric's name and 'max' / 'min' (the direction in which it is better).
      baseline: the attention the differences are taken against (must be in `attentions`).
      costs: attention -> {'params', 'gflops', ...} of its network (or {'error': text}); the
        '*_added' fields are the differences to the baseline's.
    Returns a JSON-ready dict: 'attentions' (one entry per attention), 'runs' (every grid point
    with its status), 'not_finished' (the grid points without a result, with their status/error).
    """
    if baseline not in attentions:
        raise ValueError(f"the baseline {baseline!r} is not among the attentions {list(attentions)}: the differences "
                         "are measured against it, so it must be run too")
    if metric_mode not in ("max", "min"):
        raise ValueError(f"metric_mode must be 'max' or 'min', got {metric_mode!r}")
    by_key = {(r.attention, r.seed): r for r in runs}
    grid = [by_key.get((a, s)) or RunResult(a, s, "missing") for a in attentions for s in seeds]
    values = {a: {r.seed: (r.value if r.finished else None) for r in grid if r.attention == a} for a in attentions}
    costs = dict(costs or {})
    base_cost = costs.get(baseline, {})

    entries = []
    for a in attentions:
        finished = [values[a][s] for s in seeds if values[a][s] is not None]
        mean, sd = mean_sd(finished)
        lo, hi = mean_interval(finished, confidence)
        rates = [r.img_per_s for r in grid if r.attention == a and r.finished and r.img_per_s is not None]
        entry: dict[str, Any] = {
            "attention": a, "n_seeds": len(finished), "n_requested": len(seeds), "mean": mean, "sd": sd,
            "mean_ci": [lo, hi] if lo is not None else None,
            "per_seed": {str(s): values[a][s] for s in seeds},
            "not_finished_seeds": [s for s in seeds if values[a][s] is None],
            "img_per_s": statistics.median(rates) if rates else None,
        }
        if a != baseline:
            d = paired_difference(values[a], values[baseline], confidence)
            entry["diff"] = {"n_pairs": d.n_pairs, "mean": d.mean, "sd": d.sd, "t_quantile": d.t_quantile,
                             "ci": [d.low, d.high] if d.low is not None else None,
                             "per_seed": {str(s): v for s, v in d.differences.items()},
                             "excluded_seeds": d.excluded_seeds}
        cost = costs.get(a, {})
        for key in ("params", "gflops"):
            entry[key] = cost.get(key)
            entry[f"{key}_added"] = (cost[key] - base_cost[key]) if key in cost and key in base_cost else None
        if "error" in cost:
            entry["cost_error"] = cost["error"]
        entries.append(entry)

    not_finished = [{"attention": r.attention, "seed": r.seed, "status": r.status, "error": r.error,
                     "workdir": r.workdir} for r in grid if not r.finished]
    return {
        "metric": metric, "metric_mode": metric_mode, "baseline": baseline, "seeds": list(seeds),
        "confidence": confidence,
        "interval": INTERVAL_NAME if confidence == 0.95 else INTERVAL_NAME.replace("95%", f"{confidence:.0%}"),
        "attentions": entries,
        "runs": [dataclasses.asdict(r) for r in grid],
        "not_finished": not_finished,
    }


def _num(v: float | None, fmt: str = ".4f", signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return format(v, ("+" if signed else "") + fmt)


def markdown_report(summary: Mapping[str, Any], *, title: str = "Attention ablation") -> str:
    """ablation.md: the table (attention | n seeds | mean +- sd | per-seed | delta [CI] | params added |
    GFLOPs added | img/s) and below it what the interval is and which runs have no result."""
    metric, baseline = summary["metric"], summary["baseline"]
    better = "higher" if summary["metric_mode"] == "max" else "lower"
    pct = f"{summary['confidence']:.0%}"
    lines = [f"# {title}", ""]
    if summary.get("command"):
        lines += ["```", summary["command"], "```", ""]
    header = (f"| attention | n seeds | {metric} mean ± sd | per-seed ({', '.join(map(str, summary['seeds']))}) "
              f"| Δ vs {baseline} [{pct} CI] | params added | GFLOPs added | img/s |")
    lines += [header, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in summary["attentions"]:
        mean_sd_text = "n/a" if e["mean"] is None else (
            f"{e['mean']:.4f} ± {e['sd']:.4f}" if e["sd"] is not None else f"{e['mean']:.4f} (one seed)")
        per_seed = ", ".join("—" if v is None else f"{v:.4f}" for v in e["per_seed"].values())
        if e["attention"] == baseline:
            diff = "(baseline)"
        else:
            d = e["diff"]
            if d["mean"] is None:
                diff = "n/a (no pairs)"
            elif d["ci"] is None:
                diff = f"{d['mean']:+.4f} [n/a: one pair] (n=1)"
            else:
                diff = f"{d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] (n={d['n_pairs']})"
        params = "n/a" if e["params_added"] is None else f"{e['params_added']:+,d}"
        gflops = _num(e["gflops_added"], ".3f", signed=True)
        rate = _num(e["img_per_s"], ".1f")
        lines.append(f"| {e['attention']} | {e['n_seeds']}/{e['n_requested']} | {mean_sd_text} | {per_seed} | {diff} "
                     f"| {params} | {gflops} | {rate} |")
    size = summary.get("cost_input_size")
    notes = [
        (f"- {metric}: {better} is better. Mean ± sample standard deviation over the finished seeds; "
         "per-seed values in seed order (— = no result)."),
        (f"- Δ vs {baseline}: mean of the per-seed differences (attention − {baseline}, paired by seed) with its "
         f"{summary['interval']}. n = pairs with both runs finished. An interval that excludes 0 says the "
         "difference is larger than the seed-to-seed spread explains; one that contains 0 says these seeds "
         "cannot tell the two apart."),
        ("- params / GFLOPs added: trainable parameters and HRNet-convention GFLOPs (conv multiply-adds / 2^30) "
         f"of the network minus those of the {baseline} network" + (f", at input {size[0]}x{size[1]}" if size else "")
         + "."),
        "- img/s: median over seeds of each run's median logged training throughput (`img_per_s`, metrics.jsonl).",
    ]
    lines += ["", *notes]
    for e in summary["attentions"]:
        if e.get("cost_error"):
            lines.append(f"- {e['attention']}: parameter/GFLOP count failed: {e['cost_error']}")
    missing = summary["not_finished"]
    if missing:
        lines += ["", f"Runs without a result ({len(missing)}; excluded from means and pairs, listed here):", ""]
        for m in missing:
            why = f": {m['error'].strip().splitlines()[-1]}" if m.get("error") else ""
            lines.append(f"- {m['attention']} seed {m['seed']}: {m['status']}{why}")
    else:
        lines += ["", "Every run finished."]
    return "\n".join(lines) + "\n"
