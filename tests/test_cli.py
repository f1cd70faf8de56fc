"""End to end through the command line on the tiny synthetic benchmark, and bad input."""

import json
import os
import subprocess
import sys

import pytest

from avcl_bench.cli import main

TINY = ["--set", "synth.size=tiny", "--set", "train.epochs=2", "--set", "train.batch_size=16", "--quiet"]


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_does_not_import_torch_or_avalanche():
    code = (
        "import sys; from avcl_bench.cli import build_parser; build_parser().format_help(); "
        "import avcl_bench.cli; print('torch' in sys.modules, 'avalanche' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    proc = subprocess.run([sys.executable, "-m", "avcl_bench.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "run" in proc.stdout


@pytest.mark.parametrize("strategy", ["finetune", pytest.param("joint", marks=pytest.mark.slow)])
def test_run_end_to_end_writes_complete_run_dir(strategy, tmp_path, capsys):
    code, out, err = run_cli(
        ["run", "--strategy", strategy, "--results-dir", str(tmp_path), "--run-id", "r1"] + TINY, capsys
    )
    assert code == 0, err
    rd = tmp_path / "r1"
    assert (rd / "COMPLETE").is_file()
    assert json.loads((rd / "status.json").read_text())["state"] == "complete"
    m = json.loads((rd / "metrics.json").read_text())
    av = m["modalities"]["audio-visual"]
    assert 0.0 <= av["avg_acc"] <= 100.0
    assert set(m["definitions"]) >= {"avg_acc", "forgetting", "mean_inc_acc", "avcil_forgetting", "bwt"}
    lines = (rd / "accuracy_audio-visual.csv").read_text().splitlines()
    assert lines[0].startswith("after_task") and len(lines) == 4 + 2  # header, 4 rows, test sizes
    assert "synth-av" in (rd / "config.yaml").read_text()
    env = json.loads((rd / "environment.json").read_text())
    assert env["packages"]["torch"].startswith("2.14")
    from avcl_bench import __version__

    assert env["packages"]["avcl-bench"] == __version__  # the suite's version, with or without a checkout
    assert m["timing"]["total_s"] > 0 and m["memory"]["peak_rss_mb"] > 0


@pytest.mark.slow
def test_each_modality_runs(tmp_path, capsys):
    for mod in ("audio", "visual"):
        code, _, err = run_cli(
            ["run", "--strategy", "finetune", "--modality", mod, "--results-dir", str(tmp_path), "--run-id", mod]
            + TINY,
            capsys,
        )
        assert code == 0, err
        assert (tmp_path / mod / f"accuracy_{mod}.csv").is_file()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--strategy", "nope"], "unknown strategy 'nope'"),
        (["--strategy", "finetune", "--benchmark", "nope"], "unknown benchmark 'nope'"),
        (["--strategy", "finetune", "--set", "train.lrr=1"], "unknown config key 'train.lrr'"),
        (["--strategy", "finetune", "--set", "num_tasks=3", "--set", "synth.size=tiny"], "not divisible"),
        (
            ["--strategy", "finetune", "--benchmark", "vggsound-instruments", "--data-root", "/nonexistent/x"],
            "/nonexistent/x",
        ),
        (["--strategy", "finetune", "--benchmark", "ave-ci"], "--data-root"),
    ],
)
def test_bad_input_one_line_exit_2(args, needle, tmp_path, capsys):
    code, out, err = run_cli(["run"] + args + ["--results-dir", str(tmp_path), "--quiet"], capsys)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*/COMPLETE"))


def own_benchmark(tmp_path):
    """A user's own benchmark YAML over (symlinks to) the tiny synthetic clips."""
    import pandas as pd

    from avcl_bench.data.synth import generate_synth_av

    src = generate_synth_av(None, size="tiny", seed=0, progress=False)
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    for f in sorted((src / "clips").iterdir()):
        os.symlink(f, root / "clips" / f.name)
    pd.read_csv(src / "splits.csv").to_csv(tmp_path / "splits.csv", index=False)
    (tmp_path / "mine.yaml").write_text(
        "name: mine\nsplits: splits.csv\nclasses: " + str(src / "classes.csv") + "\n"
        "protocols: {p: {num_tasks: 4, memory: {per_class: 2}}}\ninputs: [clips]\n"
        f"data_root: {root}\nclips: {{audio: {{sample_rate: 16000, duration: 2.0, n_fft: 256, win_length: 256, "
        "hop_length: 128}, visual: {size: 64}}\n"
    )
    base = [
        "run",
        "--strategy",
        "finetune",
        "--benchmark",
        str(tmp_path / "mine.yaml"),
        "--results-dir",
        str(tmp_path / "runs"),
        "--set",
        "train.epochs=1",
        "--quiet",
    ]
    return root, pd.read_csv(src / "splits.csv"), base


@pytest.mark.slow
def test_missing_clips_fail_or_are_skipped_and_counted(tmp_path, capsys):
    root, splits, base = own_benchmark(tmp_path)
    for g in splits[splits.split == "train"]["id"].iloc[:2]:
        (root / "clips" / f"{g}.mp4").unlink()
    code, _, err = run_cli(base + ["--run-id", "strict"], capsys)
    assert code == 2 and "2 of" in err and "missing" in err
    assert not (tmp_path / "runs" / "strict" / "COMPLETE").exists()
    code, _, err = run_cli(base + ["--run-id", "lenient", "--allow-missing"], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "runs" / "lenient" / "metrics.json").read_text())
    assert m["run"]["missing_clips"] == 2


def test_corrupt_clip_is_one_line_error(tmp_path, capsys):
    root, splits, base = own_benchmark(tmp_path)
    victim = root / "clips" / f"{splits['id'].iloc[3]}.mp4"
    victim.unlink()
    victim.write_bytes(b"\x00not an mp4" * 100)
    code, _, err = run_cli(base + ["--run-id", "c"], capsys)
    assert code == 2 and victim.name in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "c" / "COMPLETE").exists()
    assert json.loads((tmp_path / "runs" / "c" / "status.json").read_text())["state"] == "failed"
