"""Command-line tools, each run as `python -m psa_jax.tools.<name> --help`."""
