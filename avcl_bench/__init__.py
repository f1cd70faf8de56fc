"""avcl-bench: a benchmark suite for audio-visual class-incremental learning.

Importing this package is cheap on purpose: torch and Avalanche are imported lazily by the
modules that need them, so that ``avcl-bench --help`` stays fast.
"""

__version__ = "0.1.0"
