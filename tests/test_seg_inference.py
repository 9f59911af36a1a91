"""Inference modes against whole-image inference, and the evaluator end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psa_jax.data.cityscapes import PALETTE
from psa_jax.data.fake_cityscapes import synthetic_records
from psa_jax.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_image
from psa_jax.evaluation import seg_inference as I
from psa_jax.evaluation.seg_evaluator import evaluate_segmentation

_W = np.random.default_rng(0).normal(size=(3, 19)).astype(np.float32)
_B = np.random.default_rng(1).normal(size=(19,)).astype(np.float32)


@jax.jit
def pixel_model(images):
    """A fixed 1x1 convolution: output pixel (y, x) depends on input pixel (y, x) only."""
    return jnp.einsum("bhwc,ck->bhwk", images, _W) + _B


def _images(batch=2, h=64, w=128, seed=0):
    """Asymmetric, smooth images (low frequencies), so resampling changes little."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    rng = np.random.default_rng(seed)
    chans = [np.sin(2 * np.pi * (rng.uniform(0.3, 1.0) * xx ** 1.5 + rng.uniform(0.2, 0.8) * yy) + rng.uniform(0, 6))
             for _ in range(3 * batch)]
    return jnp.asarray(np.stack(chans).reshape(batch, 3, h, w).transpose(0, 2, 3, 1), jnp.float32)


def test_window_starts_cover_and_align_to_the_border():
    assert I.window_starts(100, 40, 25) == [0, 25, 50, 60]
    assert I.window_starts(100, 100, 10) == [0]
    assert I.window_starts(30, 50, 10) == [0]
    assert I.window_starts(1024, 512, 342) == [0, 342, 512]


@pytest.mark.parametrize("window,stride", [((24, 40), (16, 24)), ((64, 128), None), ((80, 200), None),
                                           ((33, 50), (33, 50))])
def test_slide_equals_whole_for_a_pixelwise_model(window, stride):
    images = _images()
    whole = I.whole_inference(pixel_model, images)
    slide = I.slide_inference(pixel_model, images, window=window, stride=stride)
    assert slide.shape == whole.shape == (2, 64, 128, 19)
    np.testing.assert_allclose(np.asarray(slide), np.asarray(whole), atol=1e-5)


def test_slide_averages_overlaps_by_their_count():
    ones = lambda x: jnp.ones((x.shape[0], x.shape[1] // 4, x.shape[2] // 4, 5))  # noqa: E731 (1/4 resolution)
    out = I.slide_inference(ones, _images(1), window=(32, 48), stride=(12, 20))
    np.testing.assert_allclose(np.asarray(out), 1.0, atol=1e-6)


def test_outputs_are_resized_to_out_size():
    images = _images(1, 32, 64)
    quarter = lambda x: pixel_model(x[:, ::4, ::4])  # noqa: E731 (1/4-resolution logits)
    out = I.whole_inference(quarter, images, out_size=(64, 128))
    assert out.shape == (1, 64, 128, 19)
    out = I.slide_inference(quarter, images, window=(16, 32), out_size=(40, 80))
    assert out.shape == (1, 40, 80, 19)


def test_multiscale_flip_only_equals_whole():
    images = _images()
    expected = jax.nn.softmax(I.whole_inference(pixel_model, images), axis=-1)
    got = I.multiscale_inference(pixel_model, images, scales=(1.0,), flip=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6)


def test_multiscale_with_sliding_windows_equals_whole_images():
    images = _images()
    windows = I.multiscale_inference(pixel_model, images, scales=(1.0, 2.0), flip=True, window=(64, 128))
    whole = I.multiscale_inference(pixel_model, images, scales=(1.0, 2.0), flip=True, window=None)
    np.testing.assert_allclose(np.asarray(windows), np.asarray(whole), atol=1e-5)


def test_multiscale_on_a_smooth_image_is_close_to_whole():
    images = _images()
    expected = jax.nn.softmax(I.whole_inference(pixel_model, images), axis=-1)
    multiscale = jax.jit(lambda x: I.multiscale_inference(pixel_model, x, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)))
    got = multiscale(images)
    assert float(jnp.abs(got - expected).max()) < 0.05
    assert float(jnp.mean(jnp.argmax(got, -1) == jnp.argmax(expected, -1))) > 0.98
    # Forgetting to flip back would not be close: the images are not mirror-symmetric.
    flipped_only = jax.nn.softmax(pixel_model(images[:, :, ::-1]), axis=-1)
    assert float(jnp.abs(flipped_only - expected).max()) > 0.3


def test_mscale_inference_calls_the_network_with_its_scales():
    calls = []

    def nscale(images, scales):
        calls.append(scales)
        return pixel_model(images[:, ::4, ::4])

    out = I.mscale_inference(nscale, _images(1), scales=(0.5, 1.0, 2.0), out_size=(64, 128))
    assert calls == [(0.5, 1.0, 2.0)] and out.shape == (1, 64, 128, 19)
    with pytest.raises(ValueError, match="1.0"):
        I.mscale_inference(nscale, _images(1), scales=(0.5, 2.0))


# ------------------------------------------------------------------------------------------------
# Evaluator
# ------------------------------------------------------------------------------------------------

def _palette_records(n=3):
    """Records whose image is the palette colour of the label: a nearest-colour model is exact."""
    records = synthetic_records(n, height=32, width=64, seed=2)
    for r in records:
        r["image"] = np.where((r["label"] < 19)[..., None], PALETTE[np.minimum(r["label"], 18)], 0).astype(np.uint8)
    return records


@jax.jit
def nearest_colour_model(images):
    rgb = images * (IMAGENET_STD * 255) + IMAGENET_MEAN * 255
    return -jnp.sum((rgb[..., None, :] - jnp.asarray(PALETTE, jnp.float32)) ** 2, axis=-1)


@pytest.mark.parametrize("mode,kwargs", [("whole", {}), ("slide", {"window": (16, 24), "stride": (8, 16)}),
                                         ("multiscale", {"scales": (1.0,), "flip": True})])
def test_evaluator_modes_with_an_exact_model(mode, kwargs):
    records = _palette_records()
    result = evaluate_segmentation(nearest_colour_model, records, mode=mode, batch_size=2, progress=False,
                                   process_index=0, process_count=1, **kwargs)
    assert result["mIoU"] == pytest.approx(1.0) and result["pixel_accuracy"] == pytest.approx(1.0)
    assert result["num_images"] == 3 and result["num_corrupt"] == 0
    assert result["confusion_matrix"].sum() == sum(int((r["label"] != 255).sum()) for r in records)
    assert "mIoU" in result["table"] and result["IoU"]["road"] == pytest.approx(1.0)


def test_evaluator_mscale_and_pixel_model_agreement(tmp_path):
    records = synthetic_records(3, height=32, width=64, seed=3)
    mscale = evaluate_segmentation(lambda x, scales: pixel_model(x), records, mode="mscale", batch_size=2,
                                   progress=False, process_index=0, process_count=1,
                                   overlay_dir=tmp_path, num_overlays=2)
    whole = evaluate_segmentation(pixel_model, records, mode="whole", batch_size=1, progress=False,
                                  process_index=0, process_count=1)
    slide = evaluate_segmentation(pixel_model, records, mode="slide", window=(16, 32), batch_size=3,
                                  progress=False, process_index=0, process_count=1, jit=True)
    np.testing.assert_array_equal(mscale["confusion_matrix"], whole["confusion_matrix"])
    np.testing.assert_array_equal(slide["confusion_matrix"], whole["confusion_matrix"])
    assert whole["mIoU"] < 0.5  # a random linear model is not the oracle
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "synthetic_000000_000019_overlay.png", "synthetic_000001_000019_overlay.png"]


def test_evaluator_counts_corrupt_records_and_skips_them():
    records = _palette_records(3)
    records[1] = dict(records[1], decode_ok=False, image=np.zeros_like(records[1]["image"]),
                      label=np.full_like(records[1]["label"], 255))
    result = evaluate_segmentation(nearest_colour_model, records, batch_size=2, progress=False,
                                   process_index=0, process_count=1)
    assert result["num_corrupt"] == 1 and result["num_images"] == 3 and result["mIoU"] == pytest.approx(1.0)


def test_evaluator_shards_sum_to_the_single_process_result():
    records = synthetic_records(5, height=32, width=64, seed=4)
    single = evaluate_segmentation(pixel_model, records, batch_size=2, progress=False,
                                   process_index=0, process_count=1)
    # Two processes, simulated one after the other; cross_process_sum is the identity here, so add.
    parts = [evaluate_segmentation(pixel_model, records, batch_size=2, progress=False,
                                   process_index=p, process_count=2) for p in range(2)]
    np.testing.assert_array_equal(parts[0]["confusion_matrix"] + parts[1]["confusion_matrix"],
                                  single["confusion_matrix"])
    assert parts[0]["num_images"] + parts[1]["num_images"] == 5


def test_evaluator_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        evaluate_segmentation(pixel_model, [], mode="tta")
    assert normalize_image(np.zeros((1, 1, 3), np.uint8)).dtype == np.float32
