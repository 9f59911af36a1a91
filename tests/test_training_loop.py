"""train.py / eval.py / checkpoints end to end on a tiny HRNet and synthetic COCO-format data.

The network is a 1-block-per-branch HRNet ('w8_tiny', registered only for these tests) so that
its train step compiles in seconds; everything else (builder, grain, loss, optimizer, orbax,
pycocotools) is the production path.
"""
import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from checkpoint_items import read_item
from fake_bucket import fake_bucket_fixture  # noqa: F401  (the fixture `fake_bucket`)

from psa_jax.training import evaluate as eval_script
from psa_jax.training import loop as train_script
from psa_jax.training.checkpointing import Checkpointer, CheckpointError, abstract_like
from psa_jax.training.config_schema import load_config
from psa_jax.training.train_step import make_mesh, state_shardings

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("tiny_hrnet")  # tests/conftest.py: the 'w8_tiny' HRNet




@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    """One synthetic COCO dataset, built once for every test here."""
    return str(tmp_path_factory.mktemp("pose_data"))


def tiny_config(data_dir, **overrides):
    c = load_config(REPO / "configs" / "pose_synthetic_demo.py")
    c.model.width = "w8_tiny"
    c.data.data_dir = data_dir
    c.data.synthetic.num_train = 24
    c.data.synthetic.num_val = 6
    c.data.synthetic.image_size = (96, 96)
    c.data.input_size = (64, 64)
    c.batch_size = 8
    c.num_steps = 6
    c.log_every_steps = 1
    c.eval.every_steps = 3
    c.eval.batch_size = 8
    c.schedule.warmup_steps = 0
    c.clear_caches_after_compile = False  # these tests call train() several times in one process
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def _restore_model(config, workdir, step="latest"):
    from psa_jax.tasks.registry import get_task
    task = get_task(config, workdir)
    _, state = nnx.split(task.build_model(nnx.Rngs(0)))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), best_metric="AP")
    restored = ckpt.restore(step, model=abstract_like(state))
    ckpt.close()
    return restored


def test_train_resume_and_eval(shared_data, tmp_path):
    full = str(tmp_path / "full")
    results = train_script.train(tiny_config(shared_data), full)
    assert {"AP", "AR", "det/AP"} <= set(results)
    assert os.path.exists(os.path.join(full, "curves.png"))
    records = [json.loads(line) for line in open(os.path.join(full, "metrics.jsonl"))]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]
    assert all(np.isfinite(r["loss"]) for r in records if r["kind"] == "train")

    # Interrupted after the step-3 checkpoint, then restarted: the same final weights (same data order).
    part = str(tmp_path / "part")
    train_script.train(tiny_config(shared_data, num_steps=3), part)
    train_script.train(tiny_config(shared_data), part)
    a = _restore_model(tiny_config(shared_data), full, 6)["model"]
    b = _restore_model(tiny_config(shared_data), part, 6)["model"]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)

    # eval.py restores the best checkpoint and reproduces its recorded AP.
    ckpt = Checkpointer(os.path.join(full, "checkpoints"), best_metric="AP")
    best = ckpt.best_step()
    ckpt.close()
    best_ap = [r["AP"] for r in records if r["kind"] == "eval" and r["step"] == best][0]
    again = eval_script.evaluate(tiny_config(shared_data), full, "best")
    assert again["AP"] == pytest.approx(best_ap, abs=1e-6)


def test_nan_loss_stops_without_writing_a_checkpoint(shared_data, tmp_path):
    workdir = str(tmp_path / "nan")
    with pytest.raises(train_script.NonFiniteLossError, match="non-finite training metrics at step 1"):
        train_script.train(tiny_config(shared_data, **{"optimizer.lr": float("nan")}), workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep_best=0)
    assert ckpt.all_steps() == []
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ckpt.resolve("latest")
    ckpt.close()


def test_checkpoint_restores_onto_another_mesh_and_reports_damage(tmp_path):
    from psa_jax.models import pose_hrnet
    model = pose_hrnet("w8_tiny", attention="psa_p")
    _, state = nnx.split(model)
    mesh_a = make_mesh(4, model=2)
    sharded = jax.device_put(state, state_shardings(state, mesh_a, shard_params=True, min_size=64))
    assert any(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(sharded))
    ckpt = Checkpointer(tmp_path / "ck", best_metric="AP")
    ckpt.save(1, model=sharded, metrics={"AP": 0.1})
    ckpt.save(2, model=sharded, metrics={"AP": 0.3})
    ckpt.save(3, model=sharded, metrics={"AP": 0.2})
    ckpt.wait()
    assert ckpt.best_step() == 2 and ckpt.latest_step() == 3
    assert sorted(ckpt.all_steps()) == [2, 3]  # latest 2 + best 1
    mesh_b = make_mesh(-1, 1)
    target = abstract_like(state, state_shardings(state, mesh_b))
    restored = ckpt.restore("best", model=target)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored["model"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert y.sharding.is_fully_replicated
    ckpt.close()
    # A damaged checkpoint gives an error naming the step directory and the way out.
    for f in (tmp_path / "ck" / "3" / "model").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    ckpt = Checkpointer(tmp_path / "ck", best_metric="AP")
    with pytest.raises(CheckpointError, match=r"ck \(step 3: .*--step=latest to fall back to the newest readable"):
        ckpt.restore(3, model=target)
    ckpt.close()


def test_checkpointer_takes_a_relative_directory(tmp_path, monkeypatch):
    """`train.py --workdir=workdirs/demo` (relative) must save: orbax itself wants absolute paths."""
    monkeypatch.chdir(tmp_path)
    state = {"w": jnp.arange(6.0).reshape(2, 3)}
    ckpt = Checkpointer("workdirs/run/checkpoints", best_metric="AP")
    assert ckpt.directory.is_absolute()
    ckpt.save(1, model=state, metrics={"AP": 0.5})
    ckpt.wait()
    ckpt.close()
    again = Checkpointer(os.path.join("workdirs", "run", "checkpoints"), best_metric="AP")
    restored = again.restore("latest", model=abstract_like(state))
    np.testing.assert_array_equal(restored["model"]["w"], state["w"])
    assert (tmp_path / "workdirs" / "run" / "checkpoints" / "1").is_dir()
    again.close()


def test_parameter_sharding_does_not_change_outputs():
    from psa_jax.models import pose_hrnet
    from psa_jax.training.train_step import host_predict_fn, make_forward
    model = pose_hrnet("w8_tiny", attention="psa_s")
    gd, state = nnx.split(model)
    images = np.asarray(jax.random.normal(jax.random.key(0), (8, 64, 64, 3)))
    outs = []
    for mesh, shard in ((make_mesh(-1, 1), False), (make_mesh(4, model=2), True)):
        sh = state_shardings(state, mesh, shard_params=shard, min_size=64)
        forward = make_forward(gd, lambda m, x: m(x), model_sharding=sh, mesh=mesh)
        outs.append(host_predict_fn(forward, jax.device_put(state, sh), mesh)(images))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_converted_pytorch_checkpoint_restores_and_predicts_like_the_source(tmp_path):
    import torch

    from psa_jax.tasks.registry import get_task
    from psa_jax.tools.convert import main as convert_main
    from psa_jax.torch_reference import randomize_
    from psa_jax.torch_reference.hrnet_pose import PoseHighResolutionNet
    from psa_jax.training.train_step import host_predict_fn, make_forward

    ref = randomize_(PoseHighResolutionNet(width=18, attention="psa_p"), seed=7).eval()
    src = tmp_path / "pose_w18_psa_p.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}, "epoch": 3}, src)
    workdir = str(tmp_path / "converted")
    cfg = REPO / "configs" / "coco_w32_256x192.py"
    assert convert_main([str(src), workdir, f"--config={cfg}", "--set", "model.width=w18",
                         "--set", "model.attention=psa_p"]) == 0
    # The restore path eval.py uses: abstract model from the config, restore, jitted eval forward.
    config = tiny_config("", **{"model.width": "w18", "model.attention": "psa_p"})
    task = get_task(config, workdir)
    gd, state = nnx.split(task.build_model(nnx.Rngs(0)))
    mesh = make_mesh(-1, 1)
    sh = state_shardings(state, mesh)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), best_metric="AP")
    restored = ckpt.restore("latest", model=abstract_like(state, sh))
    ckpt.close()
    assert restored["meta"]["source"] == "psa_jax.convert"
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(x).permute(0, 2, 3, 1).numpy()
    predict = host_predict_fn(make_forward(gd, task.forward, model_sharding=sh, mesh=mesh), restored["model"], mesh)
    np.testing.assert_allclose(predict(x.permute(0, 2, 3, 1).numpy()), expected, atol=1e-4)
    # A checkpoint of another configuration is refused with the list of problems.
    assert convert_main([str(src), str(tmp_path / "bad"), f"--config={cfg}", "--set", "model.width=w18"]) == 2


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_nan_in_the_data_stops_at_that_step_on_the_loss(shared_data, tmp_path, monkeypatch):
    """A finite lr and a NaN in the targets of the 2nd batch only: the loss (not the lr) of step 2 is
    what is non-finite, and the loop must stop there, before the step-3 checkpoint."""
    from psa_jax.tasks.pose import PoseTask

    train_dataset = PoseTask.train_dataset

    class PoisonedStream:
        def __init__(self, ds):
            self.ds = ds

        def __iter__(self):
            for i, batch in enumerate(self.ds, start=1):
                if i == 2:
                    batch = dict(batch)
                    target = np.array(batch["target"], copy=True)
                    target[0, 0, 0, 0] = np.nan
                    batch["target"] = target
                yield batch

    def poisoned(self):
        ds, n = train_dataset(self)
        return PoisonedStream(ds), n

    monkeypatch.setattr(PoseTask, "train_dataset", poisoned)
    workdir = str(tmp_path / "nan_data")
    with pytest.raises(train_script.NonFiniteLossError, match=r"non-finite training metrics at step 2\b") as err:
        train_script.train(tiny_config(shared_data), workdir)
    message = str(err.value)
    assert re.search(r"'loss': [^,]*\bnan\b", message), message
    assert not re.search(r"'lr': [^,]*\bnan\b", message), message
    # Step 1 was logged with a finite loss; nothing of step 2 was logged and no checkpoint was written.
    train_records = [r for r in _records(workdir) if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == [1]
    assert np.isfinite(train_records[0]["loss"]) and train_records[0]["lr"] == pytest.approx(2e-3)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep_best=0)
    assert ckpt.all_steps() == []
    ckpt.close()


# Warm-up over 5 steps, then x0.1 at epoch 1. The synthetic set has 53 person instances, so with
# batch 8 an epoch is 6 steps: optimizer steps 0-4 warm up, 5 runs at the base rate, 6-7 are decayed.
# The interrupted run stops after loop step 4 (inside the warm-up) and the resumed one crosses both
# the end of the warm-up and the decay.
SCHEDULE = {"num_steps": 8, "eval.every_steps": 4, "schedule.name": "multistep", "schedule.milestones": (1,),
            "schedule.gamma": 0.1, "schedule.warmup_steps": 5, "schedule.warmup_ratio": 0.1}


@pytest.fixture(scope="module")
def schedule_run(shared_data, tmp_path_factory, tiny_hrnet):
    """An uninterrupted 8-step run with warm-up and a step decay (its workdir)."""
    workdir = str(tmp_path_factory.mktemp("schedule_full"))
    train_script.train(tiny_config(shared_data, **SCHEDULE), workdir)
    return workdir


def test_resume_across_warmup_and_step_decay_matches_an_uninterrupted_run(shared_data, schedule_run, tmp_path):
    full = schedule_run
    base = tiny_config(shared_data).optimizer.lr
    full_train = {r["step"]: r for r in _records(full) if r["kind"] == "train"}
    # The uninterrupted run does cross the warm-up and the decay (loop step s uses optimizer step s - 1).
    expected_lr = [base * (0.1 + 0.9 * c / 5) for c in range(5)] + [base, base * 0.1, base * 0.1]
    np.testing.assert_allclose([full_train[s]["lr"] for s in range(1, 9)], expected_lr, rtol=1e-6)

    part = str(tmp_path / "part")
    train_script.train(tiny_config(shared_data, **{**SCHEDULE, "num_steps": 4}), part)
    ckpt = Checkpointer(os.path.join(part, "checkpoints"), keep_best=0)
    assert ckpt.latest_step() == 4
    ckpt.close()
    train_script.train(tiny_config(shared_data, **SCHEDULE), part)

    part_records = _records(part)
    resumed = [r for r in part_records if r["kind"] == "train" and r["step"] > 4]
    assert [r["step"] for r in resumed] == [5, 6, 7, 8]
    for r in resumed:
        assert r["lr"] == pytest.approx(full_train[r["step"]]["lr"], rel=1e-6), (r, full_train[r["step"]])
        assert r["loss"] == pytest.approx(full_train[r["step"]]["loss"], rel=1e-5), (r, full_train[r["step"]])
    full_eval = [r for r in _records(full) if r["kind"] == "eval" and r["step"] == 8][0]
    part_eval = [r for r in part_records if r["kind"] == "eval" and r["step"] == 8][0]
    assert part_eval["AP"] == pytest.approx(full_eval["AP"], abs=1e-6)

    a = _restore_model(tiny_config(shared_data), full, 8)["model"]
    b = _restore_model(tiny_config(shared_data), part, 8)["model"]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_init_from_an_orbax_checkpoint_of_a_training_run(shared_data, schedule_run):
    from psa_jax.tasks.registry import get_task
    from psa_jax.training.init_weights import initialise_weights

    config = tiny_config(shared_data, **{"init.checkpoint": os.path.join(schedule_run, "checkpoints")})
    task = get_task(config, schedule_run)
    model = task.build_model(nnx.Rngs(config.seed))
    fresh = jax.tree.map(np.asarray, nnx.state(model))
    initialise_weights(model, config.init)
    saved = _restore_model(config, schedule_run, "latest")
    assert saved["step"] == 8
    got = nnx.state(model)
    assert jax.tree.structure(got) == jax.tree.structure(saved["model"])
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(got)]
    changed = 0
    for path, x, y, f in zip(paths, jax.tree.leaves(got), jax.tree.leaves(saved["model"]), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=path)
        changed += not np.array_equal(np.asarray(x), f)
    # Training moved (almost) every array away from its initial value; the init must carry that over.
    assert changed > 0.9 * len(paths), (changed, len(paths))


def test_loss_ceiling_stops_a_diverged_run_at_its_first_step_above(shared_data, tmp_path):
    workdir = str(tmp_path / "ceiling")
    with pytest.raises(train_script.NonFiniteLossError, match=r"above config.loss_ceiling=1e-12 at step 1\b"):
        train_script.train(tiny_config(shared_data, loss_ceiling=1e-12), workdir)
    metrics = pathlib.Path(workdir) / "metrics.jsonl"
    assert not metrics.exists() or not [r for r in _records(workdir) if r["kind"] == "train"]


def test_ema_and_gradient_accumulation_in_the_loop(shared_data, tmp_path):
    """ema_decay and grad_accum_steps reach the step: the checkpoint holds an EMA that lags the
    weights, the evaluation scores the EMA, and eval.py reproduces that score from the checkpoint."""
    workdir = str(tmp_path / "ema")
    config = tiny_config(shared_data, num_steps=4, ema_decay=0.5, grad_accum_steps=2, batch_size=16,
                         **{"eval.every_steps": 4})
    results = train_script.train(config, workdir)
    step_dir = pathlib.Path(workdir) / "checkpoints" / "4"
    assert (step_dir / "ema").is_dir()
    model, ema = jax.tree.leaves(read_item(step_dir / "model")), jax.tree.leaves(read_item(step_dir / "ema"))
    floats = [(a, b) for a, b in zip(model, ema) if np.issubdtype(np.asarray(a).dtype, np.floating)]
    assert any(not np.allclose(a, b) for a, b in floats), "the EMA must differ from the live weights"
    again = eval_script.evaluate(config, workdir, "latest")
    assert again["AP"] == pytest.approx(results["AP"], abs=1e-6)


def test_a_workdir_in_a_bucket(shared_data, tmp_path, fake_bucket):
    """train() writes every file of its workdir through epath: with gs://fake-bucket/run they land in
    the (fake) bucket and nothing named 'gs:' appears locally. Checkpoints go to a local directory
    here because orbax writes arrays through TensorStore, which this offline fake cannot serve."""
    workdir = fake_bucket.uri("run")
    config = tiny_config(shared_data, num_steps=3,
                         **{"eval.every_steps": 3, "checkpoint.directory": str(tmp_path / "ck")})
    results = train_script.train(config, workdir)
    for name in ("config.json", "metrics.jsonl", "final_metrics.json", "curves.png"):
        assert fake_bucket.local(f"run/{name}").exists(), name
    assert json.loads(fake_bucket.local("run/final_metrics.json").read_text())["AP"] == pytest.approx(results["AP"])
    assert list(fake_bucket.local("run/results").glob("keypoints_gt_step3.json"))
    assert list(fake_bucket.local("run/tensorboard").glob("events.out.tfevents.*"))
    fake_bucket.assert_no_local_gs_dir()
