"""The README's own-dataset walkthrough, run as written: clips -> CSV -> YAML -> check -> run with a
profile -> report, in an empty working directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from avcl_bench.paths import PROJECT_ROOT

BLOCK = re.compile(r"<!-- walkthrough:start -->\n```bash\n(.*?)```\n<!-- walkthrough:end -->", re.S)


def walkthrough() -> str:
    block = BLOCK.search((PROJECT_ROOT / "README.md").read_text(encoding="utf-8"))
    assert block, "README.md lost its walkthrough block"
    return block.group(1)


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the avcl-bench command
    env = dict(os.environ, PATH=path, AVCL_BENCH_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthrough()],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no problems found" in proc.stdout and "task 1:" in proc.stdout and "profile quick" in proc.stdout
    (run,) = (work / "results" / "runs").iterdir()
    assert (run / "COMPLETE").is_file()
    assert (work / "results" / "leaderboard.csv").is_file() and any((work / "reports" / "tables").iterdir())
