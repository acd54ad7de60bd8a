"""torch.compiler decorators that do not import Dynamo when the package is imported (issue #27).

``torch.compiler.assume_constant_result`` and ``torch.compiler.disable`` both run ``import torch._dynamo`` when they
decorate: 0.8 s of the 0.8 s that ``import fused_rnn`` used to add to ``import torch`` (measured with
``python -X importtime``, torch 2.14.1, CPU, 2026-12-01). Every process that imports the package paid it -- DataLoader
workers, CLI tools, serving start-up -- although only torch.compile needs it. The two replacements below give
Dynamo exactly what the originals give it once it is loaded, and cost nothing before.

``torch.compiler.is_compiling()`` needs no replacement: it reads a module flag and imports nothing (torch 2.11 to
2.14). tests/test_import.py checks, in fresh processes, that importing the package, building ``fused_rnn.RNN`` and
running it forward and backward on the CPU leave ``torch._dynamo`` out of ``sys.modules``; tests/test_compile.py
checks that ``torch.compile(fullgraph=True)`` still sees the constants and the disabled functions.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

# The attribute through which torch._dynamo.assume_constant_result marks a function (torch/_dynamo/decorators.py,
# the same one line from torch 2.0 to 2.14); Dynamo reads it when it meets the function while tracing.
# tests/test_import.py checks that the installed torch's decorator sets exactly this and nothing else.
_CONSTANT_MARK = "_dynamo_marked_constant"


def _dynamo_loaded() -> bool:
    return "torch._dynamo" in sys.modules


def assume_constant_result(fn: F) -> F:
    """``torch.compiler.assume_constant_result(fn)`` without importing Dynamo.

    When Dynamo is already loaded the real decorator runs. Otherwise ``fn`` gets the mark that decorator would
    give it, so a Dynamo loaded later (by torch.compile) calls ``fn`` at trace time and bakes its result into the
    graph, as it would have with the original decorator.
    """
    if _dynamo_loaded():
        return torch.compiler.assume_constant_result(fn)
    setattr(fn, _CONSTANT_MARK, True)
    return fn


def disable(fn: F) -> F:
    """``torch.compiler.disable(fn)`` (recursive) without importing Dynamo at decoration or in eager calls.

    While Dynamo traces a caller, ``is_compiling()`` is the constant True, so the trace reaches the lazily disabled
    twin of ``fn`` -- ``torch._disable_dynamo``, torch's own lazy form of ``torch._dynamo.disable``, defined in a
    module Dynamo never traces -- and breaks the graph there, as ``torch.compiler.disable`` does. Outside a trace it
    runs the twin whenever Dynamo is loaded (compiled code that resumes after a graph break may call this wrapper
    with Dynamo's frame hook active, and the twin turns it off for ``fn`` and everything it calls); when Dynamo is
    not loaded no frame can be compiled, and ``fn`` runs directly. The ``or`` short-circuits under tracing, so Dynamo
    never evaluates the ``sys.modules`` check.
    """
    lazy_disable = getattr(torch, "_disable_dynamo", None)
    if lazy_disable is None:  # a torch without the lazy form: fall back to the import-time decorator
        return torch.compiler.disable(fn)
    disabled = lazy_disable(fn, recursive=True)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling() or _dynamo_loaded():
            return disabled(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
