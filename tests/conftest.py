"""Test configuration. Device count and log levels must be set before JAX/TF are imported."""
import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import pathlib  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Programs compiled by one test (or one xdist worker) are reused by the others through JAX's
# persistent compilation cache; one directory per test run (xdist workers share its run id).
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
_CACHE = os.environ.get("PSA_JAX_TEST_XLA_CACHE") or (
    os.path.join(tempfile.gettempdir(), f"psa_jax_xla_cache_{_RUN}") if _RUN else
    tempfile.mkdtemp(prefix="psa_jax_xla_cache_"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

REPO = pathlib.Path(__file__).resolve().parents[1]
# 4 real COCO val2017 images with their person keypoint annotations and detector boxes, in COCO's
# own layout (provenance and licences in tests/data/coco_sample/README.md), kept in the repository
# so that the suite runs from any clean checkout.
COCO_SAMPLE = REPO / "tests" / "data" / "coco_sample"


@pytest.fixture(scope="session")
def coco_sample_dir() -> pathlib.Path:
    """The 4-image COCO val2017 sample in COCO's own layout (read-only)."""
    if not COCO_SAMPLE.is_dir():
        pytest.fail(f"COCO sample not found at {COCO_SAMPLE}; it is part of the repository (tests/data/)")
    return COCO_SAMPLE


@pytest.fixture(scope="session")
def tiny_hrnet():
    """Registers 'w8_tiny' (one block per branch, widths 8-64; tests/tiny_net.py) for the session
    and returns its spec: the production networks and loop with a train step that compiles in seconds."""
    from psa_jax.models.hrnet import HRNET_SPECS
    from tiny_net import register_tiny_hrnet

    yield register_tiny_hrnet()
    HRNET_SPECS.pop("w8_tiny", None)

