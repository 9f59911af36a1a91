"""The top-level package: lazy exports of what importers use."""

import subprocess
import sys

import pytest

import psa_jax


def test_every_export_resolves_to_the_subpackage_object():
    import psa_jax.convert
    import psa_jax.layers
    import psa_jax.models
    for name in psa_jax.__all__:
        value = getattr(psa_jax, name)
        if name == "__version__":
            assert value.count(".") == 2
            continue
        home = {"psa_jax.layers": psa_jax.layers, "psa_jax.models": psa_jax.models,
                "psa_jax.convert": psa_jax.convert}[psa_jax._EXPORTS[name]]
        assert value is getattr(home, name), name
    assert set(psa_jax._EXPORTS) <= set(dir(psa_jax))


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'PSA_x'"):
        psa_jax.PSA_x  # noqa: B018


def test_importing_the_package_does_not_import_jax():
    code = "import sys, psa_jax; print('jax' in sys.modules, 'flax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_exported_psa_block_runs():
    import jax.numpy as jnp
    from flax import nnx
    psa = psa_jax.PSA_p(8, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 3, 5, 8))
    assert psa(x).shape == (1, 3, 5, 8)
