"""AV-CIL pre-extracted features: generator, loader, cache, validation errors."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from avcl_bench.data import features as F
from avcl_bench.data.features import FeatureArrays, load_avcil_features, write_avcil_features
from avcl_bench.errors import ConfigError, FeatureError

SHAPE = (4, 8, 6)  # T, P, D
DA = 16
IDS = [f"vid{i:03d}" for i in range(30)]
LABELS = [i % 3 for i in range(30)]


def _load(root, cache, fmt="npy", ids=IDS, **kw):
    return load_avcil_features(root, ids, DA, SHAPE, fmt, cache_dir=cache, progress=False, **kw)


def _dicts(root):
    a = np.load(root / F.AUDIO_FILE, allow_pickle=True).item()
    v = np.load(root / F.VISUAL_NPY_FILE, allow_pickle=True).item()
    return a, v


@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_round_trip(tmp_path, fmt):
    paths = write_avcil_features(tmp_path / "f", IDS, LABELS, DA, SHAPE, fmt, seed=3)
    assert paths["audio"] == tmp_path / "f" / "audio_pretrained_feature" / "audio_pretrained_feature_dict.npy"
    name = "visual_pretrained_feature_dict.npy" if fmt == "npy" else "visual_features.h5"
    assert paths["visual"] == tmp_path / "f" / "visual_pretrained_feature" / name
    audio = np.load(paths["audio"], allow_pickle=True).item()
    if fmt == "npy":
        visual = np.load(paths["visual"], allow_pickle=True).item()
    else:
        with h5py.File(paths["visual"], "r") as h5:
            visual = {k: h5[k][()] for k in h5}
    assert set(audio) == set(visual) == set(IDS)
    assert audio["vid000"].shape == (DA,) and visual["vid000"].shape == (32, 6)

    ids = IDS[::-1][:20]  # any order, any subset
    arr = _load(tmp_path / "f", tmp_path / "cache", fmt, ids=ids)
    assert isinstance(arr, FeatureArrays) and arr.ids == ids and arr.missing == []
    assert isinstance(arr.audio, np.memmap) and arr.audio.shape == (20, DA) and arr.audio.dtype == np.float32
    assert arr.visual.shape == (20, 4, 8, 6)
    for k, vid in enumerate(ids):
        np.testing.assert_array_equal(arr.audio[k], audio[vid])
        np.testing.assert_array_equal(arr.visual[k], visual[vid].reshape(SHAPE))


def test_generator_is_deterministic_and_learnable(tmp_path):
    write_avcil_features(tmp_path / "a", IDS, LABELS, DA, SHAPE, seed=1)
    write_avcil_features(tmp_path / "b", IDS, LABELS, DA, SHAPE, seed=1)
    write_avcil_features(tmp_path / "c", IDS, LABELS, DA, SHAPE, seed=2)
    (a_a, a_v), (b_a, b_v), (c_a, _) = _dicts(tmp_path / "a"), _dicts(tmp_path / "b"), _dicts(tmp_path / "c")
    for vid in IDS:
        np.testing.assert_array_equal(a_a[vid], b_a[vid])
        np.testing.assert_array_equal(a_v[vid], b_v[vid])
    assert not np.array_equal(a_a["vid000"], c_a["vid000"])
    # Audio: nearest class mean (leave-one-out) is well above chance (1/3).
    X = np.stack([a_a[v] for v in IDS])
    y = np.array(LABELS)
    correct = 0
    for i in range(len(IDS)):
        keep = np.arange(len(IDS)) != i
        means = np.stack([X[keep & (y == c)].mean(0) for c in range(3)])
        correct += int(np.argmin(((means - X[i]) ** 2).sum(1)) == y[i])
    assert correct / len(IDS) > 0.8
    # Visual: a few tokens per clip carry the class signal (larger token-norm spread per class).
    V = np.stack([a_v[v].reshape(SHAPE) for v in IDS])
    per_token = np.linalg.norm(V[y == 0].mean(0), axis=-1)  # (T, P)
    assert per_token.max() > 2 * np.median(per_token)


def test_float16_option(tmp_path):
    write_avcil_features(tmp_path / "f", IDS, LABELS, DA, SHAPE)
    full = _load(tmp_path / "f", tmp_path / "c")
    half = _load(tmp_path / "f", tmp_path / "c", dtype="float16")
    assert half.audio.dtype == np.float16 and half.visual.dtype == np.float16
    assert half.cache_path != full.cache_path
    np.testing.assert_allclose(half.visual, full.visual, rtol=1e-3, atol=1e-3)
    with pytest.raises(ConfigError, match="float64"):
        _load(tmp_path / "f", tmp_path / "c", dtype="float64")


def test_cache_is_reused_and_atomic(tmp_path, monkeypatch):
    write_avcil_features(tmp_path / "f", IDS, LABELS, DA, SHAPE)
    first = _load(tmp_path / "f", tmp_path / "c")
    reference = np.array(first.visual)

    def boom(path):
        raise AssertionError("read again")

    monkeypatch.setattr(F, "_load_npy_dict", boom)
    second = _load(tmp_path / "f", tmp_path / "c")
    assert second.cache_path == first.cache_path
    np.testing.assert_array_equal(second.visual, reference)
    # An interrupted cache (no marker) is rebuilt: here that means reading again.
    (first.cache_path / "done").unlink()
    with pytest.raises(AssertionError, match="read again"):
        _load(tmp_path / "f", tmp_path / "c")
    monkeypatch.undo()
    third = _load(tmp_path / "f", tmp_path / "c")
    np.testing.assert_array_equal(third.visual, reference)
    assert sorted(p.name for p in tmp_path.joinpath("c").iterdir()) == [first.cache_path.name]


def test_dicts_are_loaded_once(tmp_path, monkeypatch):
    write_avcil_features(tmp_path / "f", IDS, LABELS, DA, SHAPE)
    calls = []
    real = F._load_npy_dict
    monkeypatch.setattr(F, "_load_npy_dict", lambda p: calls.append(p.name) or real(p))
    _load(tmp_path / "f", tmp_path / "c")
    assert sorted(calls) == ["audio_pretrained_feature_dict.npy", "visual_pretrained_feature_dict.npy"]


def test_missing_ids(tmp_path):
    write_avcil_features(tmp_path / "f", IDS, LABELS, DA, SHAPE)
    ids = IDS[:5] + ["ghost1", "ghost2"]
    with pytest.raises(
        FeatureError, match=r"audio_pretrained_feature_dict\.npy: 2 of 7 ids missing \(first: ghost1, ghost2\)"
    ):
        _load(tmp_path / "f", tmp_path / "c", ids=ids)
    arr = _load(tmp_path / "f", tmp_path / "c", ids=ids, allow_missing=True)
    assert arr.ids == IDS[:5] and arr.missing == ["ghost1", "ghost2"]
    # Present in audio, absent from the visual file.
    write_avcil_features(tmp_path / "g", IDS, LABELS, DA, SHAPE, "h5")
    with h5py.File(tmp_path / "g" / F.VISUAL_H5_FILE, "a") as h5:
        del h5["vid004"]
    with pytest.raises(FeatureError, match=r"visual_features\.h5: 1 of 30 ids missing \(first: vid004\)"):
        _load(tmp_path / "g", tmp_path / "c", "h5")


def _rewrite_visual(root, vid, value):
    a, v = _dicts(root)
    v[vid] = value
    F._save_dict_atomic(root / F.VISUAL_NPY_FILE, v)


def test_wrong_shape(tmp_path):
    write_avcil_features(tmp_path / "f", IDS, LABELS, DA, SHAPE)
    _rewrite_visual(tmp_path / "f", "vid007", np.zeros((31, 6), np.float32))
    with pytest.raises(
        FeatureError,
        match=r"visual_pretrained_feature_dict\.npy: id vid007 has shape \(31, 6\), "
        r"expected \(T\*P, D\) = \(32, 6\)",
    ):
        _load(tmp_path / "f", tmp_path / "c")
    write_avcil_features(tmp_path / "g", IDS, LABELS, DA, SHAPE, "h5")
    with h5py.File(tmp_path / "g" / F.VISUAL_H5_FILE, "a") as h5:
        del h5["vid002"]
        h5["vid002"] = np.zeros((32, 5), np.float32)
    with pytest.raises(
        FeatureError, match=r"visual_features\.h5: id vid002 has shape \(32, 5\), expected \(T\*P, D\) = \(32, 6\)"
    ):
        _load(tmp_path / "g", tmp_path / "c", "h5")
    # Wrong audio size.
    with pytest.raises(
        FeatureError, match=r"audio_pretrained_feature_dict\.npy: id vid000 has shape \(16,\), expected \(17,\)"
    ):
        load_avcil_features(tmp_path / "g", IDS, 17, SHAPE, "h5", cache_dir=tmp_path / "c", progress=False)
    # Nothing half-written in the cache.
    assert not any((tmp_path / "c").iterdir())


def test_nan_values(tmp_path):
    write_avcil_features(tmp_path / "f", IDS, LABELS, DA, SHAPE)
    bad = np.zeros((32, 6), np.float32)
    bad[3, 2] = np.nan
    _rewrite_visual(tmp_path / "f", "vid011", bad)
    with pytest.raises(FeatureError, match="id vid011 contains NaN"):
        _load(tmp_path / "f", tmp_path / "c")
    write_avcil_features(tmp_path / "g", IDS, LABELS, DA, SHAPE, "h5")
    with h5py.File(tmp_path / "g" / F.VISUAL_H5_FILE, "a") as h5:
        h5["vid001"][0, 0] = np.inf
    with pytest.raises(FeatureError, match=r"visual_features\.h5: id vid001 contains NaN or infinite"):
        _load(tmp_path / "g", tmp_path / "c", "h5")
    # float16 overflow is caught too.
    write_avcil_features(tmp_path / "h", IDS, LABELS, DA, SHAPE)
    _rewrite_visual(tmp_path / "h", "vid005", np.full((32, 6), 1e6, np.float32))
    with pytest.raises(FeatureError, match="vid005 has values beyond the float16 range"):
        _load(tmp_path / "h", tmp_path / "c", dtype="float16")


def test_bad_files(tmp_path):
    root = tmp_path / "f"
    with pytest.raises(FeatureError, match="feature file not found: .*audio_pretrained_feature_dict.npy"):
        _load(root, tmp_path / "c")
    write_avcil_features(root, IDS, LABELS, DA, SHAPE)
    np.save(root / F.VISUAL_NPY_FILE, np.zeros((3, 4)))
    with pytest.raises(
        FeatureError, match=r"visual_pretrained_feature_dict\.npy: expected a pickled dict .*shape \(3, 4\)"
    ):
        _load(root, tmp_path / "c")
    (root / F.VISUAL_NPY_FILE).write_bytes(b"garbage")
    with pytest.raises(FeatureError, match="cannot read .*visual_pretrained_feature_dict.npy"):
        _load(root, tmp_path / "c")
    (root / F.VISUAL_H5_FILE).write_bytes(b"garbage")
    with pytest.raises(FeatureError, match="cannot read .*visual_features.h5"):
        _load(root, tmp_path / "c", "h5")
    with pytest.raises(ConfigError, match="visual_format"):
        _load(root, tmp_path / "c", "zarr")
    os.remove(root / F.AUDIO_FILE)
    with pytest.raises(FeatureError, match="feature file not found"):
        _load(root, tmp_path / "c")
