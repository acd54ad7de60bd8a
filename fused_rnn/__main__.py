"""``python -m fused_rnn [--json]``: print the configuration report (fused_rnn._config)."""

import sys

from ._config import main

sys.exit(main())
