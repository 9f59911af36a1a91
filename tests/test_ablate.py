"""psa_jax.tools.ablate and ablation_stats: statistics against hand computations, the resume rules of
a half-finished study, the scheduler commands, crash reporting, and a tiny study end to end."""
import json
import math
import os
import pathlib
import shlex
import sys
import textwrap

import pytest

from psa_jax.tools import ablate, ablation_stats
from psa_jax.tools.ablation_stats import RunResult

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "pose_synthetic_demo.py")


# ------------------------------------------------------------------------------------------- statistics
def test_t_quantiles_are_students():
    # Tables of Student's t: t_{0.975,1} = 12.706, t_{0.975,2} = 4.303, t_{0.975,4} = 2.776.
    assert ablation_stats.t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert ablation_stats.t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)
    assert ablation_stats.t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    with pytest.raises(ValueError, match="df >= 1"):
        ablation_stats.t_quantile(0.975, 0)


def _hand_made_runs():
    """none: 0.70 0.72 0.71; psa_p: 0.73 0.74 0.72; psa_s: 0.75 0.70, seed 2 failed."""
    values = {"none": [0.70, 0.72, 0.71], "psa_p": [0.73, 0.74, 0.72], "psa_s": [0.75, 0.70, None]}
    runs = []
    for a, vs in values.items():
        for s, v in enumerate(vs):
            if v is None:
                runs.append(RunResult(a, s, "failed", error="train.py exited with status 1\nOOM"))
            else:
                runs.append(RunResult(a, s, "finished", v, img_per_s=100.0 + s))
    return runs


def test_aggregate_matches_hand_computation():
    costs = {"none": {"params": 1000, "gflops": 2.0}, "psa_p": {"params": 1250, "gflops": 2.5},
             "psa_s": {"params": 1200, "gflops": 2.25}}
    s = ablation_stats.aggregate(_hand_made_runs(), attentions=["none", "psa_p", "psa_s"], seeds=[0, 1, 2],
                                 metric="AP", metric_mode="max", costs=costs)
    none, psa_p, psa_s = s["attentions"]
    # none: mean 0.71, sd sqrt((0.01^2 + 0.01^2 + 0) / 2) = 0.01; CI 0.71 +- 4.303 * 0.01 / sqrt(3)
    assert none["mean"] == pytest.approx(0.71) and none["sd"] == pytest.approx(0.01)
    assert none["mean_ci"] == pytest.approx([0.71 - 0.024843, 0.71 + 0.024843], abs=1e-5)
    assert "diff" not in none and none["params_added"] == 0 and none["gflops_added"] == 0
    # psa_p - none per seed: 0.03, 0.02, 0.01 -> mean 0.02, sd 0.01, half width 4.303 * 0.01 / sqrt(3) = 0.024843
    d = psa_p["diff"]
    assert d["n_pairs"] == 3 and d["mean"] == pytest.approx(0.02) and d["sd"] == pytest.approx(0.01)
    assert d["t_quantile"] == pytest.approx(4.303, abs=1e-3)
    assert d["ci"] == pytest.approx([0.02 - 0.024843, 0.02 + 0.024843], abs=1e-5)
    assert d["per_seed"] == pytest.approx({"0": 0.03, "1": 0.02, "2": 0.01})
    assert psa_p["params_added"] == 250 and psa_p["gflops_added"] == pytest.approx(0.5)
    # psa_s: seed 2 failed -> mean of 0.75, 0.70 = 0.725, sd = 0.025 * sqrt(2) = 0.0353553; pairs 0, 1:
    # differences 0.05, -0.02 -> mean 0.015, sd 0.035 * sqrt(2) = 0.0494975, half 12.7062 * 0.0494975 / sqrt(2)
    assert psa_s["n_seeds"] == 2 and psa_s["n_requested"] == 3
    assert psa_s["mean"] == pytest.approx(0.725) and psa_s["sd"] == pytest.approx(0.0353553, abs=1e-6)
    assert psa_s["per_seed"] == {"0": 0.75, "1": 0.70, "2": None}
    assert psa_s["not_finished_seeds"] == [2]
    d = psa_s["diff"]
    assert d["n_pairs"] == 2 and d["excluded_seeds"] == [2]
    assert d["mean"] == pytest.approx(0.015) and d["sd"] == pytest.approx(0.0494975, abs=1e-6)
    assert d["ci"] == pytest.approx([0.015 - 0.444718, 0.015 + 0.444718], abs=1e-5)
    # the failed run is reported, with its error, not dropped
    assert s["not_finished"] == [{"attention": "psa_s", "seed": 2, "status": "failed",
                                  "error": "train.py exited with status 1\nOOM", "workdir": None}]
    assert psa_p["img_per_s"] == pytest.approx(101.0)  # median of 100, 101, 102
    assert "paired t interval" in s["interval"]


def test_missing_runs_and_pairs_with_a_missing_side_are_reported():
    runs = [RunResult("none", 0, "finished", 0.5), RunResult("none", 2, "unfinished"),
            RunResult("se", 0, "finished", 0.6), RunResult("se", 1, "finished", 0.4), RunResult("se", 2, "finished", 0.7)]
    s = ablation_stats.aggregate(runs, attentions=["none", "se"], seeds=[0, 1, 2], metric="mIoU")
    # none seed 1 has no RunResult at all: 'missing'; seed 2 is 'unfinished'
    assert [(m["attention"], m["seed"], m["status"]) for m in s["not_finished"]] == [
        ("none", 1, "missing"), ("none", 2, "unfinished")]
    d = s["attentions"][1]["diff"]
    assert d["n_pairs"] == 1 and d["excluded_seeds"] == [1, 2]
    assert d["mean"] == pytest.approx(0.1) and d["ci"] is None  # no interval from one pair
    md = ablation_stats.markdown_report(s)
    assert "| se | 3/3 | 0.5667 ± 0.1528 | 0.6000, 0.4000, 0.7000 | +0.1000 [n/a: one pair] (n=1) |" in md
    assert "| none | 1/3 | 0.5000 (one seed) | 0.5000, —, — | (baseline) |" in md
    assert "- none seed 1: missing" in md and "- none seed 2: unfinished" in md
    with pytest.raises(ValueError, match="baseline 'none' is not among"):
        ablation_stats.aggregate(runs, attentions=["se"], seeds=[0], metric="AP")


def test_median_throughput_reads_train_records_only():
    records = [{"kind": "train", "step": 1, "img_per_s": 10.0}, {"kind": "eval", "step": 2, "img_per_s": 999.0},
               {"kind": "train", "step": 2, "img_per_s": 30.0}, {"kind": "train", "step": 3, "img_per_s": 20.0},
               {"kind": "train", "step": 4}]
    assert ablation_stats.median_throughput(records) == 20.0
    assert ablation_stats.median_throughput([]) is None


# ------------------------------------------------------------------------------------------- study, resume
def _write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _fake_value(attention, seed):
    return {"none": 0.5, "psa_p": 0.55, "psa_s": 0.53}[attention] + 0.01 * seed


class FakeRunner:
    """Stands in for training: records which runs it was asked for and writes their results."""

    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, run):
        self.calls.append((run.attention, run.seed))
        assert f"model.attention={run.attention}" in run.overrides and f"seed={run.seed}" in run.overrides
        if (run.attention, run.seed) in self.fail:
            return "RuntimeError: out of memory"
        d = pathlib.Path(run.workdir)
        _write_json(d / "final_metrics.json", {"AP": _fake_value(run.attention, run.seed), "AR": 0.9})
        (d / "metrics.jsonl").write_text("".join(json.dumps({"kind": "train", "step": i, "time": 0.0,
                                                             "img_per_s": 40.0 + i}) + "\n" for i in (1, 2, 3)))
        return None


def _fake_costs(config):
    return {"params": 100 + {"none": 0, "psa_p": 7, "psa_s": 5}[config.model.attention], "gflops": 1.0,
            "input_size": list(config.data.input_size)}


def test_resume_of_a_half_finished_study(tmp_path):
    w = tmp_path / "study"
    study = ablate.make_study(DEMO, str(w), ["none", "psa_p", "psa_s"], [0, 1], ["num_steps=4"])
    assert study.metric == "AP" and study.metric_mode == "max"
    # none/seed0 finished earlier (not rerun, its value is used), psa_p/seed0 was interrupted (resumed)
    _write_json(w / "none" / "seed0" / "final_metrics.json", {"AP": 0.42})
    (w / "psa_p" / "seed0" / "checkpoints" / "2").mkdir(parents=True)
    assert ablate.run_state(str(w / "psa_p" / "seed0"), "AP") == ("unfinished", None, None)
    assert ablate.run_state(str(w / "psa_s" / "seed1"), "AP") == ("missing", None, None)

    runner = FakeRunner(fail={("psa_s", 1)})
    s = ablate.run_study(study, runner=runner, cost_fn=_fake_costs)
    assert runner.calls == [("psa_p", 0), ("psa_s", 0), ("none", 1), ("psa_p", 1), ("psa_s", 1)]
    by = {e["attention"]: e for e in s["attentions"]}
    assert by["none"]["per_seed"] == {"0": 0.42, "1": pytest.approx(0.51)}
    assert by["psa_p"]["diff"]["per_seed"] == pytest.approx({"0": 0.55 - 0.42, "1": 0.56 - 0.51})
    assert by["psa_s"]["diff"]["excluded_seeds"] == [1] and by["psa_p"]["params_added"] == 7
    assert [(m["attention"], m["seed"], m["status"]) for m in s["not_finished"]] == [("psa_s", 1, "failed")]
    assert "out of memory" in s["not_finished"][0]["error"]
    assert by["psa_p"]["img_per_s"] == 42.0 and by["none"]["img_per_s"] == 42.0  # none/seed0 logged nothing
    assert ablate.run_state(str(w / "psa_s" / "seed1"), "AP")[0] == "failed"
    for name in ("ablation.json", "ablation.md", "ablation.png"):
        assert (w / name).stat().st_size > 0
    assert json.loads((w / "ablation.json").read_text())["not_finished"][0]["seed"] == 1
    assert "- psa_s seed 1: failed: RuntimeError: out of memory" in (w / "ablation.md").read_text()

    # Rerun: only the failed run trains again; it succeeds, the failure record goes away.
    runner = FakeRunner()
    s = ablate.run_study(study, runner=runner, cost_fn=_fake_costs)
    assert runner.calls == [("psa_s", 1)]
    assert s["not_finished"] == [] and not (w / "psa_s" / "seed1" / ablate.FAILURE_FILE).exists()
    assert s["attentions"][2]["diff"]["n_pairs"] == 2

    # A run whose training ended without final_metrics.json is a failure, not a silent gap.
    s = ablate.run_study(ablate.make_study(DEMO, str(w), ["none", "gc"], [0], ["num_steps=4"]),
                         runner=lambda run: None, cost_fn=None)
    assert s["not_finished"][0]["status"] == "failed"
    assert "without writing final_metrics.json" in s["not_finished"][0]["error"]


def test_a_run_directory_of_another_recipe_is_refused(tmp_path):
    w = tmp_path / "study"
    study = ablate.make_study(DEMO, str(w), ["none", "psa_p"], [0], ["num_steps=4"])
    other = ablate.make_study(DEMO, str(w), ["none", "psa_p"], [0], ["num_steps=5"]).run("psa_p", 0)
    (w / "psa_p" / "seed0").mkdir(parents=True)
    (w / "psa_p" / "seed0" / "config.json").write_text(other.load_config().to_json_best_effort())
    runner = FakeRunner()
    with pytest.raises(ValueError, match=r"num_steps: run has 5, study wants 4"):
        ablate.run_study(study, runner=runner, cost_fn=None)
    assert runner.calls == []  # checked before anything trains
    # the same recipe is accepted
    (w / "psa_p" / "seed0" / "config.json").write_text(study.run("psa_p", 0).load_config().to_json_best_effort())
    ablate.run_study(study, runner=runner, cost_fn=None)
    assert runner.calls == [("none", 0), ("psa_p", 0)]


def test_bad_grids_get_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown attention 'psa_x'; valid names .*none, psa_p, psa_s"):
        ablate.make_study(DEMO, str(tmp_path), ["none", "psa_x"], [0])
    with pytest.raises(ValueError, match="must include the baseline 'none'"):
        ablate.make_study(DEMO, str(tmp_path), ["psa_p", "psa_s"], [0])
    with pytest.raises(ValueError, match="set per run by the study"):
        ablate.make_study(DEMO, str(tmp_path), ["none", "psa_p"], [0], ["seed=3"])
    with pytest.raises(ValueError, match="distinct"):
        ablate.make_study(DEMO, str(tmp_path), ["none", "psa_p"], [0, 0])
    with pytest.raises(SystemExit):
        ablate.parse_args(["--config=x", "--workdir=y", "--attention=none", "--config.num_steps", "4"])
    assert "write config overrides as --config.KEY=VALUE" in capsys.readouterr().err


def test_print_commands(tmp_path, capsys):
    w = tmp_path / "study"
    _write_json(w / "none" / "seed1" / "final_metrics.json", {"AP": 0.3})
    ablate.main([f"--config={DEMO}", f"--workdir={w}", "--attention=none,psa_s", "--seeds=0,1",
                 "--config.num_steps=7", "--config.data.input_size=(64, 64)", "--print_commands"])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 3 and "1 finished runs not listed" in err  # none/seed1 is finished
    from psa_jax.training.config_schema import load_config
    for line, (att, seed) in zip(lines, [("none", 0), ("psa_s", 0), ("psa_s", 1)]):
        argv = shlex.split(line)
        assert argv[:2] == [sys.executable, str(REPO / "train.py")]
        assert f"--workdir={w / att / f'seed{seed}'}" in argv and "--config.data.input_size=(64, 64)" in argv
        config = load_config(argv[2].split("=", 1)[1], [a[len("--config."):] for a in argv if a.startswith("--config.")])
        assert (config.model.attention, config.seed, config.num_steps) == (att, seed, 7)
        assert tuple(config.data.input_size) == (64, 64) and config.data.data_dir == str(w / "data")
    assert not (w / "ablation.json").exists()  # printing trains and writes nothing

    # after the scheduler's jobs: --aggregate_only reports, trains nothing, and exits 1 while runs lack results
    code = ablate.main([f"--config={DEMO}", f"--workdir={w}", "--attention=none,psa_s", "--seeds=0,1",
                        "--config.num_steps=7", "--config.data.input_size=(64, 64)", "--aggregate_only", "--no_costs"])
    report = (w / "ablation.md").read_text()
    assert code == 1 and "| none | 1/2 | 0.3000 (one seed) | —, 0.3000 |" in report
    assert "- psa_s seed 0: missing" in report and "- psa_s seed 1: missing" in report
    assert not (w / "psa_s").exists()


def test_subprocess_runner_reports_a_crash_and_the_study_goes_on(tmp_path):
    fake_train = tmp_path / "train.py"
    fake_train.write_text(textwrap.dedent("""
        import json, os, sys
        args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
        att, seed = args["config.model.attention"], int(args["config.seed"])
        print("training", att, seed)
        if att == "psa_p" and seed == 0:
            sys.exit("CUDA out of memory in step 3")
        os.makedirs(args["workdir"], exist_ok=True)
        with open(os.path.join(args["workdir"], "final_metrics.json"), "w") as f:
            json.dump({"AP": 0.5 + 0.1 * (att == "psa_p") + 0.01 * seed}, f)
        """))
    study = ablate.make_study(DEMO, str(tmp_path / "study"), ["none", "psa_p"], [0, 1])
    s = ablate.run_study(study, runner=ablate.SubprocessRunner(train_script=str(fake_train)), cost_fn=None)
    assert [(m["attention"], m["seed"], m["status"]) for m in s["not_finished"]] == [("psa_p", 0, "failed")]
    error = s["not_finished"][0]["error"]
    assert "exited with status 1" in error and "CUDA out of memory in step 3" in error
    assert s["attentions"][1]["per_seed"] == {"0": None, "1": pytest.approx(0.61)}
    log = (tmp_path / "study" / "none" / "seed1" / "train.log").read_text()
    assert "training none 1" in log and "--config.seed=1" in log


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.usefixtures("tiny_hrnet")
def test_tiny_study_end_to_end(tmp_path):
    """none and psa_p, two seeds, 3 steps each of the tiny HRNet, trained in this process."""
    overrides = ["model.width=w8_tiny", "data.synthetic.num_train=16", "data.synthetic.num_val=4",
                 "data.synthetic.image_size=(96, 96)", "data.input_size=(64, 64)", "batch_size=8", "num_steps=3",
                 "log_every_steps=1", "eval.every_steps=3", "eval.batch_size=8", "eval.final_boxes=gt",
                 "eval.flip_test=False", "schedule.warmup_steps=0", "clear_caches_after_compile=False"]
    w = tmp_path / "study"
    study = ablate.make_study(DEMO, str(w), ["none", "psa_p"], [0, 1], overrides)
    s = ablate.run_study(study, runner=ablate.in_process_runner)
    assert s["not_finished"] == [], s["not_finished"]
    for e in s["attentions"]:
        assert e["n_seeds"] == 2 and e["img_per_s"] > 0
        for seed in (0, 1):
            final = json.loads((w / e["attention"] / f"seed{seed}" / "final_metrics.json").read_text())
            assert e["per_seed"][str(seed)] == final["AP"]
            assert json.loads((w / e["attention"] / f"seed{seed}" / "config.json").read_text())["seed"] == seed
    none, psa_p = s["attentions"]
    assert none["params_added"] == 0 and psa_p["params_added"] > 0 and psa_p["gflops_added"] > 0
    assert psa_p["diff"]["n_pairs"] == 2 and math.isfinite(psa_p["diff"]["ci"][0])
    assert s["cost_input_size"] == [64, 64]
    assert json.loads((w / "ablation.json").read_text())["attentions"][1]["diff"]["mean"] == psa_p["diff"]["mean"]
    assert "| psa_p | 2/2 |" in (w / "ablation.md").read_text()
    assert (w / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun trains nothing
    calls = []
    ablate.run_study(study, runner=lambda run: calls.append(run) or None, cost_fn=None)
    assert calls == [] and os.path.exists(w / "data")
