"""Build fused_rnn's C++/CUDA extension ``fused_rnn._C``.

Install with ``pip install --no-build-isolation -e .`` (torch must already be installed: it is deliberately not a
build requirement, since build isolation would pull a second multi-GB torch into a temp env).

Switches:
  FUSED_RNN_SKIP_CUDA_BUILD=1   build the CPU part only (fast iteration)
  TORCH_CUDA_ARCH_LIST          honoured; defaults to 9.0 (H100/H200) when no GPU is visible
  MAX_JOBS                      parallel compile jobs
  DEBUG=1                       -O0 -g
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - a clear message instead of a traceback
    sys.exit(
        "fused_rnn needs PyTorch installed first (it is not a build requirement on purpose).\n"
        "  pip install torch && pip install --no-build-isolation -e ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("DEBUG", "0") == "1"


def _find_cuda_home() -> str | None:
    """ENV.md fact 1: torch guesses CUDA_HOME from nvcc's folder; a wrapper script makes that one level too high."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates += [os.path.dirname(os.path.dirname(real)), os.path.dirname(os.path.dirname(nvcc))]
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if os.path.exists(os.path.join(c, "include", "cuda_runtime.h")):
            return c
    return None


def _want_cuda() -> bool:
    """Build CUDA when torch has CUDA and nvcc exists -- never decided by torch.cuda.is_available() (false on CI)."""
    if os.environ.get("FUSED_RNN_SKIP_CUDA_BUILD", "0") == "1":
        return False
    if torch.version.cuda is None:
        return False
    return shutil.which("nvcc") is not None or _find_cuda_home() is not None


def _nvidia_wheel_includes() -> list[str]:
    """ENV.md fact 2: cublas/cusparse headers come from the nvidia wheels torch depends on."""
    out = []
    for sp in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cublas/include", "nvidia/cusparse/include"):
            p = os.path.join(sp, sub)
            if os.path.isdir(p) and p not in out:
                out.append(p)
    return out


def build_extension():
    cxx_flags = ["-O0", "-g"] if DEBUG else ["-O3"]
    cxx_flags += ["-fopenmp"]  # the C++ standard is torch's own choice (C++20 from torch 2.13)
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp"))) + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    define_macros: list[tuple[str, str]] = []
    extra_link = ["-fopenmp"]
    if _want_cuda():
        cuda_home = _find_cuda_home()
        if cuda_home:
            os.environ["CUDA_HOME"] = cuda_home
            cpp_extension.CUDA_HOME = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            # ENV.md fact 3: with no GPU visible torch's arch detection dies with IndexError.
            visible = False
            try:
                visible = torch.cuda.is_available()
            except Exception:
                visible = False
            if not visible:
                os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        cu_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))) + sorted(
            glob.glob(os.path.join("csrc", "cuda", "*.cpp"))
        )
        nvcc_flags = (["-O0", "-g", "-lineinfo"] if DEBUG else ["-O3", "-lineinfo"]) + [
            "--use_fast_math" if os.environ.get("FUSED_RNN_FAST_MATH") == "1" else "-DFUSED_RNN_IEEE",
            "--expt-relaxed-constexpr",
            "-U__CUDA_NO_HALF_OPERATORS__",
            "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_OPERATORS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        ]
        threads = os.environ.get("NVCC_THREADS")
        if threads:
            nvcc_flags.append(f"--threads={threads}")
        define_macros.append(("FUSED_RNN_WITH_CUDA", "1"))
        return cpp_extension.CUDAExtension(
            name="fused_rnn._C",
            sources=sources + cu_sources,
            include_dirs=[os.path.join(ROOT, "csrc")] + _nvidia_wheel_includes(),
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags + ["-DFUSED_RNN_WITH_CUDA"], "nvcc": nvcc_flags},
            extra_link_args=extra_link,
        )
    return cpp_extension.CppExtension(
        name="fused_rnn._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=extra_link,
    )


setup(
    name="fused_rnn",
    version="0.1.0",
    description="Fused Elman RNN (tanh/relu) for PyTorch: CUDA C++, Triton and C++ CPU kernels behind a drop-in nn.RNN",
    packages=find_packages(include=["fused_rnn", "fused_rnn.*"]),
    python_requires=">=3.10",
    ext_modules=[build_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
