"""Build fused_rnn's C++/CUDA extension ``fused_rnn._C``.

Install with ``pip install --no-build-isolation -e .`` (torch must already be installed: it is deliberately not a
build requirement, since build isolation would pull a second multi-GB torch into a temp env).

Switches:
  FUSED_RNN_SKIP_CUDA_BUILD=1   build the CPU part only (fast iteration)
  FUSED_RNN_CUDA_ARCHS          GPU architectures to compile: a list ("80;90a", "8.0 9.0a", "sm_80,sm_120+PTX"),
                                "dist" (the distributable list below) or "native" (the visible GPUs); wins over
  TORCH_CUDA_ARCH_LIST          which is honoured otherwise. With neither set: the visible GPUs (9.0 built as 9.0a);
                                with no GPU visible, the distributable list: sm_80, 86, 89, 90a, plus 100 and 120
                                where this nvcc has them, plus PTX of the newest (`make test` pins 9.0a instead)
  MAX_JOBS                      parallel compile jobs
  DEBUG=1                       -O0 -g
"""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - a clear message instead of a traceback
    sys.exit(
        "fused_rnn needs PyTorch installed first, and pip's --no-build-isolation: it compiles against the torch you\n"
        "have, so torch is not a build requirement on purpose (an isolated build would download a second, multi-GB\n"
        "torch and compile against that one). Run:\n"
        "  pip install torch                      # if it is not installed yet\n"
        "  pip install --no-build-isolation .     # or -e . for development, or the sdist file instead of ."
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


# ---- CUDA architectures (issue #20) --------------------------------------------------------------------------------
# The distributable list: A100/A30 (8.0), A10/RTX 30 (8.6), L4/L40/RTX 40 (8.9), H100/H200 (9.0a: sm_90a, which the
# Hopper-only features need), then B200 (10.0) and RTX 50 / RTX PRO Blackwell (12.0) where this nvcc knows them, with
# PTX of the newest plain arch so later GPUs can JIT it. ~38 s per .cu file per arch on a 2-core machine, so CI pins
# one arch (`make test`: 9.0a) and compiles sm_80 in a separate, timed step (.ci/run).
DIST_ARCHS = ("8.0", "8.6", "8.9", "9.0a")
NEWER_ARCHS = ("10.0", "12.0")


def _nvcc_archs() -> set[str]:
    """compute capabilities this nvcc can compile ("80", "90", "100", ...); empty when it cannot say."""
    import re
    import subprocess

    nvcc = shutil.which("nvcc") or os.path.join(_find_cuda_home() or "/usr/local/cuda", "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
    except Exception:
        return set()
    return set(re.findall(r"compute_(\d+)", out))


def _dist_arch_list() -> str:
    have = _nvcc_archs()
    archs = list(DIST_ARCHS) + [a for a in NEWER_ARCHS if a.replace(".", "") in have]
    plain = [a for a in archs if not a.endswith("a")]
    archs[archs.index(plain[-1])] += "+PTX"  # PTX of an arch-specific target (9.0a) would not run elsewhere
    return ";".join(archs)


def _native_arch_list() -> str:
    """The visible GPUs' archs (cc 9.0 as 9.0a), or "" when none is visible."""
    try:
        if not torch.cuda.is_available():
            return ""
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    except Exception:
        return ""
    return ";".join(f"{ma}.{mi}" + ("a" if (ma, mi) == (9, 0) else "") for ma, mi in caps)


def _normalize_archs(spec: str) -> str:
    """'80;90a' / '8.0 9.0a' / 'sm_80,sm_120+PTX' -> '8.0;9.0a;12.0+PTX' (TORCH_CUDA_ARCH_LIST syntax)."""
    import re

    out = []
    for tok in re.split(r"[;, ]+", spec.strip()):
        if not tok:
            continue
        m = re.fullmatch(r"(?:sm_|compute_)?(\d+)(?:\.(\d))?(a?)(\+ptx)?", tok, flags=re.IGNORECASE)
        if not m:
            sys.exit(f"FUSED_RNN_CUDA_ARCHS: cannot read {tok!r} (examples: 80;90a, 8.0 9.0a, sm_120+PTX)")
        major, minor = (m.group(1), m.group(2)) if m.group(2) is not None else (m.group(1)[:-1], m.group(1)[-1])
        out.append(f"{major}.{minor}{m.group(3).lower()}" + ("+PTX" if m.group(4) else ""))
    return ";".join(out)


def cuda_arch_list() -> tuple[str, str]:
    """(TORCH_CUDA_ARCH_LIST value, where it came from)."""
    spec = os.environ.get("FUSED_RNN_CUDA_ARCHS", "").strip()
    if spec in ("dist", "all"):
        return _dist_arch_list(), f"FUSED_RNN_CUDA_ARCHS={spec}"
    if spec == "native":
        native = _native_arch_list()
        if not native:
            sys.exit("FUSED_RNN_CUDA_ARCHS=native: no GPU is visible")
        return native, "FUSED_RNN_CUDA_ARCHS=native"
    if spec:
        return _normalize_archs(spec), "FUSED_RNN_CUDA_ARCHS"
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"], "TORCH_CUDA_ARCH_LIST"
    native = _native_arch_list()
    if native:
        return native, "the visible GPUs"
    return _dist_arch_list(), "no GPU visible: the distributable list"


def _arch_macros(archs: str) -> list[tuple[str, str]]:
    """csrc/cuda/arch.h: the list as -DFUSED_RNN_BUILT_ARCHS=8.0:9.0a (':' since nvcc splits -D at commas)."""
    toks = [t for t in archs.replace(" ", ";").split(";") if t]
    macros = [("FUSED_RNN_BUILT_ARCHS", ":".join(toks))]
    if any(t.removesuffix("+PTX") == "9.0a" for t in toks):
        macros.append(("FUSED_RNN_BUILT_SM90A", "1"))
    return macros


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
        # Always an explicit list (ENV.md fact 3: with no GPU visible torch's own detection dies with IndexError).
        archs, why = cuda_arch_list()
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        print(f"[fused_rnn] CUDA archs: {archs} ({why})", file=sys.stderr)
        define_macros += _arch_macros(archs)
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


# ---- version, build record, metadata -------------------------------------------------------------------------------


def _read_version() -> str:
    """fused_rnn/_version.py, read as text: importing the package would import torch and load the extension."""
    with open(os.path.join(ROOT, "fused_rnn", "_version.py"), encoding="utf-8") as f:
        m = re.search(r'^__version__\s*=\s*"([^"]+)"', f.read(), re.M)
    if not m:
        raise RuntimeError("fused_rnn/_version.py must hold a line __version__ = \"X.Y.Z\"")
    return m.group(1)


def _cuda_archs(ext) -> list[str]:
    """The targets nvcc compiles ``ext`` for: ["sm_90", "compute_90", ...] (sm_* = SASS, compute_* = PTX)."""
    args = ext.extra_compile_args.get("nvcc", []) if isinstance(ext.extra_compile_args, dict) else []
    try:  # what BuildExtension adds when the flags name no arch (it reads TORCH_CUDA_ARCH_LIST)
        args = list(args) + cpp_extension._get_cuda_arch_flags(list(args))
    except Exception:  # a torch without this private helper: the explicit flags alone
        pass
    out: set[str] = set()
    for a in args:  # -gencode=arch=compute_90a,code=sm_90a | -gencode arch=...,code=[sm_90,compute_90] | -arch=sm_90
        for m in re.finditer(r"(?:^|,)code=\[?([\w,]+)\]?|^--?arch=(\w+)", a):
            out.update(t for t in (m.group(1) or m.group(2)).split(",") if t)
    return sorted(out, key=lambda t: (not t.startswith("sm_"), int(re.sub(r"\D", "", t) or 0), t))


def _nvcc_version() -> str | None:
    home = cpp_extension.CUDA_HOME or _find_cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    try:
        text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except Exception:
        return None
    m = re.search(r"release ([\d.]+)", text)
    return m.group(1) if m else None


class BuildExtWithInfo(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension, then ``fused_rnn/_build_info.json`` beside the built ``_C`` module.

    It records the torch the binary is tied to (``fused_rnn._ext`` refuses to load it into another torch and names
    both versions) and what was compiled in (shown by ``python -m fused_rnn``). Written next to the module wherever
    it lands -- build/lib for a wheel, the source tree for ``-e`` or ``build_ext --inplace`` -- so each copy of
    ``_C`` carries its own record; never committed, never in the sdist (MANIFEST.in).
    """

    def run(self) -> None:
        super().run()
        for ext in self.extensions:
            if ext.name == "fused_rnn._C":
                path = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_build_info.json")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(self._build_info(ext), f, indent=1, sort_keys=True)
                    f.write("\n")

    def get_outputs(self) -> list[str]:
        out = list(super().get_outputs())
        for ext in self.extensions:
            if ext.name == "fused_rnn._C":
                out.append(os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_build_info.json"))
        return out

    @staticmethod
    def _build_info(ext) -> dict:
        with_cuda = any(s.endswith(".cu") for s in ext.sources)
        return {
            "fused_rnn_version": _read_version(),
            "torch_version": torch.__version__,
            "torch_cuda_version": torch.version.cuda,
            "python_version": platform.python_version(),
            "with_cuda": with_cuda,
            "cuda_archs": _cuda_archs(ext) if with_cuda else [],
            "nvcc_version": _nvcc_version() if with_cuda else None,
            "debug": DEBUG,
            "fast_math": os.environ.get("FUSED_RNN_FAST_MATH") == "1",
        }


def _long_description() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


setup(
    name="fused_rnn",
    version=_read_version(),
    description="Fused Elman RNN (tanh/relu) for PyTorch: CUDA C++, Triton and C++ CPU kernels behind a drop-in nn.RNN",
    long_description=_long_description(),
    long_description_content_type="text/markdown",
    author="the fused_rnn authors",
    license="MIT",  # (setuptools >= 77 deprecates license classifiers; this field works with every version)
    license_files=["LICENSE"],
    # PLACEHOLDER URLs: there is no public repository yet (.invalid never resolves). Replace before publishing.
    url="https://fused-rnn.invalid/",
    project_urls={
        "Source": "https://fused-rnn.invalid/source",
        "Issues": "https://fused-rnn.invalid/issues",
        "Documentation": "https://fused-rnn.invalid/docs/design.md",
    },
    keywords=["pytorch", "rnn", "elman", "cuda", "triton", "recurrent neural network"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Environment :: GPU :: NVIDIA CUDA",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Programming Language :: C++",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Software Development :: Libraries :: Python Modules",
    ],
    packages=find_packages(include=["fused_rnn", "fused_rnn.*"]),
    python_requires=">=3.10",
    # A runtime requirement only (never a build one: see pyproject.toml). A built wheel still needs the very torch
    # it was compiled against; fused_rnn._ext checks that at import.
    install_requires=["torch>=2.11"],
    ext_modules=[build_extension()],
    cmdclass={"build_ext": BuildExtWithInfo},
)
