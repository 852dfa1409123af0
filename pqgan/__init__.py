"""pqgan: the ProductQuantizer layer and the PQGAN model built on the fused kernels of ``pqgan_kernels``."""
from .packing import bits_per_code, pack_indices, unpack_indices
from .quantizer import ProductQuantizer, QuantizerOutput, QuantizerStats

__all__ = ["ProductQuantizer", "QuantizerOutput", "QuantizerStats", "bits_per_code", "pack_indices",
           "unpack_indices"]
