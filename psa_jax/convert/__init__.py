"""Converting PyTorch checkpoints (official PSA, NVIDIA semantic-segmentation, HRNet) to psa_jax."""

from psa_jax.convert.from_torch import ConversionError, ConversionReport, from_torch
from psa_jax.convert.torch_names import torch_parameter_map

__all__ = ["from_torch", "ConversionError", "ConversionReport", "torch_parameter_map"]
