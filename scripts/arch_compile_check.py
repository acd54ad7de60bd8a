"""Compile every CUDA source of the extension for one or more GPU architectures, compile only (no link, no GPU).

Why (issue #20): `make test` builds one arch (sm_90a) to keep CI short, while a distributable build compiles for
sm_80 ... sm_120. This proves, on every CI run, that the architecture guards hold -- clusters and distributed shared
memory only under `__CUDA_ARCH__ >= 900`, sm_90a-only features only under `__CUDA_ARCH_FEAT_SM90_ALL`
(csrc/cuda/arch.h) -- and that `persistent` and `fallback` compile for an older arch. `.ci/run` runs it for sm_80
(about 80 s on 2 cores) and prints the time.

    python scripts/arch_compile_check.py [--arch 8.0 [--arch 12.0 ...]] [--jobs N] [FILE.cu ...]

The flags are the build's own: setup.py is executed with `setuptools.setup` captured (nothing is built), and its
extension's include directories, macros and nvcc flags are reused, plus torch's common nvcc flags and C++ standard.
Exit status 0 iff every file compiled for every arch; each compile's time is printed.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import runpy
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_extension():
    """The Extension setup.py would build (CUDA part included), without building it."""
    import setuptools

    captured: dict = {}
    real = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)  # setup.py does `from setuptools import setup`
    old_argv, old_cwd = sys.argv, os.getcwd()
    try:
        sys.argv = ["setup.py", "--name"]
        os.chdir(ROOT)
        runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = real
        sys.argv = old_argv
        os.chdir(old_cwd)
    exts = captured.get("ext_modules") or []
    if not exts:
        raise SystemExit("setup.py defined no extension")
    return exts[0]


def _cxx_std() -> str:
    """The C++ standard torch's BuildExtension passes to nvcc (c++20 from torch 2.13, c++17 before)."""
    from torch.utils import cpp_extension

    src = open(cpp_extension.__file__, encoding="utf-8").read()
    m = re.search(r"'-std=(c\+\+\d+)'", src)
    return m.group(1) if m else "c++17"


def _gencode(arch: str) -> list[str]:
    """'8.0' -> sm_80 SASS; '9.0a' -> sm_90a; '12.0+PTX' -> sm_120 SASS and compute_120 PTX."""
    ptx = arch.endswith("+PTX")
    a = arch.removesuffix("+PTX").replace(".", "")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}"]
    if ptx:
        flags.append(f"-gencode=arch=compute_{a},code=compute_{a}")
    return flags


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", default=None, help="TORCH_CUDA_ARCH_LIST-style arch (default 8.0)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--keep", default=None, help="directory for the objects (default: a temporary one)")
    ap.add_argument("files", nargs="*", help="sources (default: csrc/cuda/*.cu)")
    args = ap.parse_args()
    archs = args.arch or ["8.0"]

    from torch.utils import cpp_extension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")  # setup.py's own arch choice is irrelevant here
    ext = _setup_extension()
    nvcc_flags = ext.extra_compile_args.get("nvcc", []) if isinstance(ext.extra_compile_args, dict) else []
    if not nvcc_flags:
        print("setup.py builds no CUDA part here (no CUDA torch or no nvcc): nothing to check")
        return 0
    nvcc = os.path.join(cpp_extension.CUDA_HOME or "/usr/local/cuda", "bin", "nvcc")
    incs = list(ext.include_dirs) + cpp_extension.include_paths() + [
        os.path.join(cpp_extension.CUDA_HOME or "/usr/local/cuda", "include")]
    defs = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in ext.define_macros]
    # the arch list actually compiled here, in the build's own spelling (csrc/cuda/arch.h)
    defs = [d for d in defs if not d.startswith(("-DFUSED_RNN_BUILT_ARCHS", "-DFUSED_RNN_BUILT_SM90A"))]
    defs.append("-DFUSED_RNN_BUILT_ARCHS=" + ":".join(archs))
    if any(a.startswith("9.0a") for a in archs):
        defs.append("-DFUSED_RNN_BUILT_SM90A=1")
    files = args.files or sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    out = args.keep or tempfile.mkdtemp(prefix="arch_check_")
    os.makedirs(out, exist_ok=True)
    gencode = [g for a in archs for g in _gencode(a)]

    def compile_one(src: str) -> tuple[str, int, float, str]:
        obj = os.path.join(out, os.path.basename(src) + ".o")
        cmd = ([nvcc, "-c", src, "-o", obj] + ["-I" + i for i in incs] + defs + cpp_extension.COMMON_NVCC_FLAGS
               + nvcc_flags + ["-std=" + _cxx_std(), "--compiler-options", "-fPIC"] + gencode)
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True)
        return src, r.returncode, time.time() - t0, (r.stdout + r.stderr) if r.returncode else shlex.join(cmd)

    t0 = time.time()
    bad = 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for src, rc, dt, log in pool.map(compile_one, files):
            name = os.path.relpath(src, ROOT)
            print(f"{'ok  ' if rc == 0 else 'FAIL'} {name} for {','.join(archs)}: {dt:.1f} s", flush=True)
            if rc:
                bad += 1
                print(log[-6000:])
    print(f"{len(files) - bad}/{len(files)} files compiled for {','.join(archs)} in {time.time() - t0:.1f} s "
          f"({args.jobs} jobs)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
