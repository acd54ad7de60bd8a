"""Packaging (issue #20): the sdist holds everything a build needs, and what it builds works outside the repository.

- ``test_sdist_contents``: every source and header under csrc/ and every module of the package is in the sdist;
  no build output is.
- ``test_sdist_builds_a_wheel_that_works_outside_the_repo`` (the CI check, ~2 min on 2 cores): unpack the sdist,
  run the documented non-editable install ``pip install --no-build-isolation .`` in it (CPU only) into a scratch
  folder, then, from a folder outside the repository: import it, compare with nn.RNN, run ``python -m fused_rnn``;
  then fake a build for another torch and check the error names both versions. A header left out of the sdist
  fails the build here (``fatal error: ...: No such file or directory``).
- ``test_isolated_install_prints_setup_message``: installing the sdist *with* build isolation (no torch in the
  isolated env) fails with setup.py's message. It needs a package registry for setuptools; it skips, saying so,
  only where pip shows that none can be reached (the GPU machine has none).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap

import pytest
import torch

import fused_rnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_MESSAGE = "fused_rnn needs PyTorch installed first"
BUILD_OUTPUT = re.compile(r"(\.so|\.pyc|\.o|/_build_info\.json)$|/__pycache__/")


def _run(cmd: list[str], cwd: str, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env if env is not None else dict(os.environ), capture_output=True,
                          text=True, timeout=timeout)


def _tail(proc: subprocess.CompletedProcess, n: int = 4000) -> str:
    out = proc.stdout + proc.stderr
    fatal = [line for line in out.splitlines() if "fatal error" in line or "rror:" in line][:10]
    return ("\n".join(fatal) + "\n...\n" if fatal else "") + out[-n:]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> str:
    """``python -m build --sdist --no-isolation`` of this checkout (run from outside it: the checkout's build/
    folder would shadow the ``build`` package). Without ``build`` installed, setuptools' own PEP 517 hook, which is
    what ``build`` calls."""
    out = str(tmp_path_factory.mktemp("dist"))
    if importlib.util.find_spec("build") is not None:
        cmd, cwd = [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, ROOT], out
    else:
        hook = "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])"
        cmd = [sys.executable, "-c", hook, out]
        cwd = ROOT
    proc = _run(cmd, cwd, timeout=600)
    assert proc.returncode == 0, f"building the sdist failed:\n{_tail(proc)}"
    files = [f for f in os.listdir(out) if f.endswith(".tar.gz")]
    assert files == [f"fused_rnn-{fused_rnn.__version__}.tar.gz"], files
    return os.path.join(out, files[0])


def _source_files() -> list[str]:
    """Every file a build or the package needs, relative to ROOT: csrc/** and fused_rnn/**/*.py, plus the top files."""
    out = ["setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE"]
    for top in ("csrc", "fused_rnn"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for f in filenames:
                rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
                if not BUILD_OUTPUT.search("/" + rel) and (top == "csrc" or f.endswith(".py")):
                    out.append(rel)
    return sorted(out)


def test_sdist_contents(sdist: str) -> None:
    prefix = f"fused_rnn-{fused_rnn.__version__}/"
    with tarfile.open(sdist) as tf:
        names = {n.removeprefix(prefix) for n in tf.getnames()}
    missing = [f for f in _source_files() if f not in names]
    assert not missing, f"missing from the sdist (MANIFEST.in): {missing}"
    headers = [n for n in names if n.startswith("csrc/") and n.endswith((".h", ".cuh", ".inc"))]
    assert len(headers) >= 5, headers
    outputs = sorted(n for n in names if BUILD_OUTPUT.search("/" + n))
    assert not outputs, f"build outputs in the sdist: {outputs}"
    assert not any(n.startswith((".venv/", "build/")) for n in names)


# The check that runs in the installed copy, from a folder outside the repository. It prints one JSON line.
_INSTALLED_CHECK = """
import json, sys, warnings
import torch
import fused_rnn
from fused_rnn import _ext
torch.manual_seed(0)
ref = torch.nn.RNN(5, 7, num_layers=2, bidirectional=True, batch_first=True).double()
rnn = fused_rnn.RNN(5, 7, num_layers=2, bidirectional=True, batch_first=True, backend="cpu").double()
rnn.load_state_dict(ref.state_dict())
x = torch.randn(3, 9, 5, dtype=torch.float64)
h0 = torch.randn(4, 3, 7, dtype=torch.float64)
err = {}
outs = []
for m in (ref, rnn):
    xi = x.clone().requires_grad_()
    out, h = m(xi, h0)
    (out.square().sum() + h.sum()).backward()
    outs.append([out, h, xi.grad] + [p.grad for p in m.parameters()])
err = max((a - b).abs().max().item() for a, b in zip(*outs))
print(json.dumps({"file": fused_rnn.__file__, "version": fused_rnn.__version__, "loaded": _ext.LOADED,
                  "backends": fused_rnn.available_backends(), "build": _ext.BUILD_INFO, "max_err": err,
                  "n_compared": len(outs[0])}))
"""

# The same installed copy after its build record is changed to name another torch.
_MISMATCH_CHECK = """
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch
    import fused_rnn
x = torch.randn(4, 2, 3)
try:
    fused_rnn.RNN(3, 5, backend="cpu")(x)
    error = None
except RuntimeError as e:
    error = str(e)
out, h = fused_rnn.RNN(3, 5, backend="reference")(x)
print(json.dumps({"warnings": [str(w.message) for w in caught], "error": error,
                  "c_loaded": "fused_rnn._C" in sys.modules, "backends": fused_rnn.available_backends(),
                  "reference_ok": bool(torch.isfinite(out).all())}))
"""


def _python_in(site: str, code: str, cwd: str) -> dict:
    env = dict(os.environ, PYTHONPATH=site, CUDA_VISIBLE_DEVICES="")
    env.pop("FUSED_RNN_BACKEND", None)
    proc = _run([sys.executable, "-c", textwrap.dedent(code)], cwd, timeout=300, env=env)
    assert proc.returncode == 0, f"the installed copy failed:\n{_tail(proc)}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # ~2 min on 2 cores (the CPU extension compiles from the sdist); CI runs it
def test_sdist_builds_a_wheel_that_works_outside_the_repo(sdist: str, tmp_path) -> None:
    src, site, run = tmp_path / "src", tmp_path / "site", tmp_path / "run"
    run.mkdir()
    with tarfile.open(sdist) as tf:
        tf.extractall(src, filter="data")
    (tree,) = list(src.iterdir())
    # The documented non-editable install, run in the unpacked sdist: pip builds a wheel from the tree (the same
    # PEP 517 build_wheel a `pip wheel` would run) and installs it; --target keeps it out of this environment.
    env = dict(os.environ, FUSED_RNN_SKIP_CUDA_BUILD="1", MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count())))
    proc = _run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-cache-dir",
                 "--target", str(site), "."], str(tree), timeout=1500, env=env)
    assert proc.returncode == 0, f"pip install --no-build-isolation . failed in the unpacked sdist:\n{_tail(proc)}"

    pkg = site / "fused_rnn"
    assert list(pkg.glob("_C*.so")), f"no compiled extension in {pkg}: {sorted(p.name for p in pkg.iterdir())}"
    assert not (site / "csrc").exists(), "the wheel must not carry the C++ sources"
    (dist_info,) = list(site.glob("fused_rnn-*.dist-info"))
    assert (dist_info / "WHEEL").is_file(), "installed from a wheel"
    meta = (dist_info / "METADATA").read_text()
    assert f"\nVersion: {fused_rnn.__version__}\n" in meta
    assert re.search(r"^License(-Expression)?: MIT$", meta, re.M), meta[:1500]
    assert re.search(r"^Requires-Dist: torch>=2\.11$", meta, re.M), meta[:1500]
    assert "Classifier: Programming Language :: Python :: 3" in meta
    assert list(dist_info.rglob("LICENSE")), "the license file travels with the wheel"

    r = _python_in(str(site), _INSTALLED_CHECK, str(run))
    assert r["file"].startswith(str(pkg)), f"imported {r['file']}, not the installed copy in {pkg}"
    assert r["version"] == fused_rnn.__version__
    assert r["loaded"] and "cpu" in r["backends"], r
    assert r["build"]["torch_version"] == torch.__version__ and r["build"]["with_cuda"] is False, r["build"]
    assert r["n_compared"] == 3 + 16  # out, h_n, dx and the 16 parameter gradients
    assert r["max_err"] < 1e-10, f"installed copy vs nn.RNN (fp64): max error {r['max_err']}"

    env = dict(os.environ, PYTHONPATH=str(site), CUDA_VISIBLE_DEVICES="")
    proc = _run([sys.executable, "-m", "fused_rnn"], str(run), timeout=300, env=env)
    assert proc.returncode == 0, _tail(proc)
    assert f"fused_rnn {fused_rnn.__version__}  ({pkg})" in proc.stdout
    assert "extension fused_rnn._C: loaded" in proc.stdout

    # A build for another torch: refused at import with both versions named; the reference backend still works.
    info_file = pkg / "_build_info.json"
    info = json.loads(info_file.read_text())
    info["torch_version"] = "0.0.0+fake"
    info_file.write_text(json.dumps(info))
    r = _python_in(str(site), _MISMATCH_CHECK, str(run))
    both = ("torch 0.0.0+fake", f"torch {torch.__version__}")
    assert any(all(v in w for v in both) for w in r["warnings"]), r["warnings"]
    assert r["error"] is not None and all(v in r["error"] for v in both), r["error"]
    assert r["c_loaded"] is False, "the mismatched binary must not be loaded at all"
    assert "cpu" not in r["backends"] and r["reference_ok"], r
    proc = _run([sys.executable, "-W", "ignore", "-m", "fused_rnn"], str(run), timeout=300, env=env)
    assert proc.returncode == 0, _tail(proc)
    assert "extension fused_rnn._C: NOT loaded" in proc.stdout and all(v in proc.stdout for v in both), proc.stdout


def test_setup_py_without_torch_says_what_to_do(tmp_path) -> None:
    """setup.py's message when torch cannot be imported (what a build-isolated install runs into), offline."""
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--version']; "
            "runpy.run_path('setup.py', run_name='__main__')")
    proc = _run([sys.executable, "-c", code], ROOT, timeout=120)
    assert proc.returncode != 0
    assert SETUP_MESSAGE in proc.stderr and "--no-build-isolation" in proc.stderr, proc.stderr


_ARCHS_CHECK = """
import json, runpy, sys, types
import setuptools
setuptools.setup = lambda **kw: None  # evaluate setup.py's definitions without running a command
ns = runpy.run_path("setup.py")
ext = lambda *flags: types.SimpleNamespace(extra_compile_args={"cxx": [], "nvcc": ["-O3", *flags]}, sources=["k.cu"])
print(json.dumps({
    "from_env": ns["_cuda_archs"](ext()),
    "explicit": ns["_cuda_archs"](ext("-gencode=arch=compute_80,code=sm_80", "-gencode",
                                      "arch=compute_120,code=[sm_120,compute_120]")),
    "version": ns["_read_version"](),
}))
"""


def test_build_record_names_the_compiled_archs() -> None:
    """setup.py records the nvcc targets: from TORCH_CUDA_ARCH_LIST (torch's own flags) or from explicit -gencode."""
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST="8.0;9.0a+PTX", FUSED_RNN_SKIP_CUDA_BUILD="1")
    proc = _run([sys.executable, "-c", _ARCHS_CHECK], ROOT, timeout=300, env=env)
    assert proc.returncode == 0, _tail(proc)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["from_env"] == ["sm_80", "sm_90a", "compute_90a"], r
    assert r["explicit"] == ["sm_80", "sm_120", "compute_120"], r
    assert r["version"] == fused_rnn.__version__


# pip's words when it cannot fetch the isolated env's build requirements: no registry (or no network) here.
_NO_REGISTRY = re.compile(r"No matching distribution found for (setuptools|wheel)|Could not find a version that "
                          r"satisfies the requirement (setuptools|wheel)|Failed to establish a new connection|"
                          r"Network is unreachable|Temporary failure in name resolution|Name or service not known")


@pytest.mark.slow  # ~20 s: pip builds an isolated env (setuptools, wheel) from the registry
def test_isolated_install_prints_setup_message(sdist: str, tmp_path) -> None:
    env = dict(os.environ)
    env.pop("PIP_NO_BUILD_ISOLATION", None)
    proc = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--timeout", "20",
                 "--retries", "1", "--target", str(tmp_path / "site"), sdist], str(tmp_path), timeout=600, env=env)
    out = proc.stdout + proc.stderr
    if SETUP_MESSAGE not in out and _NO_REGISTRY.search(out):
        pytest.skip("no package registry reachable: pip could not install setuptools/wheel into the isolated build "
                    f"environment ({_NO_REGISTRY.search(out).group(0)})")
    assert proc.returncode != 0, "an isolated build (no torch) must fail"
    assert SETUP_MESSAGE in out and "--no-build-isolation" in out, _tail(proc)
