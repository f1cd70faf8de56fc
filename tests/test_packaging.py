"""A non-editable install (a built wheel) carries the manifests, the strategy YAMLs and the published
numbers, and works from any directory: runs and reports land where the user works, nothing is
written into the repository."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
#: build leftovers and working data that a copy of the sources for the build leaves out
NOT_BUILD_INPUTS = {".git", "__pycache__", "build", "dist", ".pytest_cache", ".cache", ".whl", "results"}


def _not_build_inputs(folder, names):
    """copytree's ignore: build outputs, caches, run results and virtual environments."""
    return [
        name
        for name in names
        if name in NOT_BUILD_INPUTS
        or name.endswith(".egg-info")
        or (Path(folder, name) / "pyvenv.cfg").is_file()  # a virtual environment inside the checkout
    ]


def _repository_files() -> dict[str, tuple[int, int]]:
    """path -> (size, mtime) of every file of the repository, .git and virtual environments aside."""
    files = {}
    for folder, dirs, names in os.walk(REPO):
        # __pycache__: the test process itself may compile repository modules it imports meanwhile
        dirs[:] = [
            d for d in dirs if d not in (".git", "__pycache__") and not (Path(folder, d) / "pyvenv.cfg").is_file()
        ]
        for name in names:
            stat = Path(folder, name).stat()
            files[str(Path(folder, name).relative_to(REPO))] = (stat.st_size, stat.st_mtime_ns)
    return files


def _run(args, cwd, env, timeout=600):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_works_from_any_directory(tmp_path):
    before = _repository_files()

    # The build writes build/ and avcl_bench.egg-info into its source folder: a copy keeps the
    # repository untouched. No build isolation: nothing is downloaded, the installed setuptools and
    # wheel build it (the "test" extra requires them).
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=_not_build_inputs)
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), "."],
        cwd=source,
        env=os.environ.copy(),
    )
    (wheel,) = dist.glob("avcl_bench-*.whl")
    # A fresh virtual environment gets the wheel (and its `avcl-bench` command) by a normal install.
    # The dependencies (torch, avalanche, ...) are not downloaded again: a .pth file adds this
    # interpreter's site-packages to the new environment's path. Python processes .pth files only in
    # site directories, not in folders a .pth adds, so the repository's editable install (itself a
    # .pth + finder in that site-packages) is not active there: the wheel is the only avcl_bench.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=os.environ.copy())
    venv_python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(venv_python), "install", "--no-deps", "-q", str(wheel)],
        cwd=tmp_path,
        env=os.environ.copy(),
    )
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.rmtree(source)  # the installed package alone from here on
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cli = [str(venv / "bin" / "avcl-bench")]
    workdir = tmp_path / "work"
    workdir.mkdir()
    where = _run(
        [
            str(venv_python),
            "-c",
            "import avcl_bench, avcl_bench.paths as p; print(avcl_bench.__file__); print(p.DATASETS_DIR); "
            "print(p.STRATEGIES_DIR); print(p.REPORTS_DIR / 'published')",
        ],
        cwd=workdir,
        env=env,
    ).splitlines()
    package_file, datasets_dir, strategies_dir, published_dir = (Path(line) for line in where)
    assert package_file.is_relative_to(site), f"imported {package_file}, not the wheel under {site}"
    for folder in (datasets_dir, strategies_dir, published_dir):
        assert folder.is_relative_to(site / "avcl_bench"), folder
    assert sorted(p.name for p in datasets_dir.rglob("*.*")) == sorted(
        p.name for p in (REPO / "datasets").rglob("*") if p.suffix in (".yaml", ".csv")
    )
    assert sorted(p.name for p in published_dir.glob("*.csv")) == ["av-cil.csv", "cign.csv"]

    listing = _run([*cli, "list"], cwd=workdir, env=env)
    for path in [*(REPO / "strategies").glob("*.yaml"), *(REPO / "datasets").glob("*.yaml")]:
        assert path.stem in listing, f"'{path.stem}' missing from `avcl-bench list`:\n{listing}"

    tiny = ["--set", "synth.size=tiny", "--set", "train.epochs=1", "--quiet"]
    _run([*cli, "run", "--strategy", "finetune", "--benchmark", "synth-av", *tiny], cwd=workdir, env=env)
    (run_dir,) = (workdir / "results" / "runs").iterdir()
    assert (run_dir / "metrics.json").is_file()
    _run([*cli, "report", "--no-plots", "--quiet"], cwd=workdir, env=env)
    assert (workdir / "results" / "leaderboard.csv").is_file()
    assert (workdir / "reports" / "index.md").is_file()
    # the published numbers (bundled in the wheel) reach the tables: without them the tables differ
    (workdir / "no-published").mkdir()
    _run(
        [*cli, "report", "--no-plots", "--quiet", "--out", "reports-bare", "--published-dir", "no-published"],
        cwd=workdir,
        env=env,
    )
    table = Path("tables", "cign_table2.md")
    assert (workdir / "reports" / table).read_text() != (workdir / "reports-bare" / table).read_text()

    assert not list((site / "avcl_bench").rglob("results")), "a run wrote into the installed package"
    assert not list((site / "avcl_bench").rglob("reports/tables")), "a report wrote into the installed package"
    after = _repository_files()
    changed = sorted(path for path, stat in after.items() if before.get(path) != stat)
    assert not changed, f"written into the repository: {changed[:10]}"
