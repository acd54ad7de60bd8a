"""``fused_rnn.show_config()`` / ``python -m fused_rnn``: the report to paste into a bug report.

Versions (fused_rnn, Python, torch, CUDA, cuDNN, Triton), how the extension was built (the torch it was built
against, the CUDA archs compiled in), which backends are available and why the others are not, the compiled CUDA
tiers, the GPU-verified list and its report, each visible device with its compute capability, and what ``auto``
picks there for a few sample shapes. Everything is gathered when asked for, never at import; on a CPU-only machine
it says why no GPU is listed. Each probe is guarded: a report that crashes is no report.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Callable
from typing import Any, TextIO

import torch

# (B, H, dtype) shapes for the "auto picks" section: one small-batch fp32 layer and one large bf16 layer, which
# land on different CUDA tiers.
SAMPLE_SHAPES: tuple[tuple[int, int, torch.dtype], ...] = ((16, 256, torch.float32), (64, 1024, torch.bfloat16))
SAMPLE_T = 128  # the sequence length of the sample calls (it matters only to autotuning's key)


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a probe that fails is reported, not raised
        return f"<error: {type(e).__name__}: {e}>"


def _dist_version(*names: str) -> str | None:
    """An installed distribution's version, read from its metadata (importing triton would cost ~1 s)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


# AMD's x86 family numbers (cpuid, as /proc/cpuinfo prints them in decimal) -> core generation. The model name of a
# cloud VM is often just "AMD EPYC", which let a Zen 5 (family 26) be written up as Zen 4 for three stops; the
# family and model say which it is. Family 25 holds both Zen 3 and Zen 4, told apart by model range.
_AMD_ZEN4_MODELS = (range(0x10, 0x20), range(0x60, 0x80), range(0xA0, 0xB0))
# Intel's family-6 server models (cpuid, decimal as /proc/cpuinfo prints them) -> core generation. Client models are
# too many to list; they stay unnamed (cpu_kind then says "Intel family 6 model N", which is still a distinct kind).
_INTEL_SERVER_MODELS = {85: "Skylake-SP/Cascade Lake", 106: "Ice Lake-SP", 108: "Ice Lake-SP",
                        143: "Sapphire Rapids", 207: "Emerald Rapids", 173: "Granite Rapids", 174: "Granite Rapids",
                        175: "Sierra Forest"}
# The flags that decide which CPU kernels and which of torch's kernels run (fused_rnn.policy.cpu_isa's classes and
# oneDNN's AMX/FP16 paths), recorded as found.
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
              "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


def _core_name(vendor: str | None, family: int | None, model: int | None) -> str | None:
    if family is None or model is None:
        return None
    if vendor == "AuthenticAMD":
        if family == 23:
            return "Zen/Zen+/Zen 2"
        if family == 25:
            return "Zen 4" if any(model in r for r in _AMD_ZEN4_MODELS) else "Zen 3"
        if family == 26:
            return "Zen 5"
    elif vendor == "GenuineIntel" and family == 6:
        return _INTEL_SERVER_MODELS.get(model)
    return None


def cpu_identity(cpuinfo: str) -> dict[str, Any]:
    """/proc/cpuinfo's text -> {vendor, family, model, stepping, model_name, core, flags} of its first CPU.

    ``core`` names the generation from the family and model (AMD's Zen generations, Intel's server cores; None where
    these tables do not know it); ``flags`` lists which of ``_CPU_FLAGS`` are present.
    """
    first = cpuinfo.split("\n\n", 1)[0]
    fields: dict[str, str] = {}
    for line in first.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields.setdefault(k.strip(), v.strip())

    def num(key: str) -> int | None:
        try:
            return int(fields[key])
        except (KeyError, ValueError):
            return None

    vendor, family, model = fields.get("vendor_id"), num("cpu family"), num("model")
    core = _core_name(vendor, family, model)
    present = set(fields.get("flags", "").split())
    return {"vendor": vendor, "family": family, "model": model, "stepping": num("stepping"),
            "model_name": fields.get("model name"), "core": core,
            "flags": [f for f in _CPU_FLAGS if f in present]}


def cpu_kind(ident: dict[str, Any] | None) -> str:
    """The core kind a CPU measurement holds for, from :func:`cpu_identity`: "AMD Zen 5", "Intel Emerald Rapids",
    "Intel family 6 model 183" where the generation is not named, "" where nothing is known (no /proc/cpuinfo).

    The same ISA class runs at different relative speeds on different cores (a Zen 5 has a 512-bit FMA datapath,
    Intel server cores two 512-bit FMA ports and other cache and oneDNN kernels), so `auto`'s measured tables are keyed
    by this as well as by the ISA class and the thread count (fused_rnn/policy.py, rule 4).
    """
    if not ident or not ident.get("vendor"):
        return ""
    vendor = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(ident["vendor"], ident["vendor"])
    # named from family and model, not from a recorded "core": a run recorded before a generation was named here
    # must give the same kind as the machine it ran on gives today
    core = _core_name(ident["vendor"], ident.get("family"), ident.get("model"))
    if core:
        return f"{vendor} {core}"
    if ident.get("family") is None:
        return vendor
    return f"{vendor} family {ident['family']} model {ident.get('model')}"


def read_cpu_identity() -> dict[str, Any] | None:
    """``cpu_identity`` of this machine's /proc/cpuinfo; None where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return cpu_identity(f.read())
    except OSError:
        return None


def _cpu() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    ident = read_cpu_identity()
    if ident is not None:
        model = ident["model_name"] or model
        flags = set(ident["flags"])
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                       "amx_bf16", "amx_int8", "amx_tile") if f in flags]
    out: dict[str, Any] = {"model": model, "isa": isa, "torch_threads": torch.get_num_threads()}
    from . import _ext

    if _ext.LOADED:
        out["fused_rnn_cpu_kernels"] = _guard(lambda: str(torch.ops.fused_rnn.cpu_isa()))
    return out


def _cudnn_version() -> str | None:
    """cuDNN's version as "9.13.0" (torch reports 91300; cuDNN 9 numbers it major*10000 + minor*100 + patch)."""
    v = torch.backends.cudnn.version()
    if v is None:
        return None
    return f"{v // 10000}.{v % 10000 // 100}.{v % 100}" if v >= 90000 else f"{v // 1000}.{v % 1000 // 100}.{v % 100}"


def _torch() -> dict[str, Any]:
    from . import precision

    cudnn = _guard(_cudnn_version) if torch.version.cuda else None
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "hip": getattr(torch.version, "hip", None),
        "triton": _dist_version("triton", "pytorch-triton"),
        "tf32_for_fp32_matmul": _guard(precision.allow_tf32),
    }


def _backends() -> list[dict[str, Any]]:
    from .backends import select

    out = []
    for name in select.BACKEND_NAMES:
        try:
            ok, why = select.backend_module(name).available()
        except Exception as e:  # noqa: BLE001 - e.g. triton missing: the backend module does not import
            ok, why = False, f"{type(e).__name__}: {e}"
        out.append({"name": name, "available": bool(ok), "why_not": "" if ok else why})
    return out


def _devices() -> dict[str, Any]:
    """Each visible CUDA device with its compute capability; or why there is none."""
    from .backends import select

    if torch.version.cuda is None:
        return {"cuda_devices": [], "why_none": f"torch {torch.__version__} is a CPU-only build"}
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = "torch.cuda.is_available() is False (no NVIDIA driver or no device)"
        if visible is not None:
            why += f"; CUDA_VISIBLE_DEVICES={visible!r}"
        return {"cuda_devices": [], "why_none": why}
    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        cap = (p.major, p.minor)
        devices.append({
            "index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
            "memory_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count,
            "gpu_verified": cap in select.GPU_VERIFIED_CAPABILITY,
        })
    def driver() -> str:
        v = torch._C._cuda_getDriverVersion()  # the CUDA version the driver supports, e.g. 13000 = 13.0
        return f"{v // 1000}.{v % 1000 // 10}"

    driver = _guard(driver)
    return {"cuda_devices": devices, "driver": driver, "torch_arch_list": _guard(torch.cuda.get_arch_list)}


def auto_picks(devices: list[torch.device]) -> list[dict[str, Any]]:
    """What ``backend="auto"`` runs for SAMPLE_SHAPES on each device, in inference and in training, and why
    (``fused_rnn.explain`` for a one-layer module of that shape: FUSED_RNN_* overrides and autotuning included)."""
    from ._explain import explain_call
    from .modules import RNN

    out = []
    for dev in devices:
        for B, H, dtype in SAMPLE_SHAPES:
            for training in (False, True):
                row: dict[str, Any] = {"device": str(dev), "B": B, "H": H, "dtype": str(dtype).removeprefix("torch."),
                                       "mode": "training" if training else "inference"}
                try:
                    # a module on the meta device: its options are all explain needs (nothing is allocated or run)
                    rnn = RNN(H, H, device="meta", dtype=dtype)
                    e = explain_call(rnn, dev, dtype, dtype, False, SAMPLE_T, B, training)
                    row["pick"] = e.layers[0].name if e.layers else e.name
                    row["why"] = e.summary
                except Exception as e:  # noqa: BLE001
                    row["pick"] = f"<error: {type(e).__name__}: {e}>"
                    row["why"] = ""
                out.append(row)
    return out


def collect() -> dict[str, Any]:
    """The whole report as a JSON-serialisable dict (``python -m fused_rnn --json`` prints it)."""
    from . import _ext
    from ._version import __version__
    from .backends import cuda as cuda_backend
    from .backends import select

    devices = _guard(_devices)
    cuda_devs = devices.get("cuda_devices", []) if isinstance(devices, dict) else []
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("FUSED_RNN_")}
    for k in ("CUDA_VISIBLE_DEVICES", "TORCH_CUDA_ARCH_LIST", "OMP_NUM_THREADS"):
        if k in os.environ:
            env[k] = os.environ[k]
    return {
        "fused_rnn": {"version": __version__, "path": os.path.dirname(os.path.abspath(__file__))},
        "build": _ext.BUILD_INFO,
        "extension": {"loaded": _ext.LOADED, "error": _ext.load_error()},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "platform": platform.platform()},
        "torch": _guard(_torch),
        "cpu": _guard(_cpu),
        "environment": env,
        "backends": _guard(_backends),
        "cuda_tiers_compiled": _guard(lambda: list(cuda_backend.compiled_tiers())),
        "gpu_verified": {
            "tiers": {k: list(v) for k, v in select.GPU_VERIFIED.items()},
            "capabilities": [f"{a}.{b}" for a, b in select.GPU_VERIFIED_CAPABILITY],
            "report": select.GPU_VERIFIED_REPORT,
        },
        "devices": devices,
        "auto_picks": _guard(lambda: auto_picks([torch.device("cpu")] + [torch.device("cuda", d["index"])
                                                                          for d in cuda_devs])),
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v) if v else "none"
    return str(v)


def format_report(r: dict[str, Any]) -> str:
    """The text form of ``collect()``."""
    lines = [f"fused_rnn {r['fused_rnn']['version']}  ({r['fused_rnn']['path']})"]
    b = r["build"]
    if b is None:
        lines.append("  build: no build record (the extension was not built by setup.py)")
    elif "error" in b:
        lines.append(f"  build: {b['error']}")
    else:
        flags = [f for f, on in (("debug", b.get("debug")), ("fast-math", b.get("fast_math"))) if on]
        lines.append(f"  built against: torch {b.get('torch_version')} (CUDA {_fmt(b.get('torch_cuda_version'))}), "
                     f"Python {b.get('python_version')}{' [' + ', '.join(flags) + ']' if flags else ''}")
        lines.append(f"  CUDA kernels built: {_fmt(b.get('with_cuda'))}"
                     + (f"; archs: {_fmt(b.get('cuda_archs'))} (sm_* = GPU code, compute_* = PTX); "
                        f"nvcc {_fmt(b.get('nvcc_version'))}" if b.get("with_cuda") else ""))
    e = r["extension"]
    lines.append("  extension fused_rnn._C: " + ("loaded" if e["loaded"] else f"NOT loaded: {e['error']}"))
    p, t, c = r["python"], r["torch"], r["cpu"]
    lines.append(f"Python {p['version']} ({p['implementation']}), {p['platform']}")
    if isinstance(t, dict):
        lines.append(f"torch {t['version']}, CUDA {_fmt(t['cuda'])}, cuDNN {_fmt(t['cudnn'])}, "
                     f"Triton {_fmt(t['triton'])}" + (f", HIP {t['hip']}" if t.get("hip") else ""))
        lines.append(f"  TF32 for fp32 matmuls: {_fmt(t['tf32_for_fp32_matmul'])}")
    else:
        lines.append(f"torch: {t}")
    if isinstance(c, dict):
        lines.append(f"CPU: {c['model']}; ISA: {_fmt(c['isa'])}; torch threads: {c['torch_threads']}"
                     + (f"; fused_rnn CPU kernels: {c['fused_rnn_cpu_kernels']}" if "fused_rnn_cpu_kernels" in c
                        else ""))
    env = ", ".join(f"{k}={v}" for k, v in r["environment"].items())
    lines.append("environment: " + (env or "(no FUSED_RNN_* set)"))
    lines.append("backends:")
    for be in r["backends"] if isinstance(r["backends"], list) else []:
        lines.append(f"  {be['name']:<10} " + ("available" if be["available"] else f"not available: {be['why_not']}"))
    lines.append(f"CUDA tiers compiled in: {_fmt(r['cuda_tiers_compiled'])}")
    g = r["gpu_verified"]
    tiers = "; ".join(f"{k}: {_fmt(v)}" for k, v in g["tiers"].items())
    lines.append(f"GPU-verified tiers ({tiers}) on compute capability {_fmt(g['capabilities'])}; report: {g['report']}")
    d = r["devices"]
    lines.append("devices: cpu" + ("" if not isinstance(d, dict) else
                                   "".join(f", cuda:{x['index']}" for x in d.get("cuda_devices", []))))
    if isinstance(d, dict):
        for x in d.get("cuda_devices", []):
            lines.append(f"  cuda:{x['index']}  {x['name']}, compute capability {x['capability']}, "
                         f"{x['memory_gib']} GiB, {x['sms']} SMs, GPU-verified: {_fmt(x['gpu_verified'])}")
        if d.get("why_none"):
            lines.append(f"  no CUDA device: {d['why_none']}")
        if d.get("driver") is not None:
            lines.append(f"  driver supports CUDA {d['driver']}; torch built for: {_fmt(d.get('torch_arch_list'))}")
    else:
        lines.append(f"  {d}")
    lines.append("auto picks (path[:tier] per device, sample shape and mode; fused_rnn.explain(rnn, x) for yours):")
    for a in r["auto_picks"] if isinstance(r["auto_picks"], list) else []:
        lines.append(f"  {a['device']:<7} B={a['B']:<4} H={a['H']:<5} {a['dtype']:<9} {a.get('mode', ''):<9} -> "
                     f"{a['pick']}")
        if a.get("why"):
            lines.append(f"{'':<11}{a['why']}")
    return "\n".join(lines)


def show_config(file: TextIO | None = None) -> None:
    """Print the configuration report (versions, build, backends, devices, what ``auto`` picks) for a bug report.

    Works on a CPU-only machine. It queries the visible GPUs only when called, never at import.
    """
    print(format_report(collect()), file=file if file is not None else sys.stdout)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fused_rnn", description="Print fused_rnn's configuration report "
                                 "(paste it into bug reports).")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    if args.json:
        print(json.dumps(collect(), indent=1, default=str))
    else:
        show_config()
    return 0
