"""Segmentation through the real training loop: train.py's `loop.train` and eval.py's `evaluate`
on configs/seg_synthetic_demo.py, with a 1-block-per-branch HRNet and tiny fake Cityscapes scenes.

Everything else is the production path: fake Cityscapes zips -> tfds `cityscapes` builder -> grain
pipeline with HRNet-Seg augmentation -> SegTask.loss_fn (HRNet-Seg cross entropy) -> orbax
checkpoints -> SegTask.forward / SegTask.evaluate (whole-image inference, confusion-matrix mIoU).
"""
import json
import math
import os
import pathlib

import pytest

from psa_jax.training import evaluate as eval_script
from psa_jax.training import loop as train_script
from psa_jax.training.checkpointing import Checkpointer
from psa_jax.training.config_schema import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("tiny_hrnet")  # tests/conftest.py: the 'w8_tiny' HRNet




def tiny_seg_config(data_dir):
    c = load_config(REPO / "configs" / "seg_synthetic_demo.py")
    c.model.width = "w8_tiny"
    c.data.data_dir = data_dir
    c.data.synthetic.num_train = 16
    c.data.synthetic.num_val = 4
    c.data.synthetic.height = 64
    c.data.synthetic.width = 128
    c.data.crop_size = (64, 128)
    c.batch_size = 8
    c.num_steps = 24
    c.log_every_steps = 1
    c.eval.every_steps = 12
    c.eval.batch_size = 4
    c.clear_caches_after_compile = False
    return c


def test_seg_trains_checkpoints_and_eval_reproduces_miou(tmp_path):
    workdir = str(tmp_path / "seg")
    config = tiny_seg_config(str(tmp_path / "data"))
    results = train_script.train(config, workdir)

    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(train_losses) == config.num_steps and all(math.isfinite(v) for v in train_losses)
    # The loss falls: the mean of the last few logged steps is well below the first step's.
    assert sum(train_losses[-4:]) / 4 < 0.8 * train_losses[0], train_losses
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [12, 24]
    for r in evals:
        assert math.isfinite(r["mIoU"]) and 0.0 <= r["mIoU"] <= 1.0, r
    assert results["mIoU"] == pytest.approx(evals[-1]["mIoU"], abs=1e-9)
    # The tiny network has learnt more than a constant prediction in 24 steps (> 1/19 of the classes).
    assert evals[-1]["mIoU"] > 0.06, evals

    # Orbax step directories were written; the demo keeps the latest one and the best one.
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), best_metric="mIoU", best_mode="max")
    steps = sorted(ckpt.all_steps())
    best = ckpt.best_step()
    ckpt.close()
    assert 24 in steps and best in steps and set(steps) <= {12, 24}
    for s in steps:
        assert (pathlib.Path(workdir) / "checkpoints" / str(s) / "model").is_dir()

    # eval.py's path restores the best checkpoint and reproduces the mIoU recorded for it.
    best_miou = [r["mIoU"] for r in evals if r["step"] == best][0]
    again = eval_script.evaluate(config, workdir, "best")
    assert again["mIoU"] == pytest.approx(best_miou, abs=1e-6)
    assert os.path.exists(os.path.join(workdir, f"eval_{best}.json"))
