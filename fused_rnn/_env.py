"""``getenv``: ``os.environ.get`` for the variables read on every ``fused_rnn.RNN`` call.

fused_rnn reads its variables (FUSED_RNN_BACKEND, FUSED_RNN_AUTOTUNE, FUSED_RNN_HALF_GEMM, ...) at each call, so a
change made while the process runs takes effect at the next call, as documented. ``os.environ.get`` of an unset
variable costs 1.3 µs (the mapping raises and catches a KeyError inside), and a call read up to four: ~5 µs of the
~25 µs that ``auto`` added to a 35 µs nn.RNN call (T1 B8 H16; 2-core Intel Emerald Rapids VM, CPython 3.11,
2026-12-07). Here the same read takes 0.13 µs unset, 0.4 µs set: a lookup in the dict behind ``os.environ`` (its
``_data``, which ``os.environ[...] =``, ``del os.environ[...]`` and pytest's monkeypatch update; a bare
``os.putenv`` updates neither).

Where that dict is not there (a Python without it, or not POSIX: Windows upper-cases keys) it is ``os.environ.get``
itself. Not for code that torch.compile traces (Dynamo knows ``os.environ.get``, not a private dict): every caller
runs after its own tracing check or inside an ``assume_constant_result`` function, which Dynamo calls, not traces.
(Asking ``torch.compiler.is_compiling()`` here instead cost more than the read: Python calls are what a call of a
small RNN pays for.)
"""

from __future__ import annotations

import os

_DATA = getattr(os.environ, "_data", None) if os.name == "posix" else None
if not isinstance(_DATA, dict):
    _DATA = None
_KEYS: dict[str, bytes] = {}


def getenv(name: str, default: str = "") -> str:
    """``os.environ.get(name, default)``."""
    if _DATA is None:
        return os.environ.get(name, default)
    key = _KEYS.get(name)
    if key is None:
        key = _KEYS[name] = os.fsencode(name)
    value = _DATA.get(key)
    return default if value is None else os.fsdecode(value)
