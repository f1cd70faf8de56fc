"""Where the suite finds its own resources and where it caches generated data."""

from __future__ import annotations

import os
from pathlib import Path

#: Repository root (the directory holding ``datasets/``, ``strategies/``, ``results/``).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATASETS_DIR = PROJECT_ROOT / "datasets"
STRATEGIES_DIR = PROJECT_ROOT / "strategies"
RESULTS_DIR = PROJECT_ROOT / "results"
REPORTS_DIR = PROJECT_ROOT / "reports"


def cache_dir() -> Path:
    """Root of generated and decoded data: ``$AVCL_BENCH_CACHE`` or ``~/.cache/avcl-bench``."""
    root = os.environ.get("AVCL_BENCH_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "avcl-bench"
