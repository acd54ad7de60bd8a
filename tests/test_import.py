"""What importing the package costs and touches (issue #27), and the version / build-record plumbing.

The Dynamo checks run in fresh interpreters: this test process has imported torch._dynamo long ago (the compile
tests), so only a new process can tell whether the package pulls it in. Each subprocess prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fused_rnn
from fused_rnn import _ext, _lazy_compile, functional
from fused_rnn.backends import select

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_fresh(code: str, tmp_path) -> dict:
    """Run ``code`` in a new interpreter from a folder outside the repository; return the JSON it prints last."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # a CPU-only process even on a GPU machine
    env.pop("FUSED_RNN_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_does_not_load_dynamo_or_touch_the_gpu(tmp_path) -> None:
    r = _run_fresh("""
        import json, sys
        import torch
        import fused_rnn
        print(json.dumps({"dynamo": "torch._dynamo" in sys.modules, "cuda_init": torch.cuda.is_initialized(),
                          "file": fused_rnn.__file__}))
    """, tmp_path)
    assert r["file"].startswith(os.path.join(ROOT, "fused_rnn")), r["file"]  # the package under test, not a copy
    assert r["dynamo"] is False, "import fused_rnn imported torch._dynamo (issue #27: ~0.8 s per process)"
    assert r["cuda_init"] is False, "import fused_rnn initialised CUDA"


def test_eager_forward_backward_does_not_load_dynamo(tmp_path) -> None:
    """The eager CPU path -- build the module, forward, backward; padded, with lengths, packed -- never needs Dynamo.

    The backends are listed here, not in the subprocess: ``available_backends()`` imports the Triton backend, whose
    ``torch.library.triton_op`` registration imports torch._inductor and with it Dynamo (a cost of asking, not of
    running; see the report of issue #27)."""
    backends = [b for b in ("reference", "cpu") if b in fused_rnn.available_backends()]
    r = _run_fresh(f"""
        import json, sys
        import torch
        import fused_rnn
        from torch.nn.utils.rnn import pack_padded_sequence
        seen = {{}}
        for backend in {backends!r}:
            rnn = fused_rnn.RNN(5, 7, num_layers=2, bidirectional=True, nonlinearity="relu", backend=backend)
            x = torch.randn(6, 3, 5, requires_grad=True)
            out, h = rnn(x)
            (out.sum() + h.sum()).backward()
            out, h = rnn(x, lengths=torch.tensor([6, 2, 4]))
            out.sum().backward()
            packed = pack_padded_sequence(x, torch.tensor([6, 2, 4]), enforce_sorted=False)
            out, h = rnn(packed)
            (out.data.sum() + h.sum()).backward()
            seen[backend] = "torch._dynamo" in sys.modules
        auto = fused_rnn.RNN(5, 7)  # backend="auto"
        auto(torch.randn(4, 2, 5))[0].sum().backward()
        seen["auto"] = "torch._dynamo" in sys.modules
        print(json.dumps({{"seen": seen, "dynamo": "torch._dynamo" in sys.modules}}))
    """, tmp_path)
    assert set(r["seen"]) == set(backends) | {"auto"}
    assert r["dynamo"] is False, f"the eager CPU path imported torch._dynamo (after each backend: {r['seen']})"


def test_constant_mark_is_what_torch_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """_lazy_compile marks a function exactly as torch.compiler.assume_constant_result does on this torch.

    If a torch release changes how Dynamo recognises constant functions, this fails (and so do the fullgraph tests
    in test_compile.py, which need _resolve_name and _tf32_setting to be trace-time constants)."""
    import torch._dynamo  # noqa: F401  (the real decorator; this process may have loaded it already)

    def probe_real() -> int:
        return 1

    def probe_lazy() -> int:
        return 1

    torch.compiler.assume_constant_result(probe_real)
    monkeypatch.setattr(_lazy_compile, "_dynamo_loaded", lambda: False)  # the import-free path, as at package import
    _lazy_compile.assume_constant_result(probe_lazy)
    assert vars(probe_real) == vars(probe_lazy) == {_lazy_compile._CONSTANT_MARK: True}
    for fn in (select._resolve_name, functional._tf32_setting):
        assert getattr(fn, _lazy_compile._CONSTANT_MARK, False) is True, fn


def test_disabled_function_runs_eagerly_with_and_without_dynamo(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._dynamo  # noqa: F401

    calls = []

    def f(a: int, *, b: int) -> int:
        calls.append((a, b))
        return a + b

    g = _lazy_compile.disable(f)
    assert g.__name__ == "f" and g.__wrapped__ is f
    monkeypatch.setattr(_lazy_compile, "_dynamo_loaded", lambda: False)
    assert g(3, b=4) == 7  # Dynamo not loaded: f directly, nothing created
    assert not hasattr(f, "__dynamo_disable")
    monkeypatch.undo()
    assert g(1, b=2) == 3  # loaded: through torch's lazily disabled twin, which caches itself on f
    assert callable(getattr(f, "__dynamo_disable", None))
    assert calls == [(3, 4), (1, 2)]


def test_version_has_one_source() -> None:
    """fused_rnn.__version__, setup.py's version and the installed metadata are the same string."""
    proc = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, FUSED_RNN_SKIP_CUDA_BUILD="1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == fused_rnn.__version__
    from fused_rnn._version import __version__

    assert fused_rnn.__version__ is __version__


@pytest.mark.parametrize("built, running, mismatch", [
    ("2.14.1+cu130", "2.14.1+cu130", False),
    ("2.14.1+cu130", "2.14.1+cpu", True),
    ("2.11.0", "2.14.1", True),
    (None, "2.14.1", False),  # no record (built by hand): load and see
], ids=["same", "other-local-build", "other-release", "no-record"])
def test_torch_mismatch_message(built: str | None, running: str, mismatch: bool) -> None:
    msg = _ext.torch_mismatch({"torch_version": built} if built else None, running)
    if not mismatch:
        assert msg is None
        return
    assert msg is not None and f"torch {built}" in msg and f"torch {running}" in msg and "--no-build-isolation" in msg


def test_build_record_matches_this_build() -> None:
    """The extension loaded here was built by setup.py for this very torch (what the import check relies on)."""
    if not _ext.LOADED:
        pytest.skip(f"the extension is not built here: {_ext.load_error()}")
    info = _ext.BUILD_INFO
    assert info is not None, f"no {_ext.BUILD_INFO_FILE}: the extension was not built through setup.py's build_ext"
    assert info["torch_version"] == torch.__version__
    assert info["fused_rnn_version"] == fused_rnn.__version__
    assert info["with_cuda"] == _ext.built_with_cuda()
    if info["with_cuda"]:
        assert info["cuda_archs"], "a CUDA build must record the archs it compiled for"
        assert all(a.startswith(("sm_", "compute_")) for a in info["cuda_archs"]), info["cuda_archs"]
    else:
        assert info["cuda_archs"] == []
