"""``python -m pqgan_kernels``: which backends this machine can run, and why not the others."""
import torch

from . import backend_info

print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
for name, status in backend_info().items():
    print(f"  {name:10s} {status}")
