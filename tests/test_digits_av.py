"""The digits-av set (scikit-learn's handwritten digits + eSpeak NG speech): a tiny build through the
command line, its layout and conditions, `check` and a one-epoch run on it, determinism, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from avcl_bench.cli import main
from avcl_bench.data import digits_av as D
from avcl_bench.data import espeak
from avcl_bench.errors import DataError

TINY = "3,3,3"  # clips per class in train, val, test: 90 clips


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "set"
    assert main(["generate", "digits-av", "--out", str(out), "--clips-per-class", TINY, "--seed", "1"]) == 0
    return out


def test_layout_conditions_and_sources(tiny):
    rows = _rows(tiny / "splits.csv")
    assert [r["name"] for r in _rows(tiny / "classes.csv")] == list(D.CLASSES)
    assert len(rows) == 90 and len({r["id"] for r in rows}) == 90
    assert sorted(p.stem for p in (tiny / "clips").glob("*.mp4")) == sorted(r["id"] for r in rows)
    doc = json.loads((tiny / "generation.json").read_text())
    assert doc["params"]["clips"] == {"train": 3, "val": 3, "test": 3} and doc["params"]["seed"] == 1
    assert "load_digits" in doc["sources"]["pictures"] and "eSpeak NG" in doc["sources"]["speech"]
    clips = doc["clips"]
    by_split = {r["id"]: (r["label"], r["split"]) for r in rows}
    scans = {}
    for cid, c in clips.items():
        assert by_split[cid] == (D.CLASSES[c["class"]], c["split"])
        assert c["speech"]["text"] == D.CLASSES[c["class"]]
        scans.setdefault(c["scan"], set()).add(c["split"])
    assert all(len(s) == 1 for s in scans.values())  # no scan is shown in two splits
    # round(0.3 * 3) = 1 clip per class and split with hard speech, 1 other with a hard digit
    for c in range(10):
        for split in D.SPLITS:
            conds = sorted(v["condition"] for v in clips.values() if v["class"] == c and v["split"] == split)
            assert conds[0] == "clear" and conds[1].startswith("digit-") and conds[2].startswith("speech-")


def test_check_and_one_epoch_run(tiny, tmp_path, capsys):
    manifest = str(tiny / D.MANIFEST_NAME)
    assert main(["check", "--benchmark", manifest, "--decode", "5"]) == 0
    out = capsys.readouterr().out
    assert "5 tasks" in out and "task 5: eight, nine" in out and "no problems found" in out
    args = ["run", "--strategy", "finetune", "--benchmark", manifest, "--profile", "quick", "--set", "train.epochs=1"]
    assert main(args + ["--results-dir", str(tmp_path), "--run-id", "r", "--quiet"]) == 0
    run = json.loads((tmp_path / "r" / "metrics.json").read_text())["run"]
    assert run["benchmark"] == "digits-av" and run["test_clips_per_task"] == [6] * 5
    assert [e["epochs"] for e in run["epochs_trained"]] == [1] * 5
    lines = (tmp_path / "r" / "accuracy_audio-visual.csv").read_text().splitlines()
    assert len(lines) == 1 + 5 + 1  # header, one row per task, test sizes
    assert (tmp_path / "r" / "COMPLETE").is_file()


def test_reuse_and_other_settings(tiny, monkeypatch):
    def boom(*_):
        raise AssertionError("generated again")

    monkeypatch.setattr(D, "_clip_job", boom)
    assert D.generate_digits_av(tiny, clips={"train": 3, "val": 3, "test": 3}, seed=1, progress=False) == (
        tiny / D.MANIFEST_NAME
    )
    with pytest.raises(DataError, match="other settings"):
        D.generate_digits_av(tiny, clips={"train": 3, "val": 3, "test": 3}, seed=2, progress=False)


def test_speech_is_deterministic_and_spoken():
    reqs = [
        {"text": w, "voice": v, "rate": 150, "pitch": 50, "range": 50, "seed": 7}
        for w, v in (("seven", "en-us+f3"), ("three", "en+m1"), ("seven", "en-us+f3"))
    ]
    waves, rate, info = espeak.synthesize(reqs)
    again, _, _ = espeak.synthesize(reqs)
    assert rate == 22050 and info["version"]
    assert all(np.array_equal(a, b) for a, b in zip(waves, again))  # same list, same samples
    assert all(0.2 * rate < len(w) < 1.5 * rate and np.abs(w).max() > 3000 for w in waves)
    assert not np.array_equal(waves[0], waves[1])


def test_hard_conditions_remove_their_modality():
    params = dict(D.FORMAT, seed=0)
    word = np.sin(np.linspace(0, 400, 8000))

    def audio(cond, speech):
        return D.render_audio(cond, speech, np.random.default_rng(3), params)

    assert np.array_equal(audio("speech-missing", word), audio("speech-missing", 0.5 * word[:4000]))
    assert not np.array_equal(audio("clear", word), audio("clear", 0.5 * word[:4000]))
    scan = np.full((8, 8), 16.0)
    blank = np.zeros((8, 8))

    def ink(cond):  # mean absolute difference a full scan makes against an empty one, same draws
        a = D.render_frames(cond, scan, np.random.default_rng(5), params).astype(float)
        b = D.render_frames(cond, blank, np.random.default_rng(5), params).astype(float)
        return np.abs(a - b).mean()

    assert ink("digit-faint") < 0.15 * ink("clear")
    assert ink("digit-covered") < 0.3 * ink("clear")


def test_missing_synthesiser_is_one_clear_error(monkeypatch):
    import ctypes.util
    import sys

    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(DataError, match="realdata"):
        espeak._library()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clips-per-class", "3,3"], "TRAIN,VAL,TEST"),
        (["--clips-per-class", "3,0,3"], "positive integer"),
        (["--hard-audio", "0.7", "--hard-visual", "0.5"], "must not exceed 1"),
        (["--hard-visual", "1.5"], "fraction in 0..1"),
    ],
)
def test_bad_options(args, message, tmp_path, capsys):
    assert main(["generate", "digits-av", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert main(["generate", "digits-av"]) == 2 and "needs --out" in capsys.readouterr().err


def test_readme_table_sweep_plans_every_method_on_the_quick_profile(tiny, tmp_path, monkeypatch, capsys):
    """`avcl-bench sweep --preset digits-av` (the README's table) from the folder holding the set:
    nine methods x audio / visual / audio-visual x 3 seeds, CIGN once per seed (one audio-visual run
    reports all three), every run on the quick profile."""
    (tmp_path / "digits-av").symlink_to(tiny, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--preset", "digits-av", "--dry-run"]) == 0
    plan = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert len(plan) == 8 * 3 * 3 + 3 and all(p[0] == "pending" for p in plan)
    cign = sorted(p[1].split("_")[3:5] for p in plan if p[1].startswith("cign_"))
    assert cign == [["audio-visual", f"s{s}"] for s in (0, 1, 2)]
    # the quick profile's sizes: batch 32, a 30-epoch budget (with early stopping on validation)
    assert all("epochs=30" in " ".join(p) and "batch=32" in " ".join(p) for p in plan)
    # a --set still wins over the preset's own settings
    assert (
        main(
            [
                "sweep",
                "--preset",
                "digits-av",
                "--strategies",
                "finetune",
                "--seeds",
                "0",
                "--modalities",
                "audio",
                "--set",
                "train.epochs=2",
                "--dry-run",
            ]
        )
        == 0
    )
    assert "epochs=2 " in capsys.readouterr().out
