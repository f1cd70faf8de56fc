"""Results go where the user works: runs, leaderboards and reports default to the current
directory, and ``report --results-dir X`` writes beside X; nothing lands in the installed package."""

from __future__ import annotations

from conftest import SMALL_FEATURE_RUN

from avcl_bench.cli import main
from avcl_bench.paths import PROJECT_ROOT


def _snapshot(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


def test_runs_and_reports_default_to_the_current_directory(feature_benchmark, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    package_side = [_snapshot(PROJECT_ROOT / "results"), _snapshot(PROJECT_ROOT / "reports")]
    args = ["run", "--strategy", "finetune", "--benchmark", str(feature_benchmark), "--run-id", "r"]
    assert main(args + ["--set", "train.epochs=1", *SMALL_FEATURE_RUN]) == 0
    assert (work / "results" / "runs" / "r" / "COMPLETE").is_file()
    assert main(["report", "--no-plots", "--quiet"]) == 0
    assert (work / "results" / "leaderboard.csv").is_file() and any((work / "reports" / "tables").iterdir())
    assert [_snapshot(PROJECT_ROOT / "results"), _snapshot(PROJECT_ROOT / "reports")] == package_side


def test_report_writes_beside_its_results_dir(feature_benchmark, tmp_path):
    runs = tmp_path / "exp" / "runs"
    args = ["run", "--strategy", "finetune", "--benchmark", str(feature_benchmark), "--results-dir", str(runs)]
    assert main(args + ["--run-id", "r", "--set", "train.epochs=1", *SMALL_FEATURE_RUN]) == 0
    package_side = [_snapshot(PROJECT_ROOT / "results"), _snapshot(PROJECT_ROOT / "reports")]
    assert main(["report", "--results-dir", str(runs), "--no-plots", "--quiet"]) == 0
    assert (tmp_path / "exp" / "leaderboard.csv").is_file()
    assert any((tmp_path / "exp" / "reports" / "tables").iterdir())
    assert [_snapshot(PROJECT_ROOT / "results"), _snapshot(PROJECT_ROOT / "reports")] == package_side


def test_a_run_that_learned_nothing_is_flagged(feature_benchmark, tmp_path, capsys):
    """lr 1e-9: every task stays at chance right after its training; the summary and the leaderboard
    say so instead of reporting a clean forgetting number."""
    import json

    import pandas as pd

    runs = tmp_path / "runs"
    args = ["run", "--strategy", "finetune", "--benchmark", str(feature_benchmark), "--results-dir", str(runs)]
    assert (
        main(args + ["--run-id", "idle", "--set", "train.lr=1e-9", "--set", "train.epochs=1"] + SMALL_FEATURE_RUN[:-1])
        == 0
    )
    out = capsys.readouterr().out
    unlearned = json.loads((runs / "idle" / "metrics.json").read_text())["modalities"]["audio-visual"][
        "unlearned_tasks"
    ]
    assert 1 in unlearned and "did not learn task " + ", ".join(map(str, unlearned)) in out
    assert main(["report", "--results-dir", str(runs), "--no-plots", "--quiet"]) == 0
    board = pd.read_csv(tmp_path / "leaderboard.csv", dtype={"did_not_learn": str})
    assert board.loc[0, "did_not_learn"] == ";".join(map(str, unlearned))
