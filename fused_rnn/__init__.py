"""fused_rnn: a fast Elman RNN (tanh/relu) for PyTorch -- fused CUDA C++, Triton and C++ CPU kernels behind a
drop-in replacement for ``torch.nn.RNN``.

    >>> import torch, fused_rnn
    >>> rnn = fused_rnn.RNN(32, 64, num_layers=2, batch_first=True)
    >>> out, h_n = rnn(torch.randn(8, 100, 32))        # out [8, 100, 64], h_n [2, 8, 64]

``python -m fused_rnn`` (or ``fused_rnn.show_config()``) prints the versions, build and devices for a bug report.
``fused_rnn.explain(rnn, x)`` says which path a call takes and why; ``fused_rnn.set_autotune(True)`` (or
``FUSED_RNN_AUTOTUNE=1``) lets `auto` measure each new shape once and keep the faster path.
"""

from __future__ import annotations

from ._config import show_config
from ._explain import Explanation, explain
from ._version import __version__ as __version__
from .autotune import autotune_enabled, set_autotune
from .backends.select import available_backends
from .functional import elman_layer
from .modules import RNN
from .onnx import export_onnx, onnx_translations
from .precision import allow_tf32
from .recurrence import ElmanRecurrence, recurrence

__all__ = ["RNN", "available_backends", "elman_layer", "recurrence", "ElmanRecurrence", "allow_tf32", "show_config",
           "explain", "Explanation", "set_autotune", "autotune_enabled", "export_onnx", "onnx_translations"]
