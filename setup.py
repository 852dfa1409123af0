"""Build and install pqgan (the layer and model) and pqgan_kernels (kernels, with the compiled pqgan_kernels._C).

The C++ CPU sources (csrc/*.cpp: the module and every op schema in csrc/ops.cpp; csrc/cpu/*.cpp: one file per op)
are always compiled, with OpenMP. The CUDA sources (csrc/cuda/*.cu, one file per op) are compiled when torch has CUDA
and CUDA_HOME is set; PQGAN_BUILD_CUDA=0|1 overrides that guess.
Install with:  pip install --no-build-isolation -e .
"""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_cuda() -> bool:
    flag = os.environ.get("PQGAN_BUILD_CUDA")
    if flag is not None:
        return flag == "1"
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    return torch.version.cuda is not None and bool(cuda_home) and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))


def extension():
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx = ["-O3", "-fopenmp"]
    if os.environ.get("PQGAN_NATIVE_ARCH", "0") == "1":
        cxx.append("-march=native")
    kwargs = dict(name="pqgan_kernels._C", include_dirs=[os.path.join(ROOT, "csrc")],
                  extra_link_args=["-fopenmp"], py_limited_api=False)
    if build_cuda():
        print("pqgan: building the CPU and CUDA kernels")
        return CUDAExtension(sources=sources + rel("csrc/cuda/*.cu"),
                             define_macros=[("PQGAN_WITH_CUDA", None)],
                             extra_compile_args={"cxx": cxx, "nvcc": ["-O3",
                                                                      "-lineinfo"]},
                             **kwargs)
    print("pqgan: building the CPU kernels only (set CUDA_HOME or PQGAN_BUILD_CUDA=1 for CUDA)")
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    name="pqgan",
    version="0.1.0",
    description="Fused product quantisation for image tokenizers, and the PQGAN model built on it",
    packages=find_packages(include=["pqgan", "pqgan.*", "pqgan_kernels", "pqgan_kernels.*"]),
    package_data={"pqgan": ["configs/*.yaml", "assets/*"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy", "safetensors", "tqdm", "pyyaml", "pillow"],
    extras_require={
        "test": ["pytest"],
        "metrics": ["lpips", "scikit-image"],
        "bench": ["matplotlib"],
        "diffusion": ["diffusers"],
    },
    entry_points={"console_scripts": ["pqgan-train=pqgan.train:main", "pqgan-eval=pqgan.evaluate:main",
                                    "pqgan-convert=pqgan.official:main"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
