"""The decoded or loaded arrays of a dataset, memory-mapped from the on-disk cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class CachedArrays:
    """``audio`` and ``visual`` arrays with one row per clip; ``ids``: the clip ids in row order
    (the requested order, missing ones dropped); ``missing``: requested ids that were not found
    (only with ``allow_missing``); ``cache_path``: the cache folder the arrays are mapped from."""

    audio: np.ndarray
    visual: np.ndarray
    ids: list[str]
    missing: list[str] = field(default_factory=list)
    cache_path: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)
