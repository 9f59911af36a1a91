"""Every config file loads, names valid options and builds its network; bad overrides are refused."""
import pathlib
import re

import pytest
from flax import nnx

from psa_jax.data.pose_targets import CODECS
from psa_jax.data.seg_pipeline import AUGMENT_PRESETS
from psa_jax.evaluation.seg_evaluator import MODES
from psa_jax.models import count_params
from psa_jax.models.hrnet import hrnet_spec
from psa_jax.models.options import model_options
from psa_jax.tasks.common import compute_dtype
from psa_jax.tasks.registry import get_task
from psa_jax.training.config_schema import load_config
from psa_jax.training.init_weights import PRETRAINED_SOURCES, PYTORCH_LAYOUTS

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


def _load(path, *overrides):
    """What `--config=PATH --config.KEY=VALUE ...` gives train.py and eval.py."""
    return load_config(path, overrides)


def test_there_is_a_config_per_published_setting():
    names = {p.stem for p in CONFIGS}
    assert set(RECIPES) | set(DEMOS) == names   # a new config file gets its recipe pinned here


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
    config = _load(next(p for p in CONFIGS if p.stem == "pose_synthetic_demo"))
    model = nnx.eval_shape(lambda: get_task(config, tmp_path).build_model(nnx.Rngs(0)))
    psa = [m for _, m in nnx.iter_graph(model) if type(m).__name__ == "PolarizedSelfAttention"]
    assert psa
    # Pose HRNet-W18-small-v2 (17 joints) without attention, plus 38 PSA_p blocks: 12 at 18 channels,
    # 12 at 36, 10 at 72, 4 at 144; the official PSA_p has 2c^2 + c parameters
    # (`torch_reference.psa.psa_param_count`).
    psa_counts = sorted(count_params(m) for m in psa)
    assert len(psa) == 38 and psa_counts == sorted(
        [2 * c * c + c for c, n in ((18, 12), (36, 12), (72, 10), (144, 4)) for _ in range(n)])
    assert count_params(model) - sum(psa_counts) == 3_616_675  # = the demo with model.attention=none
    assert count_params(model) == 3_616_675 + 12 * 666 + 12 * 2628 + 10 * 10440 + 4 * 41616 == 3_927_067


def test_misspelt_override_is_rejected_with_its_name():
    with pytest.raises(Exception, match="learnig_rate"):
        _load(CONFIGS[0], "optimizer.learnig_rate=0.1")


def test_wrong_type_override_is_rejected():
    with pytest.raises(Exception, match="batch_size"):
        _load(CONFIGS[0], "batch_size=big")


def test_unknown_option_values_give_clear_errors(tmp_path):
    demo = next(p for p in CONFIGS if p.stem == "pose_synthetic_demo")
    config = _load(demo, "model.attention=psa")
    with pytest.raises(ValueError, match="valid names"):
        get_task(config, tmp_path).build_model(nnx.Rngs(0))
    config = _load(demo, "model.dtype=float8")
    with pytest.raises(ValueError, match="config.model.dtype"):
        get_task(config, tmp_path).build_model(nnx.Rngs(0))
    config = _load(demo, "task=depth")
    with pytest.raises(ValueError, match="config.task"):
        get_task(config, tmp_path)


# The recipe each published-setting file documents (its docstring and comments): a changed value
# must fail here as well as in the file's text.
_POSE_EVAL = {"eval.boxes": "gt", "eval.final_boxes": "det", "eval.det_score_threshold": 0.0, "eval.flip_test": True}
_ADAM = {"optimizer.name": "adam", "optimizer.weight_decay": 0.0, "optimizer.b1": 0.9, "optimizer.b2": 0.999,
         "optimizer.eps": 1e-8, "optimizer.grad_clip_norm": 0.0}
# HRNet-pose yaml + tools/train.py: LR_STEP [170, 200] with the scheduler stepped at each epoch's start.
_HRNET_POSE = {"model.name": "pose_hrnet", "model.attention": "none", "data.codec": "msra", "data.sigma": 0.0,
               **_ADAM, "optimizer.lr": 1e-3,
               "schedule.name": "multistep", "schedule.milestones": (169, 199), "schedule.gamma": 0.1,
               "schedule.warmup_steps": 0, "num_epochs": 210,
               "data.augment.half_body_prob": 0.3, "data.augment.num_joints_half_body": 8,
               "data.augment.scale_factor": 0.35, "data.augment.rotation_factor": 45.0,
               "data.augment.rotation_prob": 0.6, "data.augment.flip": True, "data.augment.flip_prob": 0.5,
               **_POSE_EVAL, "init.pytorch_layout": "imagenet"}
# mmpose hrnet_w48_coco_{256x192,384x288}_udp.py (8 GPUs x 32).
_MMPOSE_UDP = {"model.name": "pose_hrnet", "model.width": "w48", "model.placement": "basic", "data.codec": "udp",
               "data.sigma": 0.0, **_ADAM, "optimizer.lr": 5e-4,
               "schedule.name": "multistep", "schedule.milestones": (170, 200), "schedule.gamma": 0.1,
               "schedule.warmup_steps": 500, "schedule.warmup_ratio": 0.001, "num_epochs": 210, "batch_size": 256,
               "data.augment.half_body_prob": 0.3, "data.augment.num_joints_half_body": 8,
               "data.augment.scale_factor": 0.5, "data.augment.rotation_factor": 40.0,
               "data.augment.rotation_prob": 0.6, "data.augment.flip": True, "data.augment.flip_prob": 0.5,
               **_POSE_EVAL, "init.pytorch": "pretrained/hrnet_w48-8ef0771d.pth", "init.pytorch_layout": "imagenet"}
_HRNET_SEG = {"model.name": "seg_hrnet", "model.width": "w48", "model.attention": "none", "model.dtype": "float32",
              "data.crop_size": (512, 1024), "data.augment": "hrnet_seg",
              "loss.recipe": "hrnet_seg", "loss.class_weights": True, "loss.use_ohem": False,
              "optimizer.name": "sgd", "optimizer.lr": 0.01, "optimizer.momentum": 0.9, "optimizer.weight_decay": 5e-4,
              "optimizer.nesterov": False, "optimizer.grad_clip_norm": 0.0,
              "schedule.name": "poly", "schedule.power": 0.9, "schedule.warmup_steps": 0,
              "num_epochs": 484, "batch_size": 12, "eval.mode": "whole", "eval.scales": (), "eval.flip": False,
              "init.pytorch": "pretrained/hrnetv2_w48_imagenet_pretrained.pth", "init.pytorch_layout": "imagenet"}
_NVIDIA_MSCALE = {"model.name": "mscale_ocr", "model.width": "w48", "model.placement": "basic",
                  "model.align_corners": "false", "model.eval_scales": (0.5, 1.0, 2.0), "model.dtype": "bfloat16",
                  "data.crop_size": (1024, 2048), "data.augment": "nvidia",
                  "loss.recipe": "nvidia_mscale", "loss.aux_weight": 0.4,
                  "optimizer.name": "sgd", "optimizer.lr": 5e-3, "optimizer.momentum": 0.9,
                  "optimizer.weight_decay": 1e-4, "optimizer.nesterov": False, "optimizer.grad_clip_norm": 0.0,
                  "schedule.name": "poly_epoch", "schedule.power": 2.0, "schedule.warmup_steps": 0,
                  "num_epochs": 175, "batch_size": 8,
                  "eval.mode": "mscale", "eval.scales": (0.5, 1.0, 2.0), "eval.flip": False,
                  "init.pytorch": "pretrained/ocrnet.HRNet_industrious-chicken.pth", "init.pytorch_layout": "snapshot"}
RECIPES = {
    "coco_w32_256x192": {**_HRNET_POSE, "model.width": "w32", "data.input_size": (256, 192), "batch_size": 128,
                         "init.pytorch": "pretrained/hrnet_w32-36af842e.pth"},
    "coco_w48_384x288": {**_HRNET_POSE, "model.width": "w48", "data.input_size": (384, 288), "batch_size": 96,
                         "init.pytorch": "pretrained/hrnet_w48-8ef0771d.pth"},
    "coco_w48_256x192_udp": {**_MMPOSE_UDP, "model.attention": "none", "data.input_size": (256, 192)},
    "coco_w48_256x192_udp_psa_p": {**_MMPOSE_UDP, "model.attention": "psa_p", "data.input_size": (256, 192)},
    "coco_w48_384x288_udp": {**_MMPOSE_UDP, "model.attention": "none", "data.input_size": (384, 288)},
    "coco_w48_384x288_udp_psa_p": {**_MMPOSE_UDP, "model.attention": "psa_p", "data.input_size": (384, 288)},
    "coco_w48_384x288_udp_psa_s": {**_MMPOSE_UDP, "model.attention": "psa_s", "data.input_size": (384, 288)},
    # HRNet-Seg yaml ALIGN_CORNERS False; the OCR yaml leaves default.py's True.
    "cityscapes_hrnetv2_w48": {**_HRNET_SEG, "model.ocr": False, "model.align_corners": "false"},
    "cityscapes_hrnetv2_w48_ocr": {**_HRNET_SEG, "model.ocr": True, "model.align_corners": "true",
                                   "loss.aux_weight": 0.4},
    "cityscapes_mscale_ocr": {**_NVIDIA_MSCALE, "model.attention": "none"},
    "cityscapes_mscale_ocr_psa_p": {**_NVIDIA_MSCALE, "model.attention": "psa_p"},
    "cityscapes_mscale_ocr_psa_s": {**_NVIDIA_MSCALE, "model.attention": "psa_s"},
}
DEMOS = ("pose_synthetic_demo", "seg_synthetic_demo")


def _value(config, dotted):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return tuple(value) if isinstance(value, (tuple, list)) else value


@pytest.mark.parametrize("stem", sorted(RECIPES))
def test_published_config_has_its_documented_recipe(stem):
    config = _load(next(p for p in CONFIGS if p.stem == stem))
    got = {key: _value(config, key) for key in RECIPES[stem]}
    assert got == RECIPES[stem]
    for key, value in RECIPES[stem].items():   # same types too: 1 == 1.0 and True == 1 above
        assert type(got[key]) is type(value), key


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _differing_keys(a, b):
    ca, cb = (_flat(_load(next(p for p in CONFIGS if p.stem == s)).to_dict()) for s in (a, b))
    assert ca.keys() == cb.keys()
    return {k for k in ca if ca[k] != cb[k]}


@pytest.mark.parametrize("a, b, differ", [
    ("cityscapes_mscale_ocr_psa_p", "cityscapes_mscale_ocr_psa_s", {"model.attention"}),
    ("coco_w48_384x288_udp_psa_p", "coco_w48_384x288_udp_psa_s", {"model.attention"}),
    ("coco_w48_256x192_udp_psa_p", "coco_w48_384x288_udp_psa_p", {"data.input_size"}),
])
def test_twin_configs_differ_only_where_their_names_do(a, b, differ):
    """Twins write their recipe out in full; this keeps the two copies equal."""
    assert _differing_keys(a, b) == differ


_ATTENTION_CONFIGS = sorted(s for s in RECIPES if RECIPES[s].get("model.attention", "none") != "none")


def test_every_attention_config_is_pinned():
    assert _ATTENTION_CONFIGS == sorted(p.stem for p in CONFIGS
                                        if p.stem not in DEMOS and _load(p).model.attention != "none")
    assert len(_ATTENTION_CONFIGS) == 5


@pytest.mark.parametrize("stem", _ATTENTION_CONFIGS)
def test_each_attention_config_has_a_baseline_twin_differing_only_in_attention(stem):
    """`X_psa_p.py` / `X_psa_s.py` and `X.py`: the like-for-like comparison the README table makes."""
    twin = re.sub(r"_psa_[a-z]+$", "", stem)
    assert twin != stem and twin in RECIPES, f"{stem} has no twin {twin}.py"
    assert _load(next(p for p in CONFIGS if p.stem == twin)).model.attention == "none"
    assert _differing_keys(stem, twin) == {"model.attention"}


@pytest.mark.parametrize("stem", sorted(RECIPES))
def test_each_recipe_starts_from_its_reference_s_pretrained_file(stem):
    config = _load(next(p for p in CONFIGS if p.stem == stem))
    name = config.init.pytorch.removeprefix("pretrained/")
    assert config.init.pytorch == f"pretrained/{name}" and name in PRETRAINED_SOURCES
    assert config.init.pytorch_layout in PYTORCH_LAYOUTS and not config.init.checkpoint
    path = next(p for p in CONFIGS if p.stem == stem)
    text = path.read_text()
    twin = re.search(r'sibling_config\(__file__, "([^"]+)"\)', text)  # a setting built on its twin
    if twin:
        text = (path.parent / twin.group(1)).read_text()
    assert name in text, "the docstring or comments name the file"


@pytest.mark.parametrize("stem", DEMOS)
def test_demos_train_from_scratch_on_purpose(stem):
    """`make demo` needs no download: the demos set 'none' explicitly."""
    assert _load(next(p for p in CONFIGS if p.stem == stem)).init.pytorch == "none"


def test_configs_start_from_the_schema_only():
    """No recipe holders: a config file imports nothing but the schema constructors."""
    for path in CONFIGS:
        imports = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        assert all(line.startswith("from psa_jax.training.config_schema import ") for line in imports), path.name
