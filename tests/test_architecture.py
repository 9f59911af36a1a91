"""The package's rooms (docs/architecture.md): imports point one way, and the light install holds.

The import direction is checked by import-linter's contracts in pyproject.toml
(`[tool.importlinter]`), the same check a contributor runs with `lint-imports`.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LINT_IMPORTS = pathlib.Path(sys.executable).with_name("lint-imports")

# What `pip install psa-jax` (without the `train` extra) does not bring. (flax itself imports
# optax, etils and absl, so those come with the core install.)
HEAVY = ("tensorflow", "tensorflow_datasets", "grain", "cv2", "pycocotools", "orbax", "matplotlib", "torch",
         "ml_collections", "tqdm", "array_record")


def _lint(root: pathlib.Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} not found: install the test extra (requirements-test.txt has import-linter)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_imports_follow_the_stated_direction():
    out = _lint(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """A copy of the package with layers importing training must fail the same check."""
    shutil.copytree(REPO / "psa_jax", tmp_path / "psa_jax", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    resize = tmp_path / "psa_jax" / "layers" / "resize.py"
    resize.write_text(resize.read_text() + "\nfrom psa_jax.training import optimizers  # noqa: E402,F401\n")
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "psa_jax.layers.resize -> psa_jax.training.optimizers" in out.stdout


def test_layers_and_models_load_no_training_or_data_stack():
    code = ("import sys, psa_jax.layers, psa_jax.models; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == []


def test_layers_and_models_never_ask_for_the_default_backend():
    """The program a layer builds depends on its options, not on where JAX would run by default."""
    offenders = [str(p.relative_to(REPO)) for room in ("layers", "models")
                 for p in (REPO / "psa_jax" / room).rglob("*.py") if "default_backend" in p.read_text()]
    assert offenders == []
