"""AV-CIL pre-extracted features: loading into memory-mapped arrays, validation, and a generator.

Layout (av-cil.md, "Pre-extracted features")::

    <root>/audio_pretrained_feature/audio_pretrained_feature_dict.npy    pickled {vid: array(Da)}
    <root>/visual_pretrained_feature/visual_pretrained_feature_dict.npy  pickled {vid: array(T*P, D)}
      or
    <root>/visual_pretrained_feature/visual_features.h5                  one dataset per vid, (T*P, D)

:func:`load_avcil_features` reads each dict once (never per item) and each HDF5 dataset once,
validates every entry (presence, shape, finite values) and writes them into preallocated
memory-mapped ``.npy`` files in a cache directory keyed by the root, the ids, the expected
shapes, the dtype and the feature files' sizes and mtimes. The directory is built under a
temporary name and renamed into place after its ``done`` marker is written, so an interrupted
load never leaves a cache that looks valid; later calls memory-map it without reading the
source files. Sizes: one (8, 196, 768) visual feature is 4.8 MB in float32, so the cache of all
of VS100-CI is ~300 GB (AVE-CI ~20 GB); ``dtype='float16'`` halves it.

:func:`write_avcil_features` writes synthetic files in exactly this layout (class-dependent
signal + noise, with a few class-specific "active" frames and patches in the visual tokens).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, FeatureError
from .arrays import (
    CachedArrays,
    DamagedCacheEntry,
    allocate_array,
    array_specs,
    discard_damaged_entry,
)

AUDIO_FILE = Path("audio_pretrained_feature") / "audio_pretrained_feature_dict.npy"
VISUAL_NPY_FILE = Path("visual_pretrained_feature") / "visual_pretrained_feature_dict.npy"
VISUAL_H5_FILE = Path("visual_pretrained_feature") / "visual_features.h5"
VISUAL_FORMATS = ("npy", "h5")
CACHE_VERSION = 2  # 2: meta.json records each array's shape and dtype


def feature_paths(root: Path, visual_format: str) -> tuple[Path, Path]:
    """``(audio file, visual file)`` of the AV-CIL layout under ``root``."""
    if visual_format not in VISUAL_FORMATS:
        raise ConfigError(f"features.visual_format must be one of {VISUAL_FORMATS}, got {visual_format!r}")
    root = Path(root)
    return root / AUDIO_FILE, root / (VISUAL_NPY_FILE if visual_format == "npy" else VISUAL_H5_FILE)


class FeatureArrays(CachedArrays):
    """Features memory-mapped from the cache: ``audio`` ``(N, Da)``, ``visual`` ``(N, T, P, D)``.

    ``ids``: the ``N`` ids in array order; ``missing``: requested ids absent from a feature file
    (only when ``allow_missing``).
    """


# ----------------------------------------------------------------------------- helpers


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _check_shapes(audio_dim, visual_shape) -> tuple[int, tuple[int, int, int]]:
    try:
        audio_dim = int(audio_dim)
        shape = tuple(int(v) for v in visual_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid feature shapes: audio_dim={audio_dim!r}, visual_shape={visual_shape!r}") from None
    if audio_dim <= 0 or len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(
            f"features need audio_dim > 0 and visual_shape [T, P, D] > 0, got {audio_dim!r} and {list(visual_shape)!r}"
        )
    return audio_dim, shape  # type: ignore[return-value]


def _np_dtype(dtype) -> np.dtype:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in ("float32", "float16"):
        raise ConfigError(f"features.dtype must be float32 or float16, got {dtype!r}")
    return np.dtype(name)


#: The only globals a feature dictionary's pickle may name: numpy's array and dtype reconstruction
#: (``numpy.core`` before numpy 2, ``numpy._core`` after) and the bytes decoding of protocol-2 pickles.
#: Anything else (``os.system``, ``builtins.eval``, a class of some package) is refused unexecuted.
_SAFE_PICKLE_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayDictUnpickler(pickle._Unpickler):
    """Unpickles dicts, lists, strings, numbers and arrays and nothing else: no input file runs code
    (the release's ``.npy`` dictionaries, features and split dictionaries alike, are pickles by
    format, so ``np.load(allow_pickle=True)`` would run whatever a crafted file names).

    It is Python's own pure-Python unpickler, not the C one: the C unpickler grows its memo as a
    list up to the largest index a file names and zeroes it, so a forged index (LONG_BINPUT near
    2**31) claims tens of GB; here the memo is a dict. The one opcode that allocates a size the file
    states before reading it (BYTEARRAY8, pickle protocol 5, never in ``np.save``'s protocol-3
    pickles) is refused. Costs ~2 s more per 60,000 entries than the C unpickler, once per file."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def _refuse_bytearray8(self):
        raise pickle.UnpicklingError("BYTEARRAY8 (pickle protocol 5) is not used by np.save")

    dispatch[pickle.BYTEARRAY8[0]] = _refuse_bytearray8

    def find_class(self, module, name):
        if (module, name) in _SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: an AV-CIL .npy dictionary holds only arrays, numbers and strings"
        )


def _read_npy_object(path: Path):
    """The object stored by ``np.save`` in ``path``: a plain array read by numpy, an object array
    through :class:`_ArrayDictUnpickler`."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _fortran, dtype = read_header[version](fh)
        if not dtype.hasobject:
            stated, held = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize, os.fstat(fh.fileno()).st_size
            if stated > held - fh.tell():  # a damaged header must not make numpy allocate what is not there
                raise ValueError(f"the header states {stated} bytes of data, the file holds {held - fh.tell()}")
            fh.seek(0)
            return np.load(fh, allow_pickle=False)
        return _ArrayDictUnpickler(fh).load()


def load_npy_object(path: Path, kind: str = "feature file"):
    """The object ``np.save`` stored in ``path`` (a 0-d object array is unwrapped), read through
    :class:`_ArrayDictUnpickler`; a missing, corrupt or code-naming file is one-line FeatureError."""
    if not path.is_file():
        raise FeatureError(f"{kind} not found: {path}")
    try:
        obj = _read_npy_object(path)
    except Exception as exc:  # any failure to parse a damaged file (header tokens, pickle opcodes, sizes)
        raise FeatureError(f"cannot read {path}: {_short(exc)}") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    return obj


def _load_npy_dict(path: Path) -> dict:
    """Load a pickled ``{vid: array}`` dict saved with ``np.save``; once per file, arrays only."""
    obj = load_npy_object(path)
    if not isinstance(obj, dict):
        what = f"an array of shape {obj.shape}" if isinstance(obj, np.ndarray) else type(obj).__name__
        raise FeatureError(f"{path}: expected a pickled dict {{id: array}}, found {what}")
    return obj


def _missing_error(path: Path, missing: list[str], total: int) -> FeatureError:
    first = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return FeatureError(f"{path.name}: {len(missing)} of {total} ids missing (first: {first}) in {path}")


def _as_audio(value, vid: str, path: Path, audio_dim: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise FeatureError(f"{path.name}: id {vid} is not a numeric array") from None
    if arr.shape not in ((audio_dim,), (1, audio_dim)):
        raise FeatureError(f"{path.name}: id {vid} has shape {tuple(arr.shape)}, expected ({audio_dim},)")
    if not np.isfinite(arr).all():
        raise FeatureError(f"{path.name}: id {vid} contains NaN or infinite values")
    return arr.reshape(audio_dim)


def _as_visual(value, vid: str, path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    t, p, d = shape
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise FeatureError(f"{path.name}: id {vid} is not a numeric array") from None
    if arr.shape not in ((t * p, d), (t, p, d), (1, t * p, d)):
        raise FeatureError(
            f"{path.name}: id {vid} has shape {tuple(arr.shape)}, "
            f"expected (T*P, D) = ({t * p}, {d}) for visual_shape [{t}, {p}, {d}]"
        )
    if not np.isfinite(arr).all():
        raise FeatureError(f"{path.name}: id {vid} contains NaN or infinite values")
    return arr.reshape(t, p, d)


def _store(out: np.ndarray, i: int, arr: np.ndarray, vid: str, path: Path) -> None:
    with np.errstate(over="ignore"):  # float16 overflow becomes inf, reported just below
        out[i] = arr
    if out.dtype == np.float16 and not np.isfinite(out[i]).all():
        raise FeatureError(f"{path.name}: id {vid} has values beyond the float16 range; use features.dtype float32")


# ----------------------------------------------------------------------------- loading


def load_avcil_features(
    root: Path,
    ids: Sequence[str],
    audio_dim: int,
    visual_shape: Sequence[int],
    visual_format: str = "npy",
    cache_dir: Path | None = None,
    dtype: str = "float32",
    progress: bool = True,
    allow_missing: bool = False,
) -> FeatureArrays:
    """Load AV-CIL features for ``ids`` into memory-mapped arrays (cached on disk).

    Raises :class:`FeatureError` for a missing or unreadable file, ids absent from a file (unless
    ``allow_missing``: they are then skipped and listed), a wrong shape, NaN/inf values, or an
    ``.npy`` that is not a pickled dict. ``dtype``: ``float32`` or ``float16`` (halves the cache).
    """
    from ..paths import cache_dir as default_cache_dir

    audio_dim, shape = _check_shapes(audio_dim, visual_shape)
    np_dtype = _np_dtype(dtype)
    root = Path(root).expanduser()
    audio_path, visual_path = feature_paths(root, visual_format)
    for p in (audio_path, visual_path):
        if not p.is_file():
            raise FeatureError(f"feature file not found: {p} (expected the AV-CIL layout under {root})")
    ids = [str(i) for i in ids]
    if not ids:
        raise FeatureError(f"no ids requested from the features under {root}")

    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in (audio_path, visual_path)]
    payload = {
        "version": CACHE_VERSION,
        "root": str(root.resolve()),
        "ids": ids,
        "files": stats,
        "audio_dim": audio_dim,
        "visual_shape": list(shape),
        "format": visual_format,
        "dtype": np_dtype.name,
        "allow_missing": bool(allow_missing),
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "features"
    final = base / key
    if (final / "done").is_file():
        try:
            return FeatureArrays.open(final)
        except DamagedCacheEntry as exc:
            discard_damaged_entry(final, exc)  # and build it again below

    # Everything is read and validated before the cache is allocated.
    audio_dict = _load_npy_dict(audio_path)
    h5 = None
    if visual_format == "npy":
        visual_dict = _load_npy_dict(visual_path)
        visual_has = visual_dict.__contains__
    else:
        import h5py

        try:
            h5 = h5py.File(visual_path, "r")
        except (OSError, ValueError) as exc:
            raise FeatureError(f"cannot read {visual_path}: {_short(exc)}") from None
        visual_has = h5.__contains__
    try:
        miss_a = [i for i in ids if i not in audio_dict]
        miss_v = [i for i in ids if not visual_has(i)]
        if not allow_missing:
            if miss_a:
                raise _missing_error(audio_path, miss_a, len(ids))
            if miss_v:
                raise _missing_error(visual_path, miss_v, len(ids))
        missing_set = set(miss_a) | set(miss_v)
        missing = [i for i in ids if i in missing_set]
        kept = [i for i in ids if i not in missing_set]
        if not kept:
            raise FeatureError(f"none of the {len(ids)} requested ids have both audio and visual features under {root}")

        from tqdm import tqdm

        from .clips import _new_tmp_dir, _publish, _write_text_atomic

        tmp = _new_tmp_dir(base, key)
        try:
            n = len(kept)
            a_arr = allocate_array(tmp / "audio.npy", np_dtype, (n, audio_dim))
            v_arr = allocate_array(tmp / "visual.npy", np_dtype, (n, *shape))
            for i, vid in enumerate(tqdm(kept, disable=not progress, desc="loading features", unit="clip")):
                _store(a_arr, i, _as_audio(audio_dict[vid], vid, audio_path, audio_dim), vid, audio_path)
                if h5 is None:
                    value = visual_dict[vid]
                else:
                    value = _read_h5(h5, vid, visual_path, shape)
                _store(v_arr, i, _as_visual(value, vid, visual_path, shape), vid, visual_path)
            a_arr.flush()
            v_arr.flush()
            specs = array_specs(audio=a_arr, visual=v_arr)
            del a_arr, v_arr
            _write_text_atomic(
                tmp / "meta.json", json.dumps({"ids": kept, "missing": missing, "key": payload, "arrays": specs})
            )
            _write_text_atomic(tmp / "done", "ok\n")
            _publish(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        if h5 is not None:
            h5.close()
    return FeatureArrays.open(final)


def _read_h5(h5, vid: str, path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    import h5py

    obj = h5[vid]
    if not isinstance(obj, h5py.Dataset):
        raise FeatureError(f"{path.name}: id {vid} is a group, expected a dataset of shape (T*P, D)")
    t, p, d = shape
    if obj.shape not in ((t * p, d), (t, p, d), (1, t * p, d)):
        raise FeatureError(
            f"{path.name}: id {vid} has shape {tuple(obj.shape)}, "
            f"expected (T*P, D) = ({t * p}, {d}) for visual_shape [{t}, {p}, {d}]"
        )
    try:
        return obj[()]
    except (OSError, ValueError, TypeError) as exc:
        raise FeatureError(f"{path.name}: cannot read id {vid}: {_short(exc)}") from None


# ----------------------------------------------------------------------------- generator


def write_avcil_features(
    root: Path,
    ids: Sequence[str],
    labels: Sequence[int],
    audio_dim: int,
    visual_shape: Sequence[int] = (8, 196, 768),
    visual_format: str = "npy",
    seed: int = 0,
    dtype=np.float32,
    signal: float = 1.0,
    noise: float = 1.0,
) -> dict[str, Path]:
    """Write synthetic features for ``ids`` in the AV-CIL layout under ``root``; deterministic.

    Audio: ``signal * mu_a[label] + noise * N(0, 1)``. Visual tokens ``(T, P, D)``: a
    class-independent spatial background pattern plus noise everywhere, and the class prototype
    ``mu_v[label]`` added only on the class's few *active* frames (``max(1, T // 4)``) and patches
    (``max(1, P // 8)``), so spatial/temporal attention can single them out. Labels are integer
    class indices. Returns ``{'audio': path, 'visual': path}``; existing files are replaced
    atomically.
    """
    audio_dim, shape = _check_shapes(audio_dim, visual_shape)
    if len(ids) != len(labels):
        raise ConfigError(f"write_avcil_features: {len(ids)} ids but {len(labels)} labels")
    t, p, d = shape
    labels_arr = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels_arr.max()) + 1 if len(labels_arr) else 0
    audio_path, visual_path = feature_paths(root, visual_format)
    out_dtype = np.dtype(dtype)

    base_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    mu_a = base_rng.standard_normal((num_classes, audio_dim))
    mu_v = base_rng.standard_normal((num_classes, d))
    background = 0.5 * base_rng.standard_normal((p, d))
    k_t, k_p = max(1, t // 4), max(1, p // 8)
    active_t = [np.sort(base_rng.choice(t, k_t, replace=False)) for _ in range(num_classes)]
    active_p = [np.sort(base_rng.choice(p, k_p, replace=False)) for _ in range(num_classes)]

    def item(i: int, label: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, i]))
        a = signal * mu_a[label] + noise * rng.standard_normal(audio_dim)
        v = background[None] + noise * rng.standard_normal((t, p, d))
        v[np.ix_(active_t[label], active_p[label])] += 2.0 * signal * mu_v[label]
        return a.astype(out_dtype), v.reshape(t * p, d).astype(out_dtype)

    audio_path.parent.mkdir(parents=True, exist_ok=True)
    visual_path.parent.mkdir(parents=True, exist_ok=True)
    audio: dict[str, np.ndarray] = {}
    visual: dict[str, np.ndarray] = {}
    h5 = tmp_v = None
    try:
        if visual_format == "h5":
            import h5py

            tmp_v = visual_path.with_name(visual_path.name + f".tmp-{os.getpid()}")
            h5 = h5py.File(tmp_v, "w")
        for i, (vid, label) in enumerate(zip(ids, labels_arr)):
            a, v = item(i, int(label))
            audio[str(vid)] = a
            if h5 is not None:
                h5.create_dataset(str(vid), data=v)
            else:
                visual[str(vid)] = v
        if h5 is not None:
            h5.close()
            h5 = None
            os.replace(tmp_v, visual_path)
        else:
            _save_dict_atomic(visual_path, visual)
        _save_dict_atomic(audio_path, audio)
    finally:
        if h5 is not None:
            h5.close()
        if tmp_v is not None and tmp_v.exists():
            tmp_v.unlink()
    return {"audio": audio_path, "visual": visual_path}


def _save_dict_atomic(path: Path, d: dict) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, np.array(d, dtype=object), allow_pickle=True)
    os.replace(tmp, path)


__all__ = ["FeatureArrays", "load_avcil_features", "write_avcil_features", "feature_paths", "load_npy_object"]
