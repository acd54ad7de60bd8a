"""Imported first by every hunt script: puts this checkout (and its tests/) ahead of the venv's editable install.

``python hunt/x.py`` puts hunt/ first on sys.path, not the current directory, so without this ``import fused_rnn``
finds the venv's editable install (/work/main), not the worktree the script lives in.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (os.path.join(ROOT, "tests"), ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)
