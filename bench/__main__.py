"""Entry point of ``python -m bench``.

``--omp-wait-policy`` is applied here, before torch (and with it OpenMP, which reads OMP_WAIT_POLICY once when it
loads) is imported; everything else is cli.main's.
"""

import os
import sys

for _i, _a in enumerate(sys.argv[1:]):
    _v = None
    if _a == "--omp-wait-policy" and _i + 2 < len(sys.argv):
        _v = sys.argv[_i + 2]
    elif _a.startswith("--omp-wait-policy="):
        _v = _a.split("=", 1)[1]
    if _v in ("PASSIVE", "ACTIVE"):
        os.environ["OMP_WAIT_POLICY"] = _v
        os.environ["_FUSED_RNN_BENCH_OMP_SET"] = _v

from .cli import main  # noqa: E402  (after the environment is set)

sys.exit(main())
