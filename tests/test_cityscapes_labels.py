"""Cityscapes label table, palette, class weights and the missing-zip error."""

import numpy as np
import pytest

from psa_jax.data import cityscapes as cs

# The 19 evaluated classes: raw labelId -> trainId, written out by hand from cityscapesScripts
# helpers/labels.py (trainId column).
EXPECTED = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
            26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def test_label_table_golden_on_every_raw_id():
    table = cs.LABEL_ID_TO_TRAIN_ID
    assert table.dtype == np.uint8 and table.shape == (256,)
    for raw in range(256):
        assert table[raw] == EXPECTED.get(raw, 255), raw


def test_label_table_is_read_only():
    with pytest.raises(ValueError):
        cs.LABEL_ID_TO_TRAIN_ID[0] = 3


def test_map_label_ids_on_an_image():
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
    mapped = cs.map_label_ids(raw)
    assert mapped.dtype == np.uint8
    assert mapped[0, 7] == 0 and mapped[2, 1] == 18 and mapped[0, 0] == 255 and mapped[15, 15] == 255
    # Wider integer input gives the same result; out-of-range values are refused.
    np.testing.assert_array_equal(cs.map_label_ids(raw.astype(np.int32)), mapped)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        cs.map_label_ids(np.array([-1, 7]))


def test_class_names_palette_and_weights():
    assert len(cs.CLASS_NAMES) == cs.NUM_CLASSES == 19
    assert cs.CLASS_NAMES[0] == "road" and cs.CLASS_NAMES[10] == "sky" and cs.CLASS_NAMES[18] == "bicycle"
    assert cs.PALETTE.shape == (19, 3) and cs.PALETTE.dtype == np.uint8
    assert tuple(cs.PALETTE[0]) == (128, 64, 128) and tuple(cs.PALETTE[13]) == (0, 0, 142)
    assert len(cs.HRNET_CLASS_WEIGHTS) == 19 and cs.HRNET_CLASS_WEIGHTS[17] == pytest.approx(1.1529)


def test_missing_zips_error_names_files_place_and_source(tmp_path):
    (tmp_path / "gtFine_trainvaltest.zip").write_bytes(b"")
    with pytest.raises(cs.CityscapesNotFoundError) as info:
        cs.check_manual_dir(tmp_path)
    message = str(info.value)
    assert "leftImg8bit_trainvaltest.zip" in message
    assert str(tmp_path / "leftImg8bit_trainvaltest.zip") in message
    assert "cityscapes-dataset.com" in message and "register" in message
    assert str(tmp_path / "gtFine_trainvaltest.zip") not in message  # present, so not listed


def test_prepare_with_missing_zips_raises_before_building(tmp_path):
    with pytest.raises(cs.CityscapesNotFoundError, match="gtFine_trainvaltest.zip"):
        cs.prepare_cityscapes(tmp_path / "manual", tmp_path / "data")
    with pytest.raises(cs.CityscapesNotFoundError, match="not prepared"):
        cs.cityscapes_data_source("train", tmp_path / "data")


def test_cache_record_round_trip_png_and_raw_are_lossless_jpeg_is_close():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    image = (image // 32 * 32).astype(np.uint8)  # blocky, so that JPEG is accurate
    label = rng.choice(np.array([0, 5, 18, 255], np.uint8), size=(24, 40))
    for fmt in ("png", "raw"):
        out = cs.decode_cache_record(cs.encode_cache_record("x_000000_000000", image, label, image_format=fmt))
        assert out["image_id"] == "x_000000_000000" and out["decode_ok"]
        np.testing.assert_array_equal(out["image"], image)
        np.testing.assert_array_equal(out["label"], label)
    smooth = np.repeat(np.repeat(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], 24, 0), 3, 2)
    out = cs.decode_cache_record(cs.encode_cache_record("y_000000_000000", smooth, label, image_format="jpeg"))
    np.testing.assert_array_equal(out["label"], label)
    assert np.abs(out["image"].astype(int) - smooth).max() <= 3
    with pytest.raises(ValueError, match="image_format"):
        cs.encode_cache_record("z", image, label, image_format="webp")
    with pytest.raises(ValueError, match="bad magic"):
        cs.decode_cache_record(b"not a record")


def test_corrupt_cache_record_is_reported_not_raised(caplog):
    image = np.zeros((8, 8, 3), np.uint8)
    label = np.zeros((8, 8), np.uint8)
    blob = bytearray(cs.encode_cache_record("bad_000000_000001", image, label, image_format="png"))
    blob[-20:] = b"\0" * 20  # damage the label PNG
    out = cs.decode_cache_record(bytes(blob))
    assert not out["decode_ok"] and out["image_id"] == "bad_000000_000001"
    assert (out["label"] == 255).all() and out["label"].shape == (8, 8)
    assert "bad_000000_000001" in caplog.text
