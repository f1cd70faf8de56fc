"""The decoded or loaded arrays of a dataset, memory-mapped from the on-disk cache."""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import NO_SPACE, DataError


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
    #: [name, size, mtime_ns] of the source files the entry was built from (its cache key)
    source_files: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def open(cls, final: Path):
        """The arrays of a finished cache entry, checked against its meta.json
        (:class:`DamagedCacheEntry` when they do not match)."""
        meta, arrays = open_cache_entry(final)
        return cls(
            audio=arrays["audio"],
            visual=arrays["visual"],
            ids=list(meta["ids"]),
            missing=list(meta["missing"]),
            cache_path=final,
            source_files=list((meta.get("key") or {}).get("files") or []),
        )


# ----------------------------------------------------------------------------- cache entries
# A cache entry is a folder <cache>/<key>/ holding audio.npy, visual.npy, meta.json and, written last,
# done. meta.json records each array's shape and dtype, so an entry is checked when it is opened.


class DamagedCacheEntry(Exception):
    """A cache entry that does not match its own metadata (truncated, torn or missing file)."""


def allocate_array(path: Path, dtype, shape) -> np.ndarray:
    """A writable ``.npy`` memory map whose disk blocks are reserved before anything is written.

    Writing through a memory map into a sparse file on a full disk raises SIGBUS (the page fault
    cannot allocate a block), which kills the process with no message; reserving the blocks first
    turns a full disk into a ``DataError`` naming the folder, raised here."""
    try:
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
        if hasattr(os, "posix_fallocate"):
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.path.getsize(path))
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without fallocate
                    raise
            finally:
                os.close(fd)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            size = np.dtype(dtype).itemsize * int(np.prod(shape)) / 1e6
            raise DataError(
                f"no space left to cache {size:.1f} MB in {path.parent.parent} ({path.name}): "
                "free space or set AVCL_BENCH_CACHE to another disk"
            ) from None
        raise
    return arr


def array_specs(**arrays: np.ndarray) -> dict:
    """``{name: {"shape": [...], "dtype": "<f2"}}``, stored in meta.json."""
    return {name: {"shape": list(a.shape), "dtype": a.dtype.str} for name, a in arrays.items()}


def open_cache_entry(final: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, {name: read-only memory map}) of a finished entry, each array checked against meta.json.

    Raises :class:`DamagedCacheEntry` with the reason when anything does not match."""
    try:
        meta = json.loads((final / "meta.json").read_text(encoding="utf-8"))
        specs, ids = meta["arrays"], meta["ids"]
        arrays = {}
        for name, spec in specs.items():
            arr = np.load(final / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if list(arr.shape) != spec["shape"] or arr.dtype.str != spec["dtype"]:
                raise DamagedCacheEntry(
                    f"{name}.npy is {arr.dtype.str} {list(arr.shape)}, meta.json says {spec['dtype']} {spec['shape']}"
                )
            if arr.shape[0] != len(ids):
                raise DamagedCacheEntry(f"{name}.npy has {arr.shape[0]} rows for {len(ids)} ids")
            row = first_non_finite_row(arr)
            if row is not None:  # every entry is built from finite values (the sources are checked)
                raise DamagedCacheEntry(f"{name}.npy row {row} ({ids[row]}) holds NaN or infinity")
            arrays[name] = arr
    except DamagedCacheEntry:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise DamagedCacheEntry(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return meta, arrays


def first_non_finite_row(arr: np.ndarray, chunk_bytes: int = 64 << 20) -> int | None:
    """The first row of a float array that holds NaN or infinity (None: all finite), read in
    chunks of about ``chunk_bytes`` so that a memory-mapped entry is never loaded whole."""
    if arr.dtype.kind != "f" or arr.shape[0] == 0:
        return None
    step = max(1, chunk_bytes // max(1, arr[0].nbytes))
    for start in range(0, arr.shape[0], step):
        block = np.asarray(arr[start : start + step]).reshape(min(step, arr.shape[0] - start), -1)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def discard_damaged_entry(final: Path, reason) -> None:
    """Remove a damaged entry so that it is rebuilt; a message naming it when it cannot be removed."""
    try:
        shutil.rmtree(final)
    except OSError:
        raise DataError(
            f"the cache entry {final} is damaged ({reason}) and cannot be removed: delete that folder and run again"
        ) from None
