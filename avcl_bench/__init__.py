"""avcl-bench: a benchmark suite for audio-visual class-incremental learning.

Importing this package is cheap on purpose: torch and Avalanche are imported lazily by the
modules that need them, so that ``avcl-bench --help`` stays fast.
"""

__version__ = "0.1.0"

from .cpu_isa import apply_pin as _apply_cpu_pin

_apply_cpu_pin()  # AVCL_BENCH_CPU_ISA: before torch loads (avcl_bench/cpu_isa.py)
