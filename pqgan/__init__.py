"""pqgan: the ProductQuantizer layer and the PQGAN model built on the fused kernels of ``pqgan_kernels``."""
from .packing import bits_per_code, pack_indices, unpack_indices
from .quantizer import ProductQuantizer, QuantizerOutput, QuantizerStats
from .config import Config, LossConfig, ModelConfig, TrainConfig, apply_overrides, load_config
from .model import PQGAN
from .checkpoint import load_pretrained

__all__ = ["ProductQuantizer", "QuantizerOutput", "QuantizerStats", "bits_per_code", "pack_indices",
           "unpack_indices", "Config", "LossConfig", "ModelConfig", "TrainConfig", "apply_overrides",
           "load_config", "PQGAN", "load_pretrained", "load_official"]


def __getattr__(name):
    # imported on first use, so ``python -m pqgan.official`` (the pqgan-convert CLI) runs without a double import
    if name == "load_official":
        from .official import load_official
        return load_official
    raise AttributeError(f"module 'pqgan' has no attribute {name!r}")
