"""Resume after interruption, real signals, determinism."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avcl_bench.cli import main
from avcl_bench.rundir import read_matrix

TINY = ["--set", "synth.size=tiny", "--set", "train.epochs=2", "--set", "train.batch_size=16", "--quiet"]


def _matrix(run_dir: Path, modality="audio-visual"):
    return read_matrix(run_dir / f"accuracy_{modality}.csv")[0]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["finetune", "joint"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(strategy, tmp_path, interrupt_after_task):
    base = ["run", "--strategy", strategy, "--results-dir", str(tmp_path)] + TINY
    assert main(base + ["--run-id", "straight"]) == 0
    interrupt_after_task(2)
    assert main(base + ["--run-id", "cut"]) == 130
    cut = tmp_path / "cut"
    assert not (cut / "COMPLETE").exists()
    assert json.loads((cut / "status.json").read_text())["state"] == "interrupted"
    assert (cut / "checkpoint.pt").is_file()
    partial = _matrix(cut)
    assert partial[1][1] is not None and partial[2][0] is None  # two tasks measured, kept on disk
    interrupt_after_task(None)
    assert main(["run", "--resume", str(cut), "--quiet"]) == 0
    assert (cut / "COMPLETE").is_file() and not (cut / "checkpoint.pt").exists()
    assert _matrix(cut) == _matrix(tmp_path / "straight")
    m = json.loads((cut / "metrics.json").read_text())
    assert m["run"]["resumed"] is True and m["timing"]["sessions"] == 2
    # the total counts the first session too: at least the training and evaluation of all tasks
    assert m["timing"]["total_s"] >= m["timing"]["train_s"] + m["timing"]["eval_s"]


def test_sessions_counts_every_session_whose_work_the_result_holds(tmp_path, interrupt_after_task):
    """Cut after tasks 1, 2 and 3 (a checkpoint each), then the last session: four sessions hold
    work of the result (it said 2 for any number)."""
    base = ["run", "--strategy", "finetune", "--results-dir", str(tmp_path), "--run-id", "cut"] + TINY
    interrupt_after_task(1)
    assert main(base) == 130
    for task in (2, 3):
        interrupt_after_task(task)
        assert main(["run", "--resume", str(tmp_path / "cut"), "--quiet"]) == 130
    interrupt_after_task(None)
    assert main(["run", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert m["timing"]["sessions"] == 4 and m["run"]["resumed"] is True


@pytest.mark.slow
def test_same_seed_gives_identical_matrices(tmp_path):
    base = ["run", "--strategy", "finetune", "--results-dir", str(tmp_path), "--seed", "3"] + TINY
    assert main(base + ["--run-id", "a"]) == 0
    assert main(base + ["--run-id", "b"]) == 0
    assert _matrix(tmp_path / "a") == _matrix(tmp_path / "b")


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resume_completes(tmp_path):
    run_dir = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "avcl_bench.cli",
        "run",
        "--strategy",
        "finetune",
        "--results-dir",
        str(tmp_path),
        "--run-id",
        "killed",
        "--set",
        "synth.size=tiny",
        "--set",
        "train.epochs=6",
        "--set",
        "train.batch_size=16",
        "--quiet",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run_dir / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint after 240 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and "--resume" in status["resume_with"]
    assert not (run_dir / "COMPLETE").exists()
    assert not list(run_dir.glob(".*.tmp"))  # no torn file left behind
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 0
    assert (run_dir / "COMPLETE").is_file()


def test_resume_refuses_a_complete_run(tmp_path, capsys):
    assert main(["run", "--strategy", "finetune", "--results-dir", str(tmp_path), "--run-id", "done"] + TINY) == 0
    assert main(["run", "--resume", str(tmp_path / "done")]) == 2
    assert "already complete" in capsys.readouterr().err
