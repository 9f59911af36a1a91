"""Every config file loads, names valid options and builds its network; bad overrides are refused."""
import pathlib

import jax
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from psa_jax.data.pose_targets import CODECS
from psa_jax.data.seg_pipeline import AUGMENT_PRESETS
from psa_jax.evaluation.seg_evaluator import MODES
from psa_jax.models import count_params
from psa_jax.models.hrnet import hrnet_spec
from psa_jax.models.options import model_options
from psa_jax.tasks.common import compute_dtype
from psa_jax.tasks.registry import get_task

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


def _load(path, *overrides):
    """What `--config=PATH --config.KEY=VALUE ...` gives train.py and eval.py."""
    argv = ["train.py", f"--config={path}"] + [f"--config.{o}" for o in overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", str(path), "config", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


def test_there_is_a_config_per_published_setting():
    names = {p.stem for p in CONFIGS}
    assert {"pose_synthetic_demo", "coco_w32_256x192", "coco_w48_384x288_udp_psa_p", "coco_w48_384x288_udp_psa_s",
            "cityscapes_hrnetv2_w48_ocr", "cityscapes_mscale_ocr_psa_p", "cityscapes_mscale_ocr_psa_s"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_names_valid_options(path, tmp_path):
    config = _load(path)
    assert config.task in ("pose", "seg")
    get_task(config, tmp_path)
    hrnet_spec(config.model.width)
    model_options(config.model.attention, config.model.placement, None, None)
    compute_dtype(config.model.dtype)
    assert config.eval.batch_size >= 1 and config.batch_size >= 1
    if config.task == "pose":
        h, w = config.data.input_size
        assert h % 32 == 0 and w % 32 == 0
        assert config.data.codec in CODECS
    else:
        assert config.data.augment in AUGMENT_PRESETS
        assert config.eval.mode in MODES


def test_the_demo_config_builds_its_network(tmp_path):
    config = _load([p for p in CONFIGS if p.stem == "pose_synthetic_demo"][0])
    model = nnx.eval_shape(lambda: get_task(config, tmp_path).build_model(nnx.Rngs(0)))
    assert count_params(model) > 0
    assert [m for _, m in nnx.iter_graph(model) if type(m).__name__ == "PolarizedSelfAttention"]


def test_misspelt_override_is_rejected_with_its_name():
    with pytest.raises(Exception, match="learnig_rate"):
        _load(CONFIGS[0], "optimizer.learnig_rate=0.1")


def test_wrong_type_override_is_rejected():
    with pytest.raises(Exception, match="batch_size"):
        _load(CONFIGS[0], "batch_size=big")


def test_unknown_option_values_give_clear_errors(tmp_path):
    demo = [p for p in CONFIGS if p.stem == "pose_synthetic_demo"][0]
    config = _load(demo, "model.attention=psa")
    with pytest.raises(ValueError, match="valid names"):
        get_task(config, tmp_path).build_model(nnx.Rngs(0))
    config = _load(demo, "model.dtype=float8")
    with pytest.raises(ValueError, match="config.model.dtype"):
        get_task(config, tmp_path).build_model(nnx.Rngs(0))
    config = _load(demo, "task=depth")
    with pytest.raises(ValueError, match="config.task"):
        get_task(config, tmp_path)
    assert jax.device_count() >= 1
