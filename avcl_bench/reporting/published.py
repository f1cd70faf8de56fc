"""Published reference values: CIGN's tables (transcribed) and AV-CIL's (a file the user fills in).

Files under ``reports/published/`` of the repository (a built package carries a copy, see
``avcl_bench.paths.REPORTS_DIR``; ``#`` lines are comments):

``cign.csv``
    one row per row of CIGN's Tables 1-4 and the 10-task result of Sec. 4.3, wide:
    ``<modality>_avg_acc`` / ``<modality>_forgetting`` for audio, visual, audio-visual; ``avctd`` /
    ``avcg`` for the ablation rows; ``source`` cites the table.
``av-cil.csv``
    one row per benchmark x method x modality with ``mean_acc`` / ``forgetting`` left EMPTY: the
    AV-CIL tables were not available, so nothing is invented; the user may fill them in.

Both are read into one long table: ``paper, table, benchmark, protocol, method, strategy, avctd,
avcg, modality, metric, value, source`` where ``metric`` is the suite's metric key the value
corresponds to (``avg_acc``/``forgetting`` for CIGN, ``mean_inc_acc``/``avcil_forgetting`` for
AV-CIL). Missing values are NaN and stay missing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..modalities import MODALITIES
from ..paths import REPORTS_DIR

LONG_COLUMNS = [
    "paper",
    "table",
    "benchmark",
    "protocol",
    "method",
    "strategy",
    "avctd",
    "avcg",
    "modality",
    "metric",
    "value",
    "source",
]


def default_dir() -> Path:
    return REPORTS_DIR / "published"


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#", dtype=str, keep_default_na=False)


def _num(v) -> float:
    v = str(v).strip()
    if v in ("", "-", "–", "—"):
        return float("nan")
    return float(v)


def _flag(v):
    v = str(v).strip().lower()
    if v in ("", "nan"):
        return None
    return v in ("1", "true", "yes", "y", "✓")


def load_cign(path: Path) -> pd.DataFrame:
    wide = _read(path)
    rows = []
    for _, r in wide.iterrows():
        for m in MODALITIES:
            for metric in ("avg_acc", "forgetting"):
                rows.append(
                    {
                        "paper": "CIGN",
                        "table": r["table"],
                        "benchmark": r["benchmark"],
                        "protocol": r["protocol"],
                        "method": r["method"],
                        "strategy": r["strategy"],
                        "avctd": _flag(r.get("avctd", "")),
                        "avcg": _flag(r.get("avcg", "")),
                        "modality": m,
                        "metric": metric,
                        "value": _num(r[f"{m}_{metric}"]),
                        "source": r["source"],
                    }
                )
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def load_avcil(path: Path) -> pd.DataFrame:
    wide = _read(path)
    rows = []
    for _, r in wide.iterrows():
        for col, metric in (("mean_acc", "mean_inc_acc"), ("forgetting", "avcil_forgetting")):
            rows.append(
                {
                    "paper": "AV-CIL",
                    "table": r["table"],
                    "benchmark": r["benchmark"],
                    "protocol": r["protocol"],
                    "method": r["method"],
                    "strategy": r["strategy"],
                    "avctd": None,
                    "avcg": None,
                    "modality": r["modality"],
                    "metric": metric,
                    "value": _num(r[col]),
                    "source": r["source"],
                }
            )
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def load_published(directory: Path | None = None) -> pd.DataFrame:
    """All reference values found in ``directory`` (default ``reports/published``), long form."""
    directory = Path(directory or default_dir())
    parts = []
    if (directory / "cign.csv").is_file():
        parts.append(load_cign(directory / "cign.csv"))
    if (directory / "av-cil.csv").is_file():
        parts.append(load_avcil(directory / "av-cil.csv"))
    if not parts:
        return pd.DataFrame(columns=LONG_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def lookup(
    pub: pd.DataFrame,
    *,
    table: str | None = None,
    benchmark: str | None = None,
    protocol: str | None = None,
    strategy: str,
    modality: str,
    metric: str,
    avctd=None,
    avcg=None,
    paper: str | None = None,
) -> tuple[float, str]:
    """(value, source) of one published cell; (nan, '') when there is none."""
    if pub is None or pub.empty:
        return float("nan"), ""
    sel = (pub["strategy"] == strategy) & (pub["modality"] == modality) & (pub["metric"] == metric)
    if paper is not None:
        sel &= pub["paper"] == paper
    if table is not None:
        sel &= pub["table"] == table
    if benchmark is not None:
        sel &= pub["benchmark"] == benchmark
    if protocol is not None:
        sel &= pub["protocol"] == protocol
    if avctd is not None:
        sel &= pub["avctd"] == avctd
    if avcg is not None:
        sel &= pub["avcg"] == avcg
    hit = pub[sel]
    if hit.empty:
        return float("nan"), ""
    row = hit.iloc[0]
    return float(row["value"]), str(row["source"])
