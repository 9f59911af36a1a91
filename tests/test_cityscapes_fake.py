"""Fake Cityscapes scenes: deterministic, in the stock layout's terms, and learnable by a tiny network."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from psa_jax.data.cityscapes import LABEL_ID_TO_TRAIN_ID
from psa_jax.data.fake_cityscapes import SCENE_LABEL_IDS, fake_scene, synthetic_records, write_fake_cityscapes
from psa_jax.data.seg_pipeline import SegAugmentConfig, SegTrainTransform
from psa_jax.evaluation.seg_evaluator import evaluate_segmentation
from psa_jax.tasks.seg_losses import cross_entropy


def test_fake_scene_is_deterministic_and_uses_known_ids():
    a_img, a_lab = fake_scene(np.random.default_rng(5), 48, 96)
    b_img, b_lab = fake_scene(np.random.default_rng(5), 48, 96)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert a_img.shape == (48, 96, 3) and a_lab.shape == (48, 96) and a_lab.dtype == np.uint8
    assert set(np.unique(a_lab)) <= set(SCENE_LABEL_IDS)
    train_ids = set(np.unique(LABEL_ID_TO_TRAIN_ID[a_lab]))
    assert {0, 1, 2, 10, 255} <= train_ids  # road, sidewalk, building, sky and ignored pixels


def test_write_fake_cityscapes_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        write_fake_cityscapes(tmp_path, num_images={"validation": 1})
    with pytest.raises(ValueError, match="not among the written images"):
        write_fake_cityscapes(tmp_path, num_images={"train": 1}, corrupt_images=["nowhere_000000_000019"])


def test_a_tiny_network_learns_the_fake_scenes():
    train = synthetic_records(8, seed=10)
    test = synthetic_records(4, seed=11)
    transform = SegTrainTransform(SegAugmentConfig(crop_hw=(32, 64)))
    rng = np.random.default_rng(0)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w1": jax.random.normal(k1, (3, 3, 3, 16)) * 0.3, "b1": jnp.zeros(16),
              "w2": jax.random.normal(k2, (16, 19)) * 0.3, "b2": jnp.zeros(19)}

    def model(p, x):
        h = jax.lax.conv_general_dilated(x, p["w1"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(h + p["b1"]) @ p["w2"] + p["b2"]

    opt = optax.adam(0.03)
    state = opt.init(params)

    @jax.jit
    def step(p, s, x, y):
        loss, g = jax.value_and_grad(lambda q: cross_entropy(model(q, x), y))(p)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for _ in range(150):
        batch = [transform(train[j], rng) for j in rng.integers(0, len(train), 4)]
        params, state, loss = step(params, state, np.stack([b["image"] for b in batch]),
                                   np.stack([b["label"] for b in batch]))
        losses.append(float(loss))
    result = evaluate_segmentation(jax.jit(lambda x: model(params, x)), test, batch_size=2, progress=False,
                                   process_index=0, process_count=1)
    assert np.mean(losses[-20:]) < 0.3 * losses[0]
    assert result["mIoU"] > 0.8, result["table"]
