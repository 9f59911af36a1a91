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


# ------------------------------------------------------------------------------------------------
# Flip test-time augmentation, with a model that is not mirror-equivariant
# ------------------------------------------------------------------------------------------------

_W_DIFF = np.random.default_rng(5).normal(size=(3, 19)).astype(np.float32)
_RAMP = 3.0 * np.random.default_rng(6).normal(size=(19,)).astype(np.float32)


def edge_model(images):
    """Logits from each pixel, its difference to the right-hand neighbour and a ramp along x.

    Unlike `pixel_model`, mirroring the input does not mirror the output (the horizontal
    difference changes sign and the ramp runs the other way), so flip TTA changes the scores.
    """
    right = jnp.concatenate([images[:, :, 1:], images[:, :, -1:]], axis=2)
    ramp = jnp.linspace(-1.0, 1.0, images.shape[2])[None, None, :, None] * _RAMP
    return (jnp.einsum("bhwc,ck->bhwk", images, _W) + 20.0 * jnp.einsum("bhwc,ck->bhwk", right - images, _W_DIFF)
            + ramp + _B)


def _softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _tta_expected(logits_of, images, scales, out_size, flip=True):
    """Independent TTA reference: the mean over scales (x mirrors) of softmax(P(x)) and, with flip,
    mirror(softmax(P(mirror(x)))), P's logits resized to out_size. Softmax probabilities are
    averaged, as `multiscale_inference` documents and mmseg's aug_test does (HRNet-Seg's
    `base_dataset.inference` instead averages a flip pair's logits, then takes `exp`)."""
    x = np.asarray(images)
    h, w = x.shape[1:3]
    total = []
    for s in scales:
        size = (max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5)))
        scaled = x if size == (h, w) else np.asarray(jax.image.resize(
            x, (x.shape[0], *size, 3), "bilinear", antialias=False))
        for mirror in ((False, True) if flip else (False,)):
            inp = np.ascontiguousarray(scaled[:, :, ::-1]) if mirror else scaled
            logits = np.asarray(logits_of(jnp.asarray(inp)), np.float32)
            if logits.shape[1:3] != tuple(out_size):
                logits = np.asarray(jax.image.resize(logits, (logits.shape[0], *out_size, logits.shape[3]),
                                                     "bilinear", antialias=False))
            probs = _softmax(logits)
            total.append(probs[:, :, ::-1] if mirror else probs)
    return np.mean(total, axis=0)


def test_edge_model_is_not_mirror_equivariant():
    images = _images(1)
    direct = _softmax(edge_model(images))
    mirrored = _softmax(edge_model(images[:, :, ::-1]))[:, :, ::-1]
    assert np.abs(direct - mirrored).max() > 0.5
    assert np.mean(direct.argmax(-1) != mirrored.argmax(-1)) > 0.1


def _slide_edge(window, stride):
    return lambda x: I.slide_inference(edge_model, x, window=window, stride=stride)


@pytest.mark.parametrize("case", ["whole", "slide", "multiscale", "multiscale_slide"])
def test_flip_tta_averages_the_mirrored_prediction(case):
    """Each multiscale_inference path that flips (one whole pass, sliding windows, several scales,
    several scales with the large one in windows) against the reference computed here."""
    images = _images(1)
    if case == "whole":
        kwargs, logits_of = {"scales": (1.0,), "window": None}, edge_model
    elif case == "slide":
        kwargs, logits_of = {"scales": (1.0,), "window": (32, 48), "stride": (16, 40)}, _slide_edge((32, 48), (16, 40))
    elif case == "multiscale":
        kwargs, logits_of = {"scales": (0.5, 1.0, 1.5), "window": None}, edge_model
    else:  # 32x64 and 64x128 fit the window; 96x192 goes through 2x2 windows, stride = window
        kwargs = {"scales": (0.5, 1.0, 1.5), "window": (64, 128)}

        def logits_of(x):
            return _slide_edge((64, 128), (64, 128))(x) if x.shape[1] > 64 else edge_model(x)
    expected = _tta_expected(logits_of, images, kwargs["scales"], (64, 128))
    got = np.asarray(I.multiscale_inference(edge_model, images, flip=True, **kwargs))
    assert got.shape == (1, 64, 128, 19)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    # The check has teeth: without the mirrored pass the scores are far from the reference.
    no_flip = np.asarray(I.multiscale_inference(edge_model, images, flip=False, **kwargs))
    np.testing.assert_allclose(no_flip, _tta_expected(logits_of, images, kwargs["scales"], (64, 128), flip=False),
                               atol=2e-5)
    assert np.abs(no_flip - expected).max() > 0.1


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


def test_evaluator_multiscale_passes_flip_through():
    """The evaluator's confusion matrix is that of the flip-TTA reference's argmax (and not of the
    unflipped prediction) for a model that is not mirror-equivariant."""
    from psa_jax.evaluation.seg_metrics import confusion_matrix

    records = synthetic_records(2, height=32, width=64, seed=5)
    images = jnp.asarray(np.stack([normalize_image(r["image"]) for r in records]))
    labels = np.stack([r["label"] for r in records]).astype(np.int64)
    for flip in (True, False):
        reference = _tta_expected(edge_model, images, (1.0,), (32, 64), flip=flip)
        top2 = np.sort(reference, axis=-1)[..., -2:]
        decided = top2[..., 1] - top2[..., 0] > 1e-4  # float64 reference vs float32: skip near-ties
        preds = np.asarray(I.multiscale_inference(edge_model, images, scales=(1.0,), flip=flip, window=None)).argmax(-1)
        assert decided.mean() > 0.99
        np.testing.assert_array_equal(preds[decided], reference.argmax(-1)[decided])
        result = evaluate_segmentation(edge_model, records, mode="multiscale", scales=(1.0,), flip=flip,
                                       window=None, batch_size=2, progress=False, process_index=0,
                                       process_count=1)
        np.testing.assert_array_equal(result["confusion_matrix"], confusion_matrix(preds, labels, 19))
        if flip:
            flipped = result["confusion_matrix"]
    assert not np.array_equal(flipped, result["confusion_matrix"])


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


def test_window_starts_rejects_a_zero_stride():
    with pytest.raises(ValueError, match="stride"):
        I.window_starts(10, 4, 0)


def _coordinate_images(h, w):
    """(1, h, w, 3) with channel 0 = row index, channel 1 = column index: a window's first pixel
    tells its offset."""
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return jnp.asarray(np.stack([yy, xx, np.zeros_like(yy)], -1)[None], jnp.float32)


class _Recorder:
    """predict_fn recording each call's input shape and top-left coordinates; logits = the input."""

    def __init__(self):
        self.shapes, self.offsets = [], []

    def __call__(self, images):
        self.shapes.append(tuple(images.shape[1:3]))
        self.offsets.append((int(images[0, 0, 0, 0]), int(images[0, 0, 0, 1])))
        return images


def test_slide_default_stride_is_two_thirds_of_the_window_rounded_up():
    # stride=None: (ceil(2 * 7 / 3), ceil(2 * 10 / 3)) = (5, 7) (mmseg Cityscapes slide configs,
    # e.g. 769 -> 513). Rows of 12 with window 7: starts 0, 5 (= 12 - 7). Columns of 24 with
    # window 10: 0, 7, 14 (= 24 - 10). (Floor would give 0, 4, 5 x 0, 6, 12, 14; /4 on the
    # columns 0, 5, 10, 14.)
    rec = _Recorder()
    I.slide_inference(rec, _coordinate_images(12, 24), window=(7, 10))
    assert rec.offsets == [(0, 0), (0, 7), (0, 14), (5, 0), (5, 7), (5, 14)]
    assert set(rec.shapes) == {(7, 10)}


def test_multiscale_default_scales_are_hrnets():
    # Scales 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 of an 8 x 16 image, each with its flip.
    rec = _Recorder()
    I.multiscale_inference(rec, _coordinate_images(8, 16))
    sizes = [(4, 8), (6, 12), (8, 16), (10, 20), (12, 24), (14, 28)]
    assert rec.shapes == [s for s in sizes for _ in range(2)]


@pytest.mark.parametrize("image,window,expected", [
    ((8, 20), (30, 10), [((8, 10), (0, 0)), ((8, 10), (0, 10))]),      # only the width exceeds
    ((20, 8), (10, 30), [((10, 8), (0, 0)), ((10, 8), (10, 0))]),      # only the height exceeds
])
def test_multiscale_slides_when_either_side_exceeds_the_window(image, window, expected):
    rec = _Recorder()
    I.multiscale_inference(rec, _coordinate_images(*image), scales=(1.0,), flip=False, window=window)
    assert list(zip(rec.shapes, rec.offsets)) == expected


def test_mscale_default_out_size_is_the_input_size():
    images = jnp.zeros((2, 6, 10, 3))
    out = I.mscale_inference(lambda x, scales: jnp.ones((2, 3, 5, 4)), images)
    assert out.shape == (2, 6, 10, 4)
