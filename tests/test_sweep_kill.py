"""A sweep killed with SIGKILL at arbitrary points resumes to the same leaderboard as an
uninterrupted sweep, and leaves no corrupt file (real processes, really killed)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # real sweep processes, really killed

#: 2 strategies (one with an exemplar memory, saved in checkpoints) x 2 seeds, tiny runs of 3 tasks.
SWEEP = [
    "sweep",
    "--strategies",
    "finetune,icarl",
    "--benchmarks",
    "synth-av",
    "--modalities",
    "audio-visual",
    "--seeds",
    "0,1",
    "--jobs",
    "1",
    "--quiet",
    "--set",
    "synth.size=tiny",
    "--set",
    "num_tasks=4",
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=16",
    "--set",
    "model.encoder_width=8",
    "--set",
    "model.dim=32",
]
#: columns that legitimately differ between two sweeps (wall time, paths, memory, resume flags)
VOLATILE = ("time", "_s", "memory", "path", "run_dir", "resumed", "sessions", "rss", "date", "completed")


def _sweep_process(results: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "avcl_bench.cli"] + SWEEP + ["--results-dir", str(results)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )  # its own process group: the kill takes everything


def _statuses(results: Path) -> list[dict]:
    out = []
    for p in results.glob("*/status.json"):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):  # atomic writes: a status file is never torn
            raise AssertionError(f"unreadable {p}") from None
    return out


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 240.0) -> bool:
    """SIGKILL the sweep's process group as soon as ``condition()`` holds; False if it ended first."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("kill condition never met")


def _complete(results: Path) -> int:
    return len(list(results.glob("*/COMPLETE")))


def _report(results: Path, tmp: Path, name: str) -> list[dict]:
    from avcl_bench.cli import main

    board = tmp / f"{name}.csv"
    assert (
        main(
            [
                "report",
                "--results-dir",
                str(results),
                "--out",
                str(tmp / f"reports-{name}"),
                "--leaderboard",
                str(board),
                "--no-plots",
                "--quiet",
            ]
        )
        == 0
    )
    with open(board, newline="") as fh:
        rows = list(csv.DictReader(fh))
    stable = [{k: v for k, v in r.items() if not any(s in k for s in VOLATILE)} for r in rows]
    return sorted(stable, key=lambda r: (r["strategy"], r["seed"]))


def _assert_no_corrupt_file(results: Path) -> None:
    for p in results.rglob("*"):
        if not p.is_file() or p.name.startswith("."):  # hidden: temporary files of atomic writes, locks
            continue
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".yaml":
            yaml.safe_load(p.read_text())
        elif p.suffix == ".csv":
            rows = list(csv.reader(p.open()))
            assert rows and len({len(r) for r in rows}) == 1, f"ragged {p}"


def test_sigkilled_sweep_resumes_to_the_same_leaderboard(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _sweep_process(straight)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert _complete(straight) == 4

    kill_points = [
        # during the first run, right after its first task-boundary checkpoint
        lambda: any(s.get("tasks_done", 0) >= 1 for s in _statuses(killed)) and _complete(killed) == 0,
        # mid-task of a later run: two tasks done somewhere past the first complete run
        lambda: (
            _complete(killed) >= 1
            and any(s.get("state") == "running" and s.get("tasks_done", 0) >= 2 for s in _statuses(killed))
        ),
        # the instant a further run is marked complete (before the sweep records it)
        lambda: _complete(killed) >= 3,
    ]
    kills = 0
    for condition in kill_points:
        proc = _sweep_process(killed)
        kills += _kill_when(proc, condition)
        _assert_no_corrupt_file(killed)
    assert kills >= 2  # the sweep really was killed part-way (more than once)
    assert _complete(killed) < 4
    proc = _sweep_process(killed)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert _complete(killed) == 4 and not list(killed.glob("*/checkpoint.pt"))
    _assert_no_corrupt_file(killed)
    resumed = [json.loads(p.read_text())["run"]["resumed"] for p in killed.glob("*/metrics.json")]
    assert any(resumed)  # at least one run continued from its checkpoint instead of restarting

    want, got = _report(straight, tmp_path, "straight"), _report(killed, tmp_path, "killed")
    assert len(want) == len(got) == 4
    for w, g in zip(want, got):
        assert {k: (w[k], g.get(k)) for k in w if w[k] != g.get(k)} == {}, w["run_id"]
