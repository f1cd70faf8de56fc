"""``avcl-bench check``: a benchmark validated without training and without a run folder."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from avcl_bench.cli import main


def _own_copy(feature_benchmark, tmp_path, edit=None, yaml_extra=""):
    """A user's benchmark over a copy of the generated features: no class list (sorted labels give
    the classes), ``num_classes: 8`` declared, its splits CSV edited by ``edit``."""
    root = tmp_path / "data"
    shutil.copytree(feature_benchmark.parent, root)
    splits = pd.read_csv(root / "splits.csv", dtype=str)
    if edit:
        splits = edit(splits)
    splits.to_csv(tmp_path / "splits.csv", index=False)
    y = tmp_path / "mine.yaml"
    y.write_text(
        "name: mine\nsplits: splits.csv\nnum_classes: 8\nprotocols: {p: {num_tasks: 4, memory: {per_class: 2}}}\n"
        f"inputs: [features]\ndata_root: {root}\nfeatures: {{audio_dim: 32, visual_shape: [2, 4, 16]}}\n" + yaml_extra
    )
    return y


def _check(args, capsys):
    capsys.readouterr()
    code = main(["check"] + args)
    return code, capsys.readouterr().out


def test_sound_benchmark_prints_counts_order_and_tasks(feature_benchmark, tmp_path, capsys):
    code, out = _check(["--benchmark", str(feature_benchmark)], capsys)
    assert code == 0 and "no problems found" in out
    assert "task 1: class_000, class_001" in out and "task 4: class_006, class_007" in out
    assert "clips found: 152 of 152" in out


def test_label_typo_missing_clip_and_thin_class_are_named(feature_benchmark, tmp_path, capsys):
    def edit(df):
        df.loc[5, "label"] = "class_00l"  # a typo: an extra class with one clip
        df.loc[9, "id"] = "not_on_disk"
        return df

    results = tmp_path / "runs"
    code, out = _check(["--benchmark", str(_own_copy(feature_benchmark, tmp_path, edit))], capsys)
    assert code == 2
    assert "num_classes 8, the labels give 9; fewest clips: 'class_00l' (1 clips)" in out
    assert "class 'class_00l' has 1 training clip(s)" in out
    assert "1 of 152 ids missing" in out and "not_on_disk" in out
    assert "9 classes are not divisible into 4 tasks" in out
    assert not results.exists()  # no run folder


def test_unknown_split_value_lists_the_allowed_ones(feature_benchmark, tmp_path, capsys):
    def edit(df):
        df.loc[0, "split"] = "valid"
        return df

    code = main(["check", "--benchmark", str(_own_copy(feature_benchmark, tmp_path, edit))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "['valid'] (allowed: train, val, test)" in err[0], err


@pytest.mark.parametrize("value", ["0", "-3", "some"])
def test_decode_takes_all_or_a_count(feature_benchmark, capsys, value):
    code = main(["check", "--benchmark", str(feature_benchmark), "--decode", value])
    assert code == 2 and "--decode takes 'all' or a positive number" in capsys.readouterr().err


def test_check_says_which_input_sizes_a_run_uses(feature_benchmark, tmp_path, capsys):
    """The input sizes a run trains on, per profile: a manifest's own sizes stay whatever the
    profile (the quick profile shrinks encoders, not a manifest's inputs), and check says so."""
    code, out = _check(["--benchmark", str(feature_benchmark)], capsys)
    assert code == 0 and "input sizes (profile paper): audio features 32-d, visual tokens 2 x 4 x 16" in out
    code, out = _check(["--benchmark", "synth-av", "--profile", "paper"], capsys)
    assert code == 0 and "input sizes (profile paper): audio 2 s at 16000 Hz, visual 1 frame(s) of 64 x 64 px" in out
    code, out = _check(["--benchmark", "synth-av", "--profile", "quick", "--set", "clips.visual.size=32"], capsys)
    assert code == 0 and "input sizes (profile quick): audio 2 s at 16000 Hz, visual 1 frame(s) of 32 x 32 px" in out
