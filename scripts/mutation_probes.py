#!/usr/bin/env python3
"""Mutation probes: does the test suite catch the bugs it claims to catch? (issue #26)

Each probe plants one bug and runs the tests that should catch it, in a fresh process:

* ``python`` probes patch one function in-process -- its source with one exact text replaced (the text must occur
  exactly once, else the probe is stale and says so), recompiled in its own module -- or replace one attribute,
  then run pytest (``pytest.main``) on the relevant test files in that process.
* ``cpp`` probes copy the working tree (tracked and untracked, not ignored files) into a temporary directory, patch
  one source file there, rebuild the extension (CPU-only unless the probe needs CUDA) and run the tests in that copy.

A probe is *caught* when at least one test fails. Before the probes, each distinct test selection also runs
unpatched (the baseline): a selection that already fails proves nothing, and the table says so. A probe whose
target code is not in this tree (another item not merged yet, or the code moved) or that needs a GPU here is
skipped with a note, never counted as caught.

    python scripts/mutation_probes.py                  # every probe; markdown table on stdout
    python scripts/mutation_probes.py --item 2 --item 5
    python scripts/mutation_probes.py --only dropout-scale --no-baseline
    python scripts/mutation_probes.py --list

Exit status: 0 when every probe that ran was caught and every baseline passed, 1 otherwise (skips are not
failures; ``--strict`` makes them failures). To add a probe, append a ``Probe`` to PROBES.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the targets (fused_rnn, bench) import from the repo root
    sys.path.insert(0, ROOT)
# mutants compile as their modules do (they all start with `from __future__ import annotations`)
_FUTURE_ANNOTATIONS = importlib.import_module("__future__").annotations.compiler_flag
RESULT_TAG = "MUTATION_PROBE_RESULT "


@dataclass(frozen=True)
class Probe:
    """One planted bug.

    name: short id (``--only``). item: the issue #26 item whose tests must catch it. owner: who owns that work.
    mutation: what the bug is, in words. tests: pytest arguments (files, -k, -m) relative to the repo root.
    kind: "python" (``target`` = "module:function" or "module:Class.method", each (old, new) of ``edits`` applied to
    its source; or ``apply`` = a callable that patches in-process) | "cpp" (``target`` = a file under the repo, the
    ``edits`` applied to its text, then a rebuild). Each ``old`` must occur exactly once. needs_gpu: skip without
    CUDA. depends_on: what must be merged for the probe to be caught (shown in the table; such a probe may survive
    until then). extra_env: environment for the test run.
    """

    name: str
    item: str
    owner: str
    mutation: str
    tests: tuple[str, ...]
    kind: str = "python"
    target: str = ""
    edits: tuple[tuple[str, str], ...] = ()
    apply: Callable[[], None] | None = None
    needs_gpu: bool = False
    depends_on: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# in-process patches that are not a source replacement
# ---------------------------------------------------------------------------------------------------------------


def _dropout_scaled_by_keep_probability() -> None:
    """fused_rnn.modules sees an F whose dropout scales kept values by (1 - p) instead of 1 / (1 - p) (the same
    mask: F.dropout's result times (1 - p)²). Only the module's namespace is patched: torch's own F (and so
    nn.RNN, whose dropout is ATen's) is untouched."""
    import types

    import torch.nn.functional as F

    import fused_rnn.modules as modules

    def dropout(x, p=0.5, training=True, inplace=False):
        out = F.dropout(x, p, training, inplace)
        return out * (1.0 - p) ** 2 if training and p < 1 else out

    proxy = types.ModuleType("torch.nn.functional (mutant)")
    proxy.__dict__.update(F.__dict__)
    proxy.dropout = dropout
    modules.F = proxy


# ---------------------------------------------------------------------------------------------------------------
# the probes: issue #26's table and its "Done when" list
# ---------------------------------------------------------------------------------------------------------------

CONC_TESTS = ("tests/test_concurrency.py",)

PROBES: list[Probe] = [
    Probe(
        name="conc-record-fwd-on-main", item="2", owner="tests",
        mutation="concurrency.py records the forward outputs on the main stream instead of the reverse ones",
        tests=CONC_TESTS, target="fused_rnn.concurrency:run_pair",
        edits=(("_record_on(rev, main)", "_record_on(fwd, main)"),)),
    Probe(
        name="conc-record-none-on-side", item="2", owner="tests",
        mutation="concurrency.py records (None, None, None) on the side stream",
        tests=CONC_TESTS, target="fused_rnn.concurrency:run_pair",
        edits=(("_record_on(shared, side)", "_record_on((None, None, None), side)"),)),
    Probe(
        name="conc-record-nothing-on-side", item="2", owner="tests",
        mutation="concurrency.py records nothing on the side stream",
        tests=CONC_TESTS, target="fused_rnn.concurrency:run_pair",
        edits=(("    _record_on(shared, side)\n", ""),)),
    Probe(
        name="conc-no-join", item="2", owner="tests",
        mutation="concurrency.py never makes the main stream wait for the side stream (no join)",
        tests=CONC_TESTS, target="fused_rnn.concurrency:run_pair",
        edits=(("    main.wait_stream(side)\n", ""),)),
    Probe(
        name="dropout-scale", item="5", owner="tests",
        mutation="dropout scaled by (1-p) instead of 1/(1-p)",
        tests=("tests/test_parity_options.py", "tests/test_module.py", "tests/test_step.py", "-k", "dropout"),
        apply=_dropout_scaled_by_keep_probability),
    Probe(
        name="dropout-not-between-layers", item="5", owner="tests",
        mutation="dropout also after the last layer (the layer < num_layers - 1 condition dropped)",
        tests=("tests/test_parity_options.py", "tests/test_module.py", "-k", "dropout"),
        target="fused_rnn.stack:run_fused_stack",
        edits=(("module.training and layer < module.num_layers - 1:", "module.training:"),)),
    Probe(
        name="bench-gate-out-only", item="3", owner="native", depends_on="item 3 (helper native): the bench gate tests",
        mutation="the bench's correctness gate judges `out` only (h_n, dx and dW dropped)",
        tests=("tests/test_bench.py",), target="bench.runner:rel_errors",
        edits=(('for k in ("out", "h_n", "dx") if k in want}', 'for k in ("out",) if k in want}'),
               ('    if pk:\n', '    if False:\n'))),
    Probe(
        name="isa-generic-ignored", item="4", owner="cpu",
        depends_on="item 4 (helper cpu): forced_isa asserts the switch",
        mutation='the ISA switch ignores "generic" (the best kernels run for every "generic" test)',
        tests=("tests/test_cpu_backend.py",), kind="cpp", target="csrc/cpu/elman_cpu.cpp",
        edits=(('} else if (request == "generic") {\n    k = &generic_kernels();',
                '} else if (request == "generic") {\n    k = best_kernels();'),)),
    Probe(
        name="tanh-no-clamp", item="6", owner="cpu",
        depends_on="item 6 (helper cpu): tanh at ±{6, 9, 20, 100, 3e38, inf}",
        mutation="the fp32 tanh's clamp of |x| to 9 removed",
        tests=("tests/test_cpu_backend.py",), kind="cpp", target="csrc/cpu/elman_cpu_kernels.inc",
        edits=(("const vf cl = ax < 9.0f ? ax : vf{} + 9.0f;", "const vf cl = ax;"),)),
    Probe(
        name="tier-silent-fallback-cpp", item="1", owner="gpusafe",
        depends_on="item 1 (helper gpusafe): every GPU test asserts the tier that ran",
        mutation="the persistent and cluster tiers silently fall back (the C++ forward never runs them)",
        tests=("tests/test_cuda.py", "tests/test_cuda_persistent.py", "-m", "gpu_quick"), kind="cpp",
        target="csrc/cuda/elman_cuda.cpp",
        edits=(("    done = elman_fwd_persistent(p, P.scalar_type(), want == Tier::Cluster, stream);",
                "    done = false;"),), needs_gpu=True),
    Probe(
        name="tier-silent-fallback-py", item="1", owner="gpusafe",
        depends_on="item 1 (helper gpusafe): every GPU test asserts the tier that ran",
        mutation="the CUDA backend sends persistent/cluster calls to the fallback tier (Python side)",
        tests=("tests/test_cuda.py", "tests/test_cuda_persistent.py", "-m", "gpu_quick"),
        target="fused_rnn.backends.cuda:forward",
        edits=(("nonlinearity, tier, allow_tf32)",
                'nonlinearity, "fallback" if tier in ("persistent", "cluster") else tier, allow_tf32)'),),
        needs_gpu=True),
]


# ---------------------------------------------------------------------------------------------------------------
# the worker: one probe (or a baseline) in this process
# ---------------------------------------------------------------------------------------------------------------


class StaleProbe(Exception):
    """The probe's target code is not in this tree as the probe expects (not merged yet, or changed)."""


def _resolve(target: str):
    """"module:func" or "module:Class.method" -> (owner object, attribute name, the function)."""
    module_name, _, qual = target.partition(":")
    try:
        mod = importlib.import_module(module_name)
    except ImportError as e:
        raise StaleProbe(f"cannot import {module_name}: {e}") from e
    owner = mod
    parts = qual.split(".")
    for p in parts[:-1]:
        owner = getattr(owner, p, None)
        if owner is None:
            raise StaleProbe(f"{target}: no {p}")
    fn = owner.__dict__.get(parts[-1]) if isinstance(owner, type) else getattr(owner, parts[-1], None)
    if fn is None:
        raise StaleProbe(f"{target}: not found")
    return mod, owner, parts[-1], fn


def _edit(text: str, edits: tuple[tuple[str, str], ...], where: str) -> str:
    """``text`` with each (old, new) of ``edits`` applied; each old must occur exactly once (else StaleProbe)."""
    for old, new in edits:
        n = text.count(old)
        if n != 1:
            raise StaleProbe(f"{where}: the text to mutate occurs {n} times (expected once): {old!r}")
        text = text.replace(old, new)
    return text


def mutate_source(target: str, edits: tuple[tuple[str, str], ...]) -> None:
    """Apply ``edits`` to the source of ``target`` and install the recompiled function in its place (module
    globals are the original module's, so everything else it calls is unchanged)."""
    mod, owner, attr, fn = _resolve(target)
    src = _edit(textwrap.dedent(inspect.getsource(fn)), edits, target)
    code = compile(src, f"<mutant of {target}>", "exec", flags=_FUTURE_ANNOTATIONS,
                   dont_inherit=True)
    ns: dict = {}
    exec(code, mod.__dict__, ns)
    setattr(owner, attr, ns[attr])


def check_target(probe: Probe, root: str = ROOT) -> str | None:
    """None when the probe's target is present as expected, else why not (the probe is then skipped)."""
    if probe.apply is not None:
        return None
    try:
        if probe.kind == "cpp":
            path = os.path.join(root, probe.target)
            if not os.path.exists(path):
                return f"{probe.target} does not exist"
            _edit(open(path, encoding="utf-8").read(), probe.edits, probe.target)
        else:
            _, _, _, fn = _resolve(probe.target)
            _edit(textwrap.dedent(inspect.getsource(fn)), probe.edits, probe.target)
    except (StaleProbe, OSError, TypeError) as e:
        return str(e)
    return None


class _Counter:
    """pytest plugin: per test, its outcome (a failure in setup/teardown is an error)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report) -> None:
        prev = self.outcomes.get(report.nodeid)
        if report.when == "call":
            if prev != "error":
                self.outcomes[report.nodeid] = report.outcome
        elif report.failed:
            self.outcomes[report.nodeid] = "error"
        elif report.skipped and report.when == "setup":
            self.outcomes[report.nodeid] = "skipped"

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            self.outcomes[f"<collect {report.nodeid}>"] = "error"

    def summary(self) -> dict:
        out: dict = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
        for v in self.outcomes.values():
            out[v] = out.get(v, 0) + 1
        out["failed_tests"] = [k for k, v in self.outcomes.items() if v == "failed"]
        return out


def worker(name: str | None, tests: list[str]) -> int:
    """Apply probe ``name`` (None: the baseline) in this process, run pytest on ``tests``, print one result line."""
    import pytest

    result: dict = {"probe": name}
    try:
        if name is not None:
            probe = {p.name: p for p in PROBES}[name]
            if probe.kind == "python":
                if probe.apply is not None:
                    probe.apply()
                else:
                    mutate_source(probe.target, probe.edits)
        import fused_rnn

        result["fused_rnn"] = os.path.dirname(os.path.abspath(fused_rnn.__file__))
        counter = _Counter()
        rc = pytest.main(["-q", "-p", "no:cacheprovider", "--no-header", "-rN", *tests], plugins=[counter])
        result.update(counter.summary(), rc=int(rc))
    except StaleProbe as e:
        result.update(stale=str(e))
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------------------------


def _run_worker(root: str, name: str | None, tests: tuple[str, ...], env_extra: dict[str, str],
                timeout: int) -> dict:
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FUSED_RNN_BACKEND", None)
    cmd = [sys.executable, os.path.join(root, "scripts", "mutation_probes.py"), "--worker",
           name if name is not None else "-", "--", *tests]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timeout": True, "seconds": time.monotonic() - t0}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if not lines:
        return {"crash": (proc.stdout[-2000:] + proc.stderr[-2000:]).strip(), "seconds": time.monotonic() - t0}
    res = json.loads(lines[-1][len(RESULT_TAG):])
    res["seconds"] = time.monotonic() - t0
    res["log_tail"] = proc.stdout[-3000:]
    if "fused_rnn" in res and os.path.realpath(res["fused_rnn"]) != os.path.realpath(os.path.join(root, "fused_rnn")):
        res["wrong_tree"] = res["fused_rnn"]
    return res


def _copy_tree(dst: str) -> None:
    """The working tree as git sees it (tracked + untracked, not ignored), without build outputs."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):
            continue  # deleted in the working tree, or a submodule
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, rel))


def _prepare_cpp(probe: Probe, keep: bool) -> tuple[str | None, str]:
    """A patched, rebuilt copy of the tree for a cpp probe -> (its root or None, a note)."""
    tmp = tempfile.mkdtemp(prefix=f"fused_rnn_probe_{probe.name}_")
    _copy_tree(tmp)
    path = os.path.join(tmp, probe.target)
    text = _edit(open(path, encoding="utf-8").read(), probe.edits, probe.target)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    env = dict(os.environ)
    if not probe.needs_gpu:
        env["FUSED_RNN_SKIP_CUDA_BUILD"] = "1"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=3600)
    note = f"rebuilt in {time.monotonic() - t0:.0f} s" + (f" at {tmp}" if keep else "")
    if proc.returncode != 0:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        return None, "the mutant does not build: " + (proc.stderr or proc.stdout)[-800:]
    return tmp, note


def _fmt_tests(tests: tuple[str, ...]) -> str:
    return " ".join(tests)


def _fmt_counts(r: dict) -> str:
    if r.get("timeout"):
        return "timed out"
    if "crash" in r:
        return "crashed: " + r["crash"].splitlines()[-1][:120] if r["crash"] else "crashed"
    n = r["passed"] + r["failed"] + r["error"]
    s = f"{n} run, {r['failed']} failed"
    if r["error"]:
        s += f", {r['error']} errors"
    if r["skipped"]:
        s += f", {r['skipped']} skipped"
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], help="probe name (repeatable)")
    ap.add_argument("--item", action="append", default=[], help="issue #26 item (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the probes and whether their targets exist")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unpatched runs of each test selection")
    ap.add_argument("--strict", action="store_true", help="a skipped probe makes the exit status 1")
    ap.add_argument("--keep", action="store_true", help="keep the temporary trees of cpp probes")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per pytest run (default 1800)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("tests", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        return worker(None if args.worker == "-" else args.worker, args.tests)

    probes = [p for p in PROBES if (not args.only or p.name in args.only) and (not args.item or p.item in args.item)]
    unknown = set(args.only) - {p.name for p in PROBES}
    if unknown:
        ap.error(f"unknown probe(s): {sorted(unknown)}; --list shows them")
    if args.list:
        for p in probes:
            why = check_target(p)
            print(f"{p.name:28} item {p.item} ({p.owner}) {p.kind:6} {'ok' if why is None else 'SKIP: ' + why}")
        return 0

    import torch

    has_gpu = torch.cuda.is_available()
    rows, bad = [], False
    baselines: dict[tuple[str, ...], dict] = {}
    for p in probes:
        note = check_target(p)
        if note is None and p.needs_gpu and not has_gpu:
            note = "needs a GPU (run on the device machine)"
        if note is not None:
            rows.append((p, "-", "-", f"skipped: {note}"))
            bad |= args.strict
            print(f"[probe] {p.name}: skipped ({note})", file=sys.stderr)
            continue
        base = "-"
        if not args.no_baseline:
            if p.tests not in baselines:
                print(f"[probe] baseline: {_fmt_tests(p.tests)}", file=sys.stderr)
                baselines[p.tests] = _run_worker(ROOT, None, p.tests, p.extra_env, args.timeout)
            b = baselines[p.tests]
            ok = "passed" in b and b["failed"] == 0 and b["error"] == 0
            base = ("passes" if ok else "FAILS") + f" ({_fmt_counts(b)})"
            if not ok:
                rows.append((p, _fmt_tests(p.tests), base, "invalid: the unpatched tests fail"))
                bad = True
                continue
        print(f"[probe] {p.name} ...", file=sys.stderr)
        root, extra = ROOT, ""
        if p.kind == "cpp":
            root, extra = _prepare_cpp(p, args.keep)
            if root is None:
                rows.append((p, _fmt_tests(p.tests), base, f"invalid: {extra}"))
                bad = True
                continue
        r = _run_worker(root, p.name, p.tests, p.extra_env, args.timeout)
        if p.kind == "cpp" and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        if r.get("stale"):
            rows.append((p, "-", base, f"skipped: {r['stale']}"))
            bad |= args.strict
            continue
        if r.get("wrong_tree"):
            rows.append((p, _fmt_tests(p.tests), base, f"invalid: imported fused_rnn from {r['wrong_tree']}"))
            bad = True
            continue
        caught = r.get("failed", 0) > 0
        errors_only = not caught and r.get("error", 0) > 0
        verdict = "**caught**" if caught else ("errors only (not a failure)" if errors_only else "SURVIVED")
        if not caught:
            bad = True
            if p.depends_on:
                verdict += f" -- needs {p.depends_on}"
        counts = _fmt_counts(r) + (f"; {extra}" if extra else "") + f"; {r.get('seconds', 0):.0f} s"
        if caught:
            names = [t.split("::", 1)[-1] for t in r["failed_tests"]]
            verdict += " by " + ", ".join(f"`{n}`" for n in names[:3]) + (
                f" and {len(names) - 3} more" if len(names) > 3 else "")
        rows.append((p, f"{_fmt_tests(p.tests)}: {counts}", base, verdict))
        print(f"[probe] {p.name}: {verdict} ({counts})", file=sys.stderr)

    print("| mutation | item (owner) | tests run | unpatched | result |")
    print("|---|---|---|---|---|")
    def cell(text: str) -> str:  # a "|" inside a cell would end it
        return text.replace("|", "\\|").replace("\n", " ")

    for p, tests, base, verdict in rows:
        print(f"| {cell(p.mutation)} (`{p.name}`) | {p.item} ({p.owner}) | {cell(tests)} | {cell(base)} | "
              f"{cell(verdict)} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
