"""The embedded synth-av benchmark: layout, determinism, class signatures, reuse."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from avcl_bench.data import synth as S
from avcl_bench.data.clips import AudioSpec, VisualSpec, decode_clip, log_spectrogram, preprocess_clips
from avcl_bench.errors import ConfigError, DataError
from avcl_bench.paths import DATASETS_DIR

MICRO = {
    "num_classes": 4,
    "clips": {"train": 1, "val": 1, "test": 1},
    "duration": 1.0,
    "fps": 8,
    "resolution": 32,
    "sample_rate": 16000,
}


def _yaml_specs():
    doc = yaml.safe_load((DATASETS_DIR / "synth-av.yaml").read_text())
    return AudioSpec.from_dict(doc["clips"]["audio"]), VisualSpec.from_dict(doc["clips"]["visual"])


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny0(tmp_path_factory) -> Path:
    return S.generate_synth_av(tmp_path_factory.mktemp("a") / "synth", size="tiny", seed=0, progress=False)


def test_layout_and_manifest(tiny0):
    p = S.SYNTH_SIZES["tiny"]
    assert (tiny0 / S.MARKER).is_file()
    classes = _rows(tiny0 / "classes.csv")
    assert [int(r["index"]) for r in classes] == list(range(p["num_classes"]))
    assert len({r["name"] for r in classes}) == p["num_classes"]
    rows = _rows(tiny0 / "splits.csv")
    assert len(rows) == p["num_classes"] * sum(p["clips"].values())
    assert len({r["id"] for r in rows}) == len(rows)
    for name in (r["name"] for r in classes):
        for split, n in p["clips"].items():
            assert sum(r["label"] == name and r["split"] == split for r in rows) == n
    assert sorted(x.stem for x in (tiny0 / "clips").glob("*.mp4")) == sorted(r["id"] for r in rows)
    doc = json.loads((tiny0 / "generation.json").read_text())
    assert doc["seed"] == 0 and doc["size"] == "tiny" and doc["params"] == p
    assert doc["counts"] == {"train": 80, "val": 24, "test": 32}
    assert doc["ambiguous_in_audio"] == [[0, 1], [4, 5]] and doc["ambiguous_in_vision"] == [[2, 3], [6, 7]]
    # A real, playable H.264 + AAC mp4 of the declared size.
    with av.open(str(tiny0 / "clips" / f"{rows[0]['id']}.mp4")) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        assert (v.width, v.height, a.sample_rate) == (64, 64, 16000)
        assert abs(c.duration / 1e6 - p["duration"]) < 0.2
    # Decoded with the manifest's preprocessing: full-resolution frame, 1 x 129 x 126 spectrogram.
    aspec, vspec = _yaml_specs()
    w, frames = decode_clip(tiny0 / "clips" / f"{rows[0]['id']}.mp4", aspec, vspec)
    assert frames.shape == (1, 64, 64, 3) and tuple(log_spectrogram(w, aspec).shape) == (1, 129, 126)


@pytest.mark.slow
def test_determinism(tiny0, tmp_path):
    # Same seed, another directory, another number of writer threads: identical benchmark.
    again = S.generate_synth_av(tmp_path / "b", size="tiny", seed=0, progress=False, workers=2)
    assert (again / "splits.csv").read_bytes() == (tiny0 / "splits.csv").read_bytes()
    assert (again / "classes.csv").read_bytes() == (tiny0 / "classes.csv").read_bytes()
    assert (again / "generation.json").read_bytes() == (tiny0 / "generation.json").read_bytes()
    aspec, vspec = _yaml_specs()
    for vid in [r["id"] for r in _rows(tiny0 / "splits.csv")[:4]]:
        w0, f0 = decode_clip(tiny0 / "clips" / f"{vid}.mp4", aspec, vspec)
        w1, f1 = decode_clip(again / "clips" / f"{vid}.mp4", aspec, vspec)
        np.testing.assert_array_equal(w0, w1)
        np.testing.assert_array_equal(f0, f1)


def test_other_seed_differs(tmp_path, monkeypatch):
    # A smaller size keeps this fast; the generator is the same.
    monkeypatch.setitem(S.SYNTH_SIZES, "micro", MICRO)
    a = S.generate_synth_av(tmp_path / "s0", size="micro", seed=0, progress=False)
    b = S.generate_synth_av(tmp_path / "s1", size="micro", seed=1, progress=False)
    assert (a / "splits.csv").read_bytes() != (b / "splits.csv").read_bytes()
    spec_a = AudioSpec(sample_rate=16000, duration=1.0)
    for vid in [r["id"] for r in _rows(a / "splits.csv")[:3]]:
        w0, f0 = decode_clip(a / "clips" / f"{vid}.mp4", spec_a, VisualSpec())
        w1, f1 = decode_clip(b / "clips" / f"{vid}.mp4", spec_a, VisualSpec())
        assert not np.array_equal(w0, w1) and not np.array_equal(f0, f1)


def _class_features(root: Path, split="train"):
    """Classes 0-3: mean log spectrum over time (audio) and the centre frame's object colour."""
    aspec, vspec = _yaml_specs()
    classes = [r["name"] for r in _rows(root / "classes.csv")]
    rows = [r for r in _rows(root / "splits.csv") if r["split"] == split and classes.index(r["label"]) < 4]
    ids = [r["id"] for r in rows]
    arr = preprocess_clips(root, ids, aspec, vspec, progress=False)
    labels = np.array([classes.index(r["label"]) for r in rows])
    spectra = np.asarray(arr.audio, np.float32)[:, 0].mean(axis=2)  # (N, F)
    frames = np.asarray(arr.visual[:, 0], np.float32)  # (N, 3, S, S)
    # The object is the most saturated region: average colour of the most saturated pixels.
    sat = frames.max(1) - frames.min(1)
    colours = np.stack([f[:, s >= np.quantile(s, 0.95)].mean(1) for f, s in zip(frames, sat)])
    return labels, spectra, colours


def _dist(x, labels, a, b):
    return float(np.linalg.norm(x[labels == a].mean(0) - x[labels == b].mean(0)))


def _spread(x, labels, a):
    xa = x[labels == a]
    return float(np.linalg.norm(xa - xa.mean(0), axis=1).mean())


def test_class_signatures(tiny0):
    labels, spectra, colours = _class_features(tiny0)
    # Audio: classes 0/1 share a signature, 2/3 do not; 0 vs 2 differ more than clips within 0 do.
    assert _dist(spectra, labels, 0, 2) > 2 * _spread(spectra, labels, 0)
    assert _dist(spectra, labels, 2, 3) > 2 * _spread(spectra, labels, 2)
    assert _dist(spectra, labels, 0, 1) < 0.5 * _dist(spectra, labels, 0, 2)
    # Vision: 2/3 share a signature (blue triangle); 0 (red disc) and 1 (green square) do not.
    assert _dist(colours, labels, 0, 1) > 2 * _spread(colours, labels, 0)
    assert _dist(colours, labels, 2, 3) < 0.5 * _dist(colours, labels, 0, 1)


def test_class_table():
    classes = S.synth_classes(16)
    a_ids = [c["audio_id"] for c in classes]
    v_ids = [c["visual_id"] for c in classes]
    assert len({c["name"] for c in classes}) == 16
    assert len(set(a_ids)) == 12 and len(set(v_ids)) == 12
    for b in range(4):
        assert a_ids[4 * b] == a_ids[4 * b + 1] and v_ids[4 * b] != v_ids[4 * b + 1]
        assert v_ids[4 * b + 2] == v_ids[4 * b + 3] and a_ids[4 * b + 2] != a_ids[4 * b + 3]
    assert len({c["audio"]["name"] for c in S.synth_classes(24)}) == 18
    with pytest.raises(ConfigError):
        S.synth_classes(30)


def test_reuse_and_default_location(tmp_path, monkeypatch):
    monkeypatch.setitem(S.SYNTH_SIZES, "micro", MICRO)
    monkeypatch.setenv("AVCL_BENCH_CACHE", str(tmp_path / "cache"))
    out = S.generate_synth_av(size="micro", seed=3, progress=False)
    assert out == tmp_path / "cache" / "synth-av" / "micro-seed3"
    assert len(list((out / "clips").glob("*.mp4"))) == 12
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]

    def boom(out_dir, job):
        raise AssertionError("generated again")

    monkeypatch.setattr(S, "_clip_job", boom)
    assert S.generate_synth_av(size="micro", seed=3, progress=False) == out  # complete: reused
    # An incomplete directory in the cache (no marker) is regenerated.
    (out / S.MARKER).unlink()
    with pytest.raises(AssertionError, match="generated again"):
        S.generate_synth_av(size="micro", seed=3, progress=False)
    assert not out.exists() and not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


def test_user_directories_are_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.setitem(S.SYNTH_SIZES, "micro", MICRO)
    out = S.generate_synth_av(tmp_path / "x", size="micro", seed=0, progress=False)
    with pytest.raises(DataError, match="another size/seed"):
        S.generate_synth_av(out, size="micro", seed=1, progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a synth-av benchmark"):
        S.generate_synth_av(foreign, size="micro", progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match="cannot write synth-av to"):
        S.generate_synth_av(tmp_path / "afile" / "sub", size="micro", progress=False)
    with pytest.raises(ConfigError, match="unknown synth-av size 'huge'"):
        S.generate_synth_av(tmp_path / "y", size="huge")


def test_manifest_yaml():
    doc = yaml.safe_load((DATASETS_DIR / "synth-av.yaml").read_text())
    assert doc["generated"] == "synth-av" and doc["inputs"] == ["clips"]
    assert doc["protocols"]["cign"]["num_tasks"] == 4
    aspec, vspec = _yaml_specs()
    assert aspec.sample_rate == S.SYNTH_SIZES["default"]["sample_rate"]
    assert aspec.duration == S.SYNTH_SIZES["default"]["duration"]
    assert vspec.size == S.SYNTH_SIZES["default"]["resolution"]
    for size in S.SYNTH_SIZES.values():
        assert size["num_classes"] % doc["protocols"]["cign"]["num_tasks"] == 0
