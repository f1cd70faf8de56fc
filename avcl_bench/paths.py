"""Where the suite finds its own resources and where it caches generated data."""

from __future__ import annotations

import os
from pathlib import Path

#: The directory holding the ``avcl_bench`` package: the repository root in a checkout or an editable
#: install (with ``datasets/``, ``strategies/``, ``reports/`` beside the package), ``site-packages``
#: in a built one.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Where a built package (``pip install .``, a wheel) carries the repository's ``datasets/``,
#: ``strategies/`` and ``reports/published/`` (setup.py copies them there; a checkout has no such folder).
BUNDLED_DIR = Path(__file__).resolve().parent / "_bundled"
#: Root of the suite's own resources. The bundled copy is looked for first: beside an installed package
#: sits ``site-packages``, whose ``datasets/`` may well be another distribution's package.
RESOURCES_ROOT = BUNDLED_DIR if BUNDLED_DIR.is_dir() else PROJECT_ROOT
DATASETS_DIR = RESOURCES_ROOT / "datasets"
STRATEGIES_DIR = RESOURCES_ROOT / "strategies"
#: the suite's own reference material (the papers' published numbers under ``reports/published``)
REPORTS_DIR = RESOURCES_ROOT / "reports"


def default_results_dir() -> Path:
    """Where runs go unless told otherwise: ``./results/runs`` of the directory the user works in
    (never the installed package)."""
    return Path.cwd() / "results" / "runs"


def in_workdir(path) -> Path:
    """``path`` as given, a relative one taken from the current directory."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (Path.cwd() / path).resolve()


def report_outputs(results_dirs: list[Path]) -> tuple[Path, Path]:
    """(reports folder, leaderboard CSV) beside the first results folder, in the layout of a working
    directory: runs in ``W/results/runs`` give ``W/reports`` and ``W/results/leaderboard.csv``;
    another ``X/runs`` gives ``X/reports`` and ``X/leaderboard.csv``; any other folder ``X`` gets
    both inside it (run folders are told apart by their config.yaml)."""
    first = Path(results_dirs[0])
    if first.name != "runs":
        return first / "reports", first / "leaderboard.csv"
    base = first.parent.parent if first.parent.name == "results" else first.parent
    return base / "reports", first.parent / "leaderboard.csv"


def cache_dir() -> Path:
    """Root of generated and decoded data: ``$AVCL_BENCH_CACHE`` or ``~/.cache/avcl-bench``."""
    root = os.environ.get("AVCL_BENCH_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "avcl-bench"


#: Longest clip or run id: file names are at most 255 bytes, and ids get suffixes (".mp4", ".tmp-...").
MAX_NAME_LENGTH = 200


def name_problem(value) -> str | None:
    """Why ``value`` cannot be a clip or run id (a file name inside one folder), or None when it can.

    Ids name files and folders under a root the user chose: ``..``, an absolute path or a separator
    would reach outside it, so an id is a plain name."""
    text = str(value)
    if not text or text.strip() != text:
        return "is empty or has leading/trailing spaces"
    if text in (".", ".."):
        return "is a relative path, not a name"
    if "/" in text or "\\" in text or "\0" in text:
        return "contains a path separator (ids are names, not paths)"
    if len(text.encode()) > MAX_NAME_LENGTH:
        return f"is {len(text.encode())} bytes long (at most {MAX_NAME_LENGTH})"
    return None
