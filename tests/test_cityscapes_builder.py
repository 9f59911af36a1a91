"""tfds's stock Cityscapes builder on generated fake zips, the training cache and the pipelines.

The module builds one fake dataset (about 12 s, TensorFlow is imported by the stock builder) and
shares it between its tests.
"""

import zipfile

import cv2
import numpy as np
import pytest

from psa_jax.data import cityscapes as cs
from psa_jax.data import seg_pipeline as sp
from psa_jax.data.fake_cityscapes import SCENE_LABEL_IDS, write_fake_cityscapes

CORRUPT_IMAGE = "frankfurt_000000_000019"
CORRUPT_LABEL = "bochum_000001_000022"
NUM = {"train": 6, "val": 3, "test": 1}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    ids = write_fake_cityscapes(root / "manual", num_images=NUM, height=64, width=128, seed=3,
                                corrupt_images=[CORRUPT_IMAGE], corrupt_labels=[CORRUPT_LABEL])
    cs.prepare_cityscapes(root / "manual", root / "data")
    return root, ids


def _zip_png(zip_path, member, flags):
    with zipfile.ZipFile(zip_path) as z:
        data = z.read(member)
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def test_fake_zips_have_the_real_layout(built):
    root, ids = built
    with zipfile.ZipFile(root / "manual" / "gtFine_trainvaltest.zip") as z:
        names = set(z.namelist())
    stem = "gtFine/train/aachen/aachen_000000_000019_gtFine"
    assert {f"{stem}_labelIds.png", f"{stem}_color.png", f"{stem}_instanceIds.png",
            f"{stem}_polygons.json"} <= names
    with zipfile.ZipFile(root / "manual" / "leftImg8bit_trainvaltest.zip") as z:
        assert "leftImg8bit/val/lindau/lindau_000000_000020_leftImg8bit.png" in z.namelist()
    assert [len(ids[s]) for s in ("train", "val", "test")] == [6, 3, 1]


def test_stock_builder_records_match_the_zips_after_label_mapping(built):
    root, ids = built
    records = cs.CityscapesRecords(cs.cityscapes_data_source("train", root / "data"))
    assert len(records) == NUM["train"]
    seen = set()
    for i in range(len(records)):
        r = records[i]
        seen.add(r["image_id"])
        city = r["image_id"].split("_")[0]
        assert r["image"].shape == (64, 128, 3) and r["image"].dtype == np.uint8
        assert r["label"].shape == (64, 128) and r["label"].dtype == np.uint8
        if r["image_id"] == CORRUPT_LABEL:
            assert not r["decode_ok"] and (r["label"] == 255).all()
            continue
        assert r["decode_ok"]
        raw = _zip_png(root / "manual" / "gtFine_trainvaltest.zip",
                       f"gtFine/train/{city}/{r['image_id']}_gtFine_labelIds.png", cv2.IMREAD_UNCHANGED)
        bgr = _zip_png(root / "manual" / "leftImg8bit_trainvaltest.zip",
                       f"leftImg8bit/train/{city}/{r['image_id']}_leftImg8bit.png", cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(r["label"], cs.LABEL_ID_TO_TRAIN_ID[raw])
        np.testing.assert_array_equal(r["image"], bgr[..., ::-1])
        assert set(np.unique(raw)) <= set(SCENE_LABEL_IDS)
    assert seen == set(ids["train"])


def test_corrupt_image_is_reported_with_its_id(built, caplog):
    root, _ = built
    records = cs.CityscapesRecords(cs.cityscapes_data_source("validation", root / "data"))
    counts, corrupt = cs.scan_records(records, progress=False)
    assert corrupt == [CORRUPT_IMAGE]
    assert CORRUPT_IMAGE in caplog.text or CORRUPT_IMAGE in cs._warned_ids
    assert counts.sum() == 2 * 64 * 128  # the two readable images
    assert counts[cs.NUM_CLASSES] > 0  # ignore pixels (ego vehicle, unlabeled, static)


def test_training_cache_skips_corrupt_records_and_round_trips(built, tmp_path):
    root, _ = built
    stock = cs.CityscapesRecords(cs.cityscapes_data_source("train", root / "data"))
    summary = cs.build_training_cache(stock, tmp_path, "train", image_format="png", num_threads=2, progress=False)
    assert summary.corrupt_ids == [CORRUPT_LABEL] and summary.num_records == NUM["train"] - 1
    cached = cs.CachedCityscapesRecords(tmp_path, "train")
    good = [stock[i] for i in range(len(stock)) if stock[i]["decode_ok"]]
    assert len(cached) == len(good)
    for a, b in zip(good, (cached[i] for i in range(len(cached)))):
        assert a["image_id"] == b["image_id"]
        np.testing.assert_array_equal(a["image"], b["image"])  # PNG cache: lossless
        np.testing.assert_array_equal(a["label"], b["label"])
    jpeg = cs.build_training_cache(stock, tmp_path / "jpeg", "train", progress=False)
    assert jpeg.image_format == "jpeg"
    r = cs.CachedCityscapesRecords(tmp_path / "jpeg", "train")[0]
    np.testing.assert_array_equal(r["label"], good[0]["label"])
    assert np.abs(r["image"].astype(int) - good[0]["image"]).mean() < 6.0  # noisy fake image, q95
    with pytest.raises(cs.CityscapesNotFoundError, match="no Cityscapes training cache"):
        cs.CachedCityscapesRecords(tmp_path, "validation")


@pytest.mark.parametrize("color_jitter", [0.0, 0.25])  # 0.25: NVIDIA's preset, image-only randomness
def test_train_pipeline_batches_are_deterministic_and_resumable(built, tmp_path, color_jitter):
    root, _ = built
    records = sp.cityscapes_records("train", data_dir=root / "data")
    augment = sp.SegAugmentConfig(crop_hw=(32, 48), color_jitter=color_jitter)

    def make():
        return sp.seg_train_dataset(records, augment, global_batch_size=4, seed=7, process_index=0,
                                    process_count=1)

    it = iter(make())
    first = [next(it) for _ in range(2)]
    state = it.get_state()
    third = next(it)
    fourth = next(it)
    b = first[0]
    assert b["image"].shape == (4, 32, 48, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (4, 32, 48) and b["label"].dtype == np.int32
    assert set(np.unique(b["label"])) <= set(range(19)) | {255}
    assert abs(float(b["image"].mean())) < 3.0  # normalised
    again = iter(make())
    np.testing.assert_array_equal(next(again)["image"], first[0]["image"])
    resumed = iter(make())
    resumed.set_state(state)
    resumed_third = next(resumed)
    np.testing.assert_array_equal(resumed_third["label"], third["label"])
    resumed_fourth = next(resumed)
    np.testing.assert_array_equal(resumed_fourth["image"].shape, third["image"].shape)
    # The resumed batches are the uninterrupted ones, array for array (images, labels and any ids).
    for got, want in ((resumed_third, third), (resumed_fourth, fourth)):
        assert set(got) == set(want) and {"image", "label"} <= set(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # ... and resuming is not trivially true: consecutive batches differ.
    assert not np.array_equal(third["image"], fourth["image"])
    assert not np.array_equal(third["image"], first[1]["image"])


def test_train_pipeline_shards_per_process(built):
    root, _ = built
    records = sp.cityscapes_records("train", data_dir=root / "data")
    augment = sp.SegAugmentConfig(crop_hw=(16, 16), scale_range=(1.0, 1.0), scale_step=None, flip_prob=0.0)
    batches = [next(iter(sp.seg_train_dataset(records, augment, global_batch_size=6, seed=0,
                                              process_index=p, process_count=2))) for p in range(2)]
    assert all(b["image"].shape[0] == 3 for b in batches)
    assert not np.array_equal(batches[0]["image"], batches[1]["image"])


def test_eval_pipeline_pads_and_flags(built):
    root, _ = built
    records = sp.cityscapes_records("validation", data_dir=root / "data")
    batches = list(sp.seg_eval_dataset(records, batch_size=2, process_index=0, process_count=1))
    assert len(batches) == 2
    valid = np.concatenate([b["valid"] for b in batches])
    ok = np.concatenate([b["decode_ok"] for b in batches])
    ids = np.concatenate([b["image_id"] for b in batches])
    assert valid.tolist() == [True, True, True, False]
    assert ok[ids == CORRUPT_IMAGE].tolist() == [False]
    assert batches[0]["image"].shape == (2, 64, 128, 3) and batches[0]["label"].dtype == np.int32


def test_check_cityscapes_cli(built, tmp_path, capsys):
    from psa_jax.tools import check_cityscapes

    root, _ = built
    rc = check_cityscapes.main(["--manual_dir", str(root / "manual"), "--data_dir", str(root / "data"),
                                "--cache_dir", str(tmp_path / "cache"), "--overlay_dir", str(tmp_path / "png"),
                                "--no_progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.strip().splitlines()[-1] == "mIoU=100.00"
    assert "road" in out and "(ignore)" in out and CORRUPT_IMAGE in out and CORRUPT_LABEL in out
    assert (tmp_path / "cache" / "train.array_record").is_file()
    assert len(list((tmp_path / "png").glob("*_labels.png"))) == 2  # the two readable val images


def test_check_cityscapes_cli_missing_zips(tmp_path, capsys):
    from psa_jax.tools import check_cityscapes

    rc = check_cityscapes.main(["--manual_dir", str(tmp_path), "--data_dir", str(tmp_path / "d"), "--no_progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "leftImg8bit_trainvaltest.zip" in err and "cityscapes-dataset.com" in err
