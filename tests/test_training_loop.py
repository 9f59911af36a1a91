"""train.py / eval.py / checkpoints end to end on a tiny HRNet and synthetic COCO-format data.

The network is a 1-block-per-branch HRNet ('w8_tiny', registered only for these tests) so that
its train step compiles in seconds; everything else (builder, grain, loss, optimizer, orbax,
pycocotools) is the production path.
"""
import importlib.util
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from psa_jax.training import evaluate as eval_script
from psa_jax.training import loop as train_script
from psa_jax.models.hrnet import HRNET_SPECS, HRNetSpec, StageSpec
from psa_jax.training.checkpointing import Checkpointer, CheckpointError, abstract_like
from psa_jax.training.train_step import make_mesh, state_shardings

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = HRNetSpec("w8_tiny", 1, 16, (StageSpec(1, (1, 1), (8, 16)), StageSpec(1, (1, 1, 1), (8, 16, 32)),
                                    StageSpec(1, (1, 1, 1, 1), (8, 16, 32, 64))))


@pytest.fixture(autouse=True)
def tiny_hrnet(monkeypatch):
    monkeypatch.setitem(HRNET_SPECS, "w8_tiny", TINY)


def _demo_config():
    spec = importlib.util.spec_from_file_location("demo_cfg", REPO / "configs" / "pose_synthetic_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    """One synthetic COCO dataset, built once for every test here."""
    return str(tmp_path_factory.mktemp("pose_data"))


def tiny_config(data_dir, **overrides):
    c = _demo_config()
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
    mesh_a = make_mesh(4, 2)
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
    with pytest.raises(CheckpointError, match="Delete that step directory"):
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
    for mesh, shard in ((make_mesh(-1, 1), False), (make_mesh(4, 2), True)):
        sh = state_shardings(state, mesh, shard_params=shard, min_size=64)
        forward = make_forward(gd, lambda m, x: m(x), model_sharding=sh, mesh=mesh)
        outs.append(host_predict_fn(forward, jax.device_put(state, sh), mesh)(images))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_converted_pytorch_checkpoint_restores_and_predicts_like_the_source(tmp_path):
    import torch

    from psa_jax.tools.convert import main as convert_main
    from psa_jax.tasks.registry import get_task
    from psa_jax.training.train_step import host_predict_fn, make_forward
    from psa_jax.torch_reference import randomize_
    from psa_jax.torch_reference.hrnet_pose import PoseHighResolutionNet

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
