"""MetricsLog: metrics.jsonl + TensorBoard files, one record per (kind, step) after a resume."""

import collections
import json
import os

import jax
import pytest
from etils import epath

from psa_jax.training import metrics_log as ml

tf = pytest.importorskip("tensorflow")


def _tb_scalars(path):
    """[(step, tag, value)] of an event file, plus the steps of its SessionLog START events."""
    scalars, starts = [], []
    for e in tf.compat.v1.train.summary_iterator(os.fspath(path)):
        if e.HasField("session_log") and e.session_log.status == tf.compat.v1.SessionLog.START:
            starts.append(e.step)
        scalars += [(e.step, v.tag, v.simple_value) for v in e.summary.value]
    return scalars, starts


def _run(workdir, steps, *, resume_step=None, loss_offset=0.0, eval_every=5):
    with ml.MetricsLog(workdir, resume_step=resume_step) as log:
        for step in steps:
            log.write("train", step, {"loss": 10.0 / step + loss_offset, "lr": 0.1, "note": "not a number"})
            if step % eval_every == 0:
                log.write("eval", step, {"AP": step / 100 + loss_offset, "IoU": [1.0, 2.0]})
    return log


def test_records_round_trip_and_non_numbers_are_left_out(tmp_path):
    log = _run(tmp_path / "run", range(1, 6))
    records = ml.read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in records] == [*[("train", s) for s in range(1, 6)], ("eval", 5)]
    assert records[0]["loss"] == 10.0 and records[0]["lr"] == 0.1 and "note" not in records[0]
    assert records[-1] == {"kind": "eval", "step": 5, "time": records[-1]["time"], "AP": 0.05}
    scalars, starts = _tb_scalars(next(log.tensorboard_dir.iterdir()))
    assert starts == []  # a fresh log (resume_step=None) does not ask TensorBoard to purge
    assert (1, "train/loss", 10.0) in scalars and (5, "eval/AP", pytest.approx(0.05)) in scalars
    assert {t for _, t, _ in scalars} == {"train/loss", "train/lr", "eval/AP"}
    assert ml.read_metrics(tmp_path / "missing.jsonl") == []


def test_resume_drops_records_after_the_checkpoint_once(tmp_path):
    workdir = tmp_path / "run"
    _run(workdir, range(1, 11))  # crashed run: logged 1..10, last checkpoint at step 6
    before = ml.read_metrics(workdir / "metrics.jsonl")
    log = _run(workdir, range(7, 11), resume_step=6, loss_offset=100.0)
    assert log.dropped == 4 + 1  # train 7..10 and eval 10 of the crashed run
    records = ml.read_metrics(workdir / "metrics.jsonl")
    counts = collections.Counter((r["kind"], r["step"]) for r in records)
    assert set(counts.values()) == {1}
    assert sorted(counts) == sorted([("train", s) for s in range(1, 11)] + [("eval", 5), ("eval", 10)])
    # Steps <= 6 are the crashed run's lines, unchanged; later ones are the resumed run's.
    assert records[:7] == [r for r in before if r["step"] <= 6]
    assert all(r["loss"] > 100 for r in records if r["kind"] == "train" and r["step"] > 6)
    assert [r["AP"] for r in records if r["kind"] == "eval"] == [pytest.approx(0.05), pytest.approx(100.1)]
    assert not (workdir / "metrics.jsonl.tmp").exists()

    # TensorBoard: a second events file, starting with SessionLog START at step 7, then the new values.
    files = sorted((workdir / "tensorboard").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2 and files[0].name < files[1].name  # TensorBoard reads them in name order
    old, old_starts = _tb_scalars(files[0])
    new, new_starts = _tb_scalars(files[1])
    assert old_starts == [] and new_starts == [7]
    assert sorted({s for s, _, _ in new}) == [7, 8, 9, 10]
    assert all(v > 100 for _, t, v in new if t == "train/loss")
    assert [s for s, t, _ in old if t == "train/loss"] == list(range(1, 11))


def test_fresh_start_in_an_old_folder_and_no_rewrite_when_nothing_is_dropped(tmp_path):
    _run(tmp_path, range(1, 4))
    inode = os.stat(tmp_path / "metrics.jsonl").st_ino
    assert ml.MetricsLog(tmp_path, resume_step=3, tensorboard=False).dropped == 0
    assert os.stat(tmp_path / "metrics.jsonl").st_ino == inode  # not rewritten
    log = ml.MetricsLog(tmp_path, resume_step=0, tensorboard=False)  # restart from scratch, no checkpoint
    assert log.dropped == 3 and ml.read_metrics(tmp_path / "metrics.jsonl") == []
    assert len(list((tmp_path / "tensorboard").iterdir())) == 1  # tensorboard=False wrote no new file


def test_resume_step_none_keeps_appending(tmp_path):
    _run(tmp_path, range(1, 4))
    _run(tmp_path, range(2, 4))
    assert [r["step"] for r in ml.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 2, 3]


def test_a_line_cut_short_by_a_crash_is_skipped_and_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"kind": "train", "step": 1, "loss": 1.0}) + "\n" + '{"kind": "train", "st')
    assert ml.read_metrics(path) == [{"kind": "train", "step": 1, "loss": 1.0}]
    assert ml.drop_records_after(path, 5) == 1
    assert path.read_text() == json.dumps({"kind": "train", "step": 1, "loss": 1.0}) + "\n"


def test_a_failed_rewrite_leaves_the_old_file_whole(tmp_path, monkeypatch):
    _run(tmp_path, range(1, 6))
    original = (tmp_path / "metrics.jsonl").read_text()

    def crash(self, target):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(type(epath.Path(tmp_path)), "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        ml.MetricsLog(tmp_path, resume_step=2, tensorboard=False)
    assert (tmp_path / "metrics.jsonl").read_text() == original
    assert len(ml.read_metrics(tmp_path / "metrics.jsonl.tmp")) == 2  # the new content, not yet in place


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    log = ml.MetricsLog(tmp_path / "run", resume_step=0)
    log.write("train", 1, {"loss": 1.0})
    assert log.plot() is None
    log.close()
    assert not (tmp_path / "run").exists()


def test_plot_writes_a_png(tmp_path):
    log = _run(tmp_path, range(1, 11))
    out = log.plot(title="test")
    assert out == os.fspath(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ml.plot_curves(tmp_path / "missing.jsonl", tmp_path / "none.png") is None


def test_negative_resume_step_is_refused(tmp_path):
    with pytest.raises(ValueError, match="resume_step must be >= 0"):
        ml.MetricsLog(tmp_path, resume_step=-1)


def test_redo_kinds_drop_the_records_redone_at_the_resume_step(tmp_path):
    """A run stopped after its last checkpoint (step 10) but before its final evaluation finished
    redoes the evaluation at step 10: the old eval record at 10 goes, the train record at 10 stays."""
    _run(tmp_path, range(1, 11))
    with ml.MetricsLog(tmp_path, resume_step=10, redo_kinds=("eval",)) as log:
        log.write("eval", 10, {"AP": 0.9})
    assert log.dropped == 1
    records = ml.read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in records if r["step"] >= 9] == [("train", 9), ("train", 10), ("eval", 10)]
    assert [r["AP"] for r in records if r["kind"] == "eval" and r["step"] == 10] == [0.9]
    newest = max((tmp_path / "tensorboard").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert _tb_scalars(newest) == ([(10, "eval/AP", pytest.approx(0.9))], [10])  # purge from step 10 on
    with pytest.raises(ValueError, match="needs resume_step"):
        ml.MetricsLog(tmp_path, redo_kinds=("eval",))
    with pytest.raises(TypeError, match="sequence of kinds"):
        ml.MetricsLog(tmp_path, resume_step=10, redo_kinds="eval")
