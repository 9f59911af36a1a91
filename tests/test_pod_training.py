"""Training as pods run it: signals, kill -9, several processes, resuming on another layout.

Each run is `python tests/tiny_train.py FLAGS` (= train.py with the tests' 'w8_tiny' HRNet) in a
separate process on CPU devices, on one synthetic COCO-format dataset prepared once. Compiled
programs are shared between the runs through one persistent compilation cache.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from checkpoint_items import read_item

from psa_jax.training.config_schema import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_TRAIN = REPO / "tests" / "tiny_train.py"
pytestmark = pytest.mark.usefixtures("tiny_hrnet")

TINY = ["model.width=w8_tiny", "data.synthetic.num_train=24", "data.synthetic.num_val=6",
        "data.synthetic.image_size=(96, 96)", "data.input_size=(64, 64)", "batch_size=8", "eval.batch_size=8",
        "schedule.warmup_steps=0", "log_every_steps=1", "checkpoint.every_minutes=0", "tensorboard=False",
        "eval.final_boxes=gt", "eval.flip_test=False"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Prepared data and a compilation cache shared by every run of this module."""
    root = tmp_path_factory.mktemp("pod")
    data_dir = str(root / "data")
    from psa_jax.tasks.registry import get_task
    config = load_config(REPO / "configs" / "pose_synthetic_demo.py", TINY + [f"data.data_dir={data_dir}"])
    get_task(config, str(root / "prep")).prepare_data()
    return {"data_dir": data_dir, "cache": str(root / "xla_cache")}


def _command(env, workdir, *overrides):
    flags = [f"--config.{o}" for o in (*TINY, f"data.data_dir={env['data_dir']}", *overrides)]
    return [sys.executable, str(TINY_TRAIN), f"--config={REPO / 'configs' / 'pose_synthetic_demo.py'}",
            f"--workdir={workdir}", *flags]


def _environ(env, devices: int) -> dict:
    e = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), PSA_JAX_XLA_CACHE=env["cache"], PYTHONUNBUFFERED="1")
    e.pop("PYTEST_XDIST_WORKER", None)
    return e


def _run(env, workdir, *overrides, devices=1, timeout=300):
    proc = subprocess.run(_command(env, workdir, *overrides), env=_environ(env, devices), capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)
    return proc


def _start(env, workdir, *overrides, devices=1, log=None):
    return subprocess.Popen(_command(env, workdir, *overrides), env=_environ(env, devices), cwd=REPO,
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(workdir: pathlib.Path, step: int, proc, timeout=240) -> None:
    """Until metrics.jsonl has a training record at `step` or later."""
    path = workdir / "metrics.jsonl"
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before step {step}")
        if path.exists():
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


def _weights(workdir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
    """The model and optimizer arrays of checkpoint `step`, read without a target structure."""
    out = {}
    for item in ("model", "opt"):
        tree = read_item(workdir / "checkpoints" / str(step) / item)
        out.update({f"{item}{jax_path}": np.asarray(v) for jax_path, v in _flatten(tree)})
    return out


def _meta(workdir: pathlib.Path, step: int) -> dict:
    from psa_jax.training.checkpointing import Checkpointer
    ckpt = Checkpointer(workdir / "checkpoints", keep_best=0)
    try:
        return ckpt.read_meta(step)
    finally:
        ckpt.close()


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}/{k}")
    else:
        yield prefix, tree


def _assert_same(a: dict, b: dict, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=2e-6, err_msg=k)


def _steps(workdir: pathlib.Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def test_sigterm_and_kill9_resume_to_the_uninterrupted_result(env, tmp_path):
    n = "num_steps=100"
    common = (n, "eval.every_steps=1000", "checkpoint.every_steps=20")
    ref = tmp_path / "ref"
    proc = _run(env, ref, *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("AP=")

    # SIGTERM: the dispatched steps finish, a checkpoint is written at the step it stopped, status 75.
    term = tmp_path / "term"
    with open(tmp_path / "term.log", "w") as log:
        p = _start(env, term, *common, log=log)
        _wait_for_step(term, 5, p)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=120) == 75
    out = (tmp_path / "term.log").read_text()
    stopped = int(out.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert 5 <= stopped < 100 and stopped in _steps(term)
    assert _meta(term, stopped)["kind"] == "preempted"
    proc = _run(env, term, *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same(_weights(ref, 100), _weights(term, 100))

    # kill -9 after a cadence checkpoint: the rerun continues from it to the same result.
    kill = tmp_path / "kill"
    p = _start(env, kill, *common)
    _wait_for_step(kill, 20, p)
    t = time.time()
    while not _steps(kill) and time.time() - t < 120:  # the step-20 checkpoint is written in the background
        time.sleep(0.05)
    p.kill()
    assert p.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert _steps(kill) and max(_steps(kill)) >= 20
    proc = _run(env, kill, *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same(_weights(ref, 100), _weights(kill, 100))
    records = [json.loads(line) for line in (kill / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert len(train_steps) == len(set(train_steps)), "a resumed run must not duplicate metric records"

    # A finished run started again prints its final metrics, last line AP=...
    again = _run(env, ref, *common)
    assert again.returncode == 0
    last = again.stdout.strip().splitlines()[-1]
    final = json.loads((ref / "final_metrics.json").read_text())
    assert last == f"AP={final['AP']:.4f}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one_and_resume_on_one_device(env, tmp_path):
    """2 processes x 1 device (gloo collectives) train like 1 process x 2 devices on the same global
    batches; their checkpoint resumes on 1 process with 1 device and trains on.

    (With 8 devices the layouts place the global batch's rows in a different order, and this tiny
    network's gradients differ by about 1% from the summation order alone after two steps, which
    momentum then accumulates: equality is checked where the row order is the same.)"""
    common = ("num_steps=6", "eval.every_steps=6", "optimizer.name=sgd", "optimizer.lr=0.01")
    one = tmp_path / "one"
    proc = _run(env, one, *common, devices=2)
    assert proc.returncode == 0, proc.stderr[-3000:]

    two = tmp_path / "two"
    port = _free_port()
    dist = ("distributed.coordinator_address=127.0.0.1:" + str(port), "distributed.num_processes=2")
    logs = [open(tmp_path / f"p{i}.log", "w") for i in range(2)]
    procs = [_start(env, two, *common, *dist, f"distributed.process_id={i}", devices=1, log=logs[i])
             for i in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    for f in logs:
        f.close()
    assert codes == [0, 0], [(tmp_path / f"p{i}.log").read_text()[-3000:] for i in range(2)]
    _assert_same(_weights(one, 6), _weights(two, 6), exact=False)
    losses = [{r["step"]: r["loss"] for r in map(json.loads, (w / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "train"} for w in (one, two)]
    assert losses[0].keys() == losses[1].keys() == set(range(1, 7))
    for step in range(1, 7):
        assert losses[1][step] == pytest.approx(losses[0][step], rel=1e-5), step
    ap_one = json.loads((one / "final_metrics.json").read_text())["AP"]
    ap_two = json.loads((two / "final_metrics.json").read_text())["AP"]
    assert ap_two == pytest.approx(ap_one, abs=1e-3)

    # The 2-process checkpoint resumes on 1 process with 1 device and trains on.
    assert _meta(two, 6)["process_count"] == 2
    proc = _run(env, two, *common[1:], "num_steps=9", devices=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "written by 2 processes" in proc.stderr
    assert 9 in _steps(two) and _meta(two, 9)["process_count"] == 1


def test_a_lost_process_stops_the_other_with_an_error(env, tmp_path):
    work = tmp_path / "lost"
    port = _free_port()
    dist = ("distributed.coordinator_address=127.0.0.1:" + str(port), "distributed.num_processes=2",
            "distributed.heartbeat_timeout_s=5")
    log0 = open(tmp_path / "p0.log", "w")
    p0 = _start(env, work, "num_steps=100000", "eval.every_steps=100000", *dist, "distributed.process_id=0", log=log0)
    p1 = _start(env, work, "num_steps=100000", "eval.every_steps=100000", *dist, "distributed.process_id=1")
    try:
        _wait_for_step(work, 3, p0)
        p1.kill()
        t = time.time()
        code = p0.wait(timeout=120)
        assert code != 0
        assert time.time() - t < 120
    finally:
        for p in (p0, p1):
            if p.poll() is None:
                p.kill()
        log0.close()
    text = (tmp_path / "p0.log").read_text()
    assert any(w in text.lower() for w in ("heartbeat", "unavailable", "connection", "terminat", "error")), text[-2000:]


def test_missing_detector_boxes_stop_the_run_before_its_first_step(tmp_path):
    from psa_jax.data.synthetic_coco import write_synthetic_coco
    from psa_jax.training.loop import train

    data_dir = tmp_path / "data"
    config = load_config(REPO / "configs" / "pose_synthetic_demo.py",
                         TINY + [f"data.data_dir={data_dir}", "eval.final_boxes=det"])
    from psa_jax.tasks.registry import get_task
    manual = pathlib.Path(get_task(config, str(tmp_path / "w")).manual_dir)
    write_synthetic_coco(str(manual), num_train=24, num_val=6, image_size=(96, 96), seed=0)
    for det in manual.rglob("*detections*"):
        det.unlink()
    with pytest.raises(ValueError, match=r"--config.eval.final_boxes=gt") as err:
        train(config, str(tmp_path / "w"))
    assert "person_detections_val2017.json" in str(err.value)
    assert not (tmp_path / "w" / "metrics.jsonl").exists()
    assert not any((tmp_path / "w" / "checkpoints").glob("[0-9]*"))


def test_a_signal_to_one_process_stops_every_process_at_the_same_step(env, tmp_path):
    work = tmp_path / "sig"
    port = _free_port()
    dist = ("distributed.coordinator_address=127.0.0.1:" + str(port), "distributed.num_processes=2")
    logs = [open(tmp_path / f"p{i}.log", "w") for i in range(2)]
    procs = [_start(env, work, "num_steps=100000", "eval.every_steps=100000", *dist, f"distributed.process_id={i}",
                    log=logs[i]) for i in range(2)]
    try:
        _wait_for_step(work, 4, procs[0])
        procs[1].send_signal(signal.SIGTERM)  # only process 1 is told
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in logs:
            f.close()
    texts = [(tmp_path / f"p{i}.log").read_text() for i in range(2)]
    assert codes == [75, 75], [t[-2000:] for t in texts]
    stops = [int(t.split("stopped by ")[1].split(" after step ")[1].split(";")[0]) for t in texts]
    assert stops[0] == stops[1] and stops[0] in _steps(work)
    assert "another process's signal" in texts[0] and "SIGTERM" in texts[1]
