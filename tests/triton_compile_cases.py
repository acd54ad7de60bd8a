"""Compile every Triton kernel variant of the triton backend for sm_90 (H100/H200) on a machine without a GPU.

Run as a script in a process WITHOUT ``TRITON_INTERPRET`` (``@triton.jit`` fixes the mode at import):

    python tests/triton_compile_cases.py [--ptxas] [--json OUT]

Each variant goes through ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` -- the same
front end, optimizer and ptxas as a real launch -- so a GPU-only compile error shows up here. The variant set covers
every kernel x storage dtype (fp32 both as IEEE and TF32), and every value of every constexpr at least once per
kernel (nonlinearity, lengths, reverse, interpreter branch). ``--ptxas`` adds ``ptxas -v`` figures (registers,
spill bytes, triton's shared memory) for the resident kernels at H = 64, 128, 256. Exit status 0 iff all compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("triton_compile_cases.py must run without TRITON_INTERPRET=1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fused_rnn.backends import triton as TB  # noqa: E402
from fused_rnn.backends import triton_kernels as K  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


@dataclass
class Variant:
    kernel: str
    dtype: str  # torch dtype name of the storage dtype
    constexprs: dict
    num_warps: int = 4
    cooperative: bool = False
    result: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        cx = ",".join(f"{k}={v}" for k, v in self.constexprs.items()
                      if (k != "INTERP" or v) and not (k.endswith("_HOST") and v == 0))
        return f"{self.kernel}[{self.dtype},{cx},warps={self.num_warps}]"


# argument kinds per kernel: "s" = storage-dtype pointer, "a" = accumulator-dtype pointer, "l" = int64 pointer,
# "c" = int32 pointer (barrier counter), "i" = int32 scalar
_ARGS = {
    "elman_fwd_resident_kernel": "P:s H0:s W:s LEN:l Y:s HN:s T:i B:i H:i",
    "elman_bwd_resident_kernel": "DY:s DHN:s Y:s W:s LEN:l DA:s DH0:s T:i B:i H:i",
    "elman_fwd_step_kernel": "P:s W:s LEN:l HPREV:s HNEXT:s Y:s t:i B:i H:i",
    "elman_bwd_step_kernel": "DY:s Y:s W:s LEN:l CPREV:a CNEXT:a DA:s t:i B:i H:i",
    "elman_fwd_coop_kernel": "P:s W:s LEN:l HBUF:s Y:s SYNC:c T:i B:i H:i",
    "elman_bwd_coop_kernel": "DY:s Y:s W:s LEN:l CBUF:a DA:s SYNC:c T:i B:i H:i",
}


def signature(kernel: str, dtype: str, constexprs: dict) -> dict:
    s = DTYPES[dtype]
    a = "fp64" if dtype == "float64" else "fp32"
    kinds = {"s": f"*{s}", "a": f"*{a}", "l": "*i64", "c": "*i32", "i": "i32"}
    sig = {}
    for item in _ARGS[kernel].split():
        name, kind = item.split(":")
        sig[name] = kinds[kind]
    for name in constexprs:
        sig[name] = "constexpr"
    return sig


def resident_sizes(dtype: str, prec: str, ptxas: bool) -> list[int]:
    """BLOCK_H values compiled for the resident kernels: 64/128/256 for the ptxas table; else 32 and the limit."""
    if ptxas:
        return [64, 128, 256]
    limit = TB.resident_max_h(getattr(torch, dtype), prec == "tf32")
    return sorted({32, limit})


def variants(ptxas: bool = False) -> list[Variant]:
    out: list[Variant] = []
    flags = [(False, False, 0), (True, True, 1), (True, False, 0), (False, True, 1)]  # (HAS_LEN, REVERSE, NONLIN)
    precs = {"float32": ["ieee", "tf32"], "float16": ["ieee"], "bfloat16": ["ieee"], "float64": ["ieee"]}
    i = 0
    for dtype in DTYPES:
        for prec in precs[dtype]:
            has_len, rev, nl = flags[i % len(flags)]
            i += 1
            for H in resident_sizes(dtype, prec, ptxas):
                warps = TB.resident_num_warps(H)
                for kern in ("elman_fwd_resident_kernel", "elman_bwd_resident_kernel"):
                    cx = dict(HAS_LEN=has_len, REVERSE=rev, NONLIN=nl, DOT_PREC=prec, INTERP=False,
                              BLOCK_B=16, BLOCK_H=H, T_HOST=0)
                    out.append(Variant(kern, dtype, cx, warps))
            for kern in ("elman_fwd_step_kernel", "elman_bwd_step_kernel"):
                cx = dict(HAS_LEN=has_len, NONLIN=nl, DOT_PREC=prec, INTERP=False, BLOCK_B=16, BLOCK_N=64,
                          BLOCK_K=64, H_HOST=0)
                out.append(Variant(kern, dtype, cx))
                cx = dict(cx, HAS_LEN=not has_len, NONLIN=1 - nl, BLOCK_B=64, BLOCK_N=16, BLOCK_K=16)
                out.append(Variant(kern, dtype, cx))
            for kern in ("elman_fwd_coop_kernel", "elman_bwd_coop_kernel"):
                for bn in (16, 128):
                    cx = dict(HAS_LEN=has_len, REVERSE=rev, NONLIN=nl, DOT_PREC=prec, INTERP=False, N_TILES=8,
                              BLOCK_B=16, BLOCK_N=bn, BLOCK_K=64, T_HOST=0, H_HOST=0)
                    out.append(Variant(kern, dtype, cx, cooperative=True))
                    has_len, rev, nl = not has_len, not rev, 1 - nl
    # triton passes an int argument equal to 1 as a constexpr: B = H = T = 1 must compile too (no `.to` on them)
    base = dict(HAS_LEN=True, NONLIN=0, DOT_PREC="ieee", INTERP=False)
    for kern in ("elman_fwd_resident_kernel", "elman_bwd_resident_kernel"):
        out.append(Variant(kern, "float32", dict(base, REVERSE=True, BLOCK_B=16, BLOCK_H=16, T_HOST=0, T=1, B=1, H=1)))
    for kern in ("elman_fwd_step_kernel", "elman_bwd_step_kernel"):
        out.append(Variant(kern, "float32", dict(base, BLOCK_B=16, BLOCK_N=16, BLOCK_K=16, H_HOST=0, B=1, H=1)))
    for kern in ("elman_fwd_coop_kernel", "elman_bwd_coop_kernel"):
        out.append(Variant(kern, "float32", dict(base, REVERSE=False, N_TILES=1, BLOCK_B=16, BLOCK_N=16,
                                                 BLOCK_K=16, T_HOST=0, H_HOST=0, T=1, B=1, H=1), cooperative=True))
    # the interpreter branch compiled once for the GPU too (it is plain triton; the constexpr must not break it)
    out.append(Variant("elman_fwd_resident_kernel", "float32",
                       dict(HAS_LEN=True, REVERSE=False, NONLIN=0, DOT_PREC="ieee", INTERP=True, BLOCK_B=16,
                            BLOCK_H=32, T_HOST=5)))
    out.append(Variant("elman_bwd_step_kernel", "bfloat16",
                       dict(HAS_LEN=False, NONLIN=1, DOT_PREC="ieee", INTERP=True, BLOCK_B=16, BLOCK_N=16, BLOCK_K=16,
                            H_HOST=20)))
    return out


def _ptxas_path() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def ptxas_figures(ptx: str) -> dict:
    """Registers and spill bytes from ``ptxas -arch=sm_90a -v`` of this PTX."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        r = subprocess.run([_ptxas_path(), "-arch=sm_90a", "-v", path, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True, timeout=300)
    text = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", text)
    st = re.search(r"(\d+) bytes spill stores", text)
    ld = re.search(r"(\d+) bytes spill loads", text)
    return {"regs": int(regs.group(1)) if regs else None, "spill_stores": int(st.group(1)) if st else None,
            "spill_loads": int(ld.group(1)) if ld else None}


def compile_variant(v: Variant, want_ptxas: bool) -> None:
    fn = getattr(K, v.kernel)
    src = ASTSource(fn=fn, signature=signature(v.kernel, v.dtype, v.constexprs), constexprs=dict(v.constexprs))
    options = {"num_warps": v.num_warps}
    if v.cooperative:
        options["launch_cooperative_grid"] = True
    t0 = time.perf_counter()
    try:
        ck = triton.compile(src, target=TARGET, options=options)
    except Exception as e:  # report every failure, keep going
        v.result = {"ok": False, "error": f"{type(e).__name__}: {str(e)[-2000:]}"}
        return
    v.result = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), "shared": ck.metadata.shared}
    if want_ptxas and "resident" in v.kernel:
        v.result.update(ptxas_figures(ck.asm["ptx"]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ptxas", action="store_true", help="ptxas -v figures for the resident kernels")
    ap.add_argument("--json", default="", help="write the per-variant results here")
    ap.add_argument("--only", default="", help="substring filter on the variant name")
    args = ap.parse_args()
    vs = [v for v in variants(args.ptxas) if args.only in v.name]
    failed = 0
    for v in vs:
        compile_variant(v, args.ptxas)
        if not v.result["ok"]:
            failed += 1
            print(f"FAIL {v.name}: {v.result['error']}", flush=True)
        else:
            extra = {k: v.result[k] for k in ("shared", "regs", "spill_stores", "spill_loads") if k in v.result}
            print(f"ok   {v.name} {v.result['seconds']}s {extra}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"name": v.name, **v.result} for v in vs], f, indent=1)
    print(f"{len(vs) - failed}/{len(vs)} variants compiled for sm_90", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
