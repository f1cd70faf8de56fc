"""``results/leaderboard.csv``: one row per complete run and predicted modality, plus the seed
aggregate (``leaderboard_summary.csv``: mean, std, 95 % CI) and the column definitions
(``leaderboard_columns.csv``, the metric definitions being those of :mod:`avcl_bench.metrics`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import metrics
from ..rundir import atomic_write_text
from .collect import SCALAR_METRICS, Collection, Group

ID_COLUMNS = [
    "strategy",
    "display_name",
    "benchmark",
    "protocol",
    "modality",
    "trained_modality",
    "input",
    "num_tasks",
    "num_classes",
    "variant",
    "config_id",
]
COST_COLUMNS = ["train_s", "total_s", "peak_rss_mb", "peak_gpu_mb", "parameters", "buffer_size"]

COLUMN_DEFINITIONS = {
    "run_id": "name of the run directory (results/runs/<run_id>)",
    "strategy": "strategy (method): a built-in name (strategies/<name>.yaml) or the spec of a method outside the "
    "package (path/to/file.py:Class, package.module:Class, an entry-point name)",
    "display_name": "the method's name in tables and figures (its catalogue's display_name, as the run recorded it)",
    "benchmark": "benchmark name (datasets/<name>.yaml or the user's manifest)",
    "protocol": "task/memory protocol of the benchmark (e.g. cign, cign-10, av-cil)",
    "modality": "predicted modality this row's accuracy matrix is for (accuracy_<modality>.csv)",
    "trained_modality": "the run's configured modality (CIGN predicts all three from one audio-visual run)",
    "input": "input form: clips (raw mp4) or features (pre-extracted)",
    "seed": "training seed",
    "num_tasks": "number of tasks T (size of the accuracy matrix)",
    "num_classes": "number of classes",
    "variant": "config keys that distinguish this configuration from the other configurations of the same "
    "strategy/benchmark/protocol in the results (empty when there is only one)",
    "config_id": "hash of the resolved config without the seed (runs with equal config_id are seeds of one setting)",
    "config_hash": "rundir.config_hash of the resolved config (what the sweep uses to skip complete runs)",
    "step_acc": "step accuracies separated by ';' (see definitions below)",
    "did_not_learn": "tasks (1-based, ';'-separated) whose accuracy right after their training is within 5 points "
    "of chance: not learned, so their forgetting says nothing (metrics.unlearned_tasks)",
    "train_s": "training time in seconds, all tasks (metrics.json timing.train_s)",
    "total_s": "wall time of the run in seconds (metrics.json timing.total_s)",
    "peak_rss_mb": "peak resident memory of the run process in MiB",
    "peak_gpu_mb": "peak allocated GPU memory in MiB (empty on CPU)",
    "parameters": "number of model parameters at the end of the run",
    "buffer_size": "number of exemplars in the rehearsal memory at the end of the run",
    "git_commit": "commit of the suite the run was made with",
    "completed": "time the run was marked complete",
    "n_seeds": "(summary) number of seeds aggregated",
    "seeds": "(summary) the seeds aggregated",
    "<metric>_mean / _std / _ci95": "(summary) mean over seeds, sample standard deviation (ddof=1), and half-width "
    "of the 95 % confidence interval of the mean (Student t, n-1 dof); std and CI "
    "are empty for one seed",
}


def _cost(run, key):
    timing, memory, info = run.info.get("timing") or {}, run.info.get("memory") or {}, run.info.get("run") or {}
    return {
        "train_s": timing.get("train_s"),
        "total_s": timing.get("total_s"),
        "peak_rss_mb": memory.get("peak_rss_mb"),
        "peak_gpu_mb": memory.get("peak_gpu_mb"),
        "parameters": info.get("parameters"),
        "buffer_size": info.get("buffer_size"),
    }[key]


def leaderboard_frame(col: Collection) -> pd.DataFrame:
    import time

    rows = []
    for g in col.groups:
        for r in g.runs:
            res = r.results[g.modality]
            row = {
                "run_id": r.run_id,
                "strategy": r.strategy,
                "display_name": g.display_name,
                "benchmark": r.benchmark,
                "protocol": r.protocol,
                "modality": g.modality,
                "trained_modality": r.trained_modality,
                "input": r.input,
                "seed": r.seed,
                "num_tasks": r.num_tasks,
                "num_classes": r.num_classes,
                "variant": r.variant,
                "config_id": r.config_id,
                "config_hash": r.config_hash,
            }
            for m in SCALAR_METRICS:
                row[m] = res.metrics[m]
            row["step_acc"] = ";".join(f"{v:.4f}" for v in res.metrics["step_acc"])
            # tasks at chance right after their training (metrics.unlearned_tasks): retention says nothing there
            row["did_not_learn"] = ";".join(map(str, res.metrics.get("unlearned_tasks", [])))
            for k in COST_COLUMNS:
                row[k] = _cost(r, k)
            row["git_commit"] = r.git_commit
            row["completed"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r.completed_at))
            rows.append(row)
    cols = (
        ["run_id"]
        + ID_COLUMNS[:7]
        + ["seed"]
        + ID_COLUMNS[7:]
        + ["config_hash"]
        + list(SCALAR_METRICS)
        + ["step_acc", "did_not_learn"]
        + COST_COLUMNS
        + ["git_commit", "completed"]
    )
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(
        ["benchmark", "protocol", "strategy", "variant", "modality", "trained_modality", "seed"], kind="stable"
    ).reset_index(drop=True)


def summary_frame(col: Collection) -> pd.DataFrame:
    rows = []
    for g in col.groups:
        row = group_ids(g)
        row["n_seeds"] = g.n
        row["seeds"] = ";".join(str(s) for s in sorted(g.seeds))
        for m in SCALAR_METRICS:
            st = g.stat(m)
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_ci95"] = st.mean, st.std, st.ci95
        steps = g.step_acc().mean(axis=0)
        row["step_acc_mean"] = ";".join(f"{v:.4f}" for v in steps)
        for k in COST_COLUMNS:
            vals = [_cost(r, k) for r in g.runs if _cost(r, k) is not None]
            row[f"{k}_mean"] = sum(vals) / len(vals) if vals else None
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=ID_COLUMNS + ["n_seeds", "seeds"])
    return df.sort_values(
        ["benchmark", "protocol", "strategy", "variant", "modality", "trained_modality"], kind="stable"
    ).reset_index(drop=True)


def group_ids(g: Group) -> dict:
    r = g.first
    return {
        "strategy": r.strategy,
        "display_name": g.display_name,
        "benchmark": r.benchmark,
        "protocol": r.protocol,
        "modality": g.modality,
        "trained_modality": r.trained_modality,
        "input": r.input,
        "num_tasks": r.num_tasks,
        "num_classes": r.num_classes,
        "variant": r.variant,
        "config_id": r.config_id,
    }


def definitions_frame() -> pd.DataFrame:
    rows = [{"column": k, "definition": v} for k, v in COLUMN_DEFINITIONS.items()]
    rows += [{"column": k, "definition": v} for k, v in metrics.DEFINITIONS.items()]
    return pd.DataFrame(rows)


def write_leaderboard(col: Collection, path: Path) -> list[Path]:
    """Write ``path`` (per run), ``<stem>_summary.csv`` (per seed group) and ``<stem>_columns.csv``."""
    path = Path(path)
    out = [path, path.with_name(f"{path.stem}_summary.csv"), path.with_name(f"{path.stem}_columns.csv")]
    for frame, p in ((leaderboard_frame(col), out[0]), (summary_frame(col), out[1]), (definitions_frame(), out[2])):
        atomic_write_text(p, frame.to_csv(index=False, float_format="%.4f"))
    return out


def leaderboard_markdown(col: Collection) -> str:
    """The seed aggregate as a Markdown table (mean ± std, n) for reports/leaderboard.md."""
    from .tables import fmt_stat

    lines = [
        "| method | benchmark | protocol | modality | trained | variant | n | avg acc | forgetting | "
        "forgetting (L2P code) | mean inc. acc | AV-CIL forgetting |",
        "|" + "---|" * 12,
    ]
    groups = sorted(col.groups, key=lambda g: (g.benchmark, g.protocol, g.strategy, g.variant, g.modality))
    shown = ("avg_acc", "forgetting", "forgetting_l2p", "mean_inc_acc", "avcil_forgetting")
    for g in groups:
        cells = [fmt_stat(g.stat(m)) for m in shown]
        lines.append(
            f"| {g.display_name} | {g.benchmark} | {g.protocol} | {g.modality} | {g.trained_modality} | "
            f"{g.variant or ''} | {g.n} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"
