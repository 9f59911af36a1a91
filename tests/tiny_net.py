"""The 'w8_tiny' HRNet used by the tests: one block per branch, widths 8-64, so that the
production networks and loop have a train step that compiles in seconds."""


def register_tiny_hrnet():
    """Adds 'w8_tiny' to the HRNet spec registry and returns its spec."""
    from psa_jax.models.hrnet import HRNET_SPECS, HRNetSpec, StageSpec

    spec = HRNetSpec("w8_tiny", 1, 16, (StageSpec(1, (1, 1), (8, 16)), StageSpec(1, (1, 1, 1), (8, 16, 32)),
                                        StageSpec(1, (1, 1, 1, 1), (8, 16, 32, 64))))
    HRNET_SPECS["w8_tiny"] = spec
    return spec
