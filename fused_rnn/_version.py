# The one place the version lives: setup.py reads this file as text (importing the package would import torch and
# load the extension), and fused_rnn/__init__.py imports it as fused_rnn.__version__.
__version__ = "0.1.0"
