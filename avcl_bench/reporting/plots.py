"""Figures (PNG and PDF, matplotlib with the Agg backend, seaborn heatmaps).

- forgetting curves: accuracy on each task's test set after every step, one panel per strategy;
- average accuracy versus number of classes seen, all strategies of a benchmark on one figure
  (one panel per modality);
- accuracy-matrix heatmaps, one panel per strategy;
- t-SNE (PCA without scikit-learn) of the final model's embeddings on the first task's classes,
  one panel per strategy, from each run's ``embeddings.npz`` (CIGN Fig. 3).

Each figure is one configuration per strategy (the one the tables show) averaged over its seeds;
shaded bands / error bars are ± one standard deviation over seeds. Methods are named by the display
name of the catalogue (what their runs recorded) and ordered as the paper's tables.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np

from ..strategies import UPPER_BOUND, paper_order_key
from ..rundir import temporary_beside
from .collect import Collection, Group, pick_group
from .tables import AVCIL_PAPER, CIGN_PAPER, MOD_TITLE, MODALITIES, full_method, shows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "legend.fontsize": 8,
            "xtick.labelsize": 8,
            "ytick.labelsize": 8,
            "savefig.dpi": 200,
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    return plt


#: Fixed, distinguishable colours (the upper bound black and dashed in line plots).
COLORS = {
    "finetune": "#7f7f7f",
    "ewc": "#1f77b4",
    "lwf": "#ff7f0e",
    "icarl": "#2ca02c",
    "il2m": "#d62728",
    "bic": "#9467bd",
    "podnet": "#8c564b",
    "ssil": "#e377c2",
    "afc": "#bcbd22",
    "l2p": "#17becf",
    "dualprompt": "#1b2a6b",
    "av-cil": "#e6ab02",
    "cign": "#a50f15",
    "joint": "#000000",
}
_EXTRA = ["#66a61e", "#7570b3", "#e7298a", "#a6761d", "#1b9e77", "#d95f02"]


def color_of(strategy: str):
    if strategy in COLORS:
        return COLORS[strategy]
    return _EXTRA[sum(map(ord, strategy)) % len(_EXTRA)]


def save(fig, base: Path) -> list[Path]:
    """Write ``base.png`` and ``base.pdf`` atomically; returns both paths."""
    plt = _plt()
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        path = base.with_name(base.name + f".{ext}")
        fd, tmp = temporary_beside(path, suffix=f".{ext}")
        os.close(fd)
        try:
            fig.savefig(tmp, format=ext, bbox_inches="tight")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        out.append(path)
    plt.close(fig)
    return out


def representatives(col: Collection, benchmark: str, protocol: str, modality: str) -> list[Group]:
    """The group per strategy that the tables show for this cell, in the papers' row order."""
    family = (AVCIL_PAPER if protocol == "av-cil" else CIGN_PAPER)[0]
    present = {
        (g.strategy, g.variant_name)
        for g in col.groups
        if g.benchmark == benchmark and g.protocol == protocol and g.modality == modality and full_method(g.cfg)
    }
    order = paper_order_key(family)
    out = []
    for s, v in sorted(present, key=lambda sv: (order(sv[0]), sv[1])):  # a method, then its named variants
        g, _ = pick_group(col.groups, s, benchmark, protocol, modality, shows(v))
        if g is not None:
            out.append(g)
    return out


def _grid(n: int, max_cols: int = 4, w: float = 3.0, h: float = 2.6):
    plt = _plt()
    ncols = min(max_cols, max(1, n))
    nrows = math.ceil(max(1, n) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(w * ncols, h * nrows + 0.6), squeeze=False, sharex=False, sharey=True
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat[:n]


#: the most class names a legend entry lists (a task of more shows the first two and the count)
LEGEND_NAMES = 4


def _task_classes(g: Group, j: int) -> str:
    """The legend of task j: its classes by the names the run recorded (metrics.json, in the run's
    class order), else by number."""
    C, T = g.first.num_classes, g.num_tasks
    if not C or C % T:
        return f"Task {j + 1}"
    k = C // T
    names = (g.first.info.get("run") or {}).get("classes")
    if isinstance(names, list) and len(names) == C and all(isinstance(n, str) for n in names):
        mine = names[j * k : (j + 1) * k]
        shown = ", ".join(mine) if k <= LEGEND_NAMES else f"{mine[0]}, {mine[1]}, … ({k} classes)"
        return f"Task {j + 1}: {shown}"
    return f"Task {j + 1} (classes {j * k + 1}–{(j + 1) * k})"


def forgetting_curves(groups: list[Group], title: str, base: Path) -> list[Path]:
    """One panel per strategy: R[i][j] against step i for every task j (mean ± std over seeds)."""
    import matplotlib

    fig, axes = _grid(len(groups))
    T = max(g.num_tasks for g in groups)
    cmap = matplotlib.colormaps["viridis"]  # task colours: first task dark, last task yellow
    handles = None
    for ax, g in zip(axes, groups):
        Rs = g.matrices()
        with warnings.catch_warnings():  # entries above the diagonal are NaN in every seed
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = np.nanmean(Rs, axis=0), (np.nanstd(Rs, axis=0, ddof=1) if len(Rs) > 1 else None)
        lines = []
        for j in range(g.num_tasks):
            x = np.arange(j, g.num_tasks) + 1
            y = mean[j:, j]
            c = cmap(j / max(1, T - 1))
            (ln,) = ax.plot(x, y, marker="o", ms=3, lw=1.4, color=c, label=_task_classes(g, j))
            if std is not None:
                ax.fill_between(
                    x, np.clip(y - std[j:, j], 0, 100), np.clip(y + std[j:, j], 0, 100), color=c, alpha=0.15, lw=0
                )
            lines.append(ln)
        if handles is None or len(lines) > len(handles):
            handles = lines
        ax.set_title(f"{g.display_name} (n={g.n})")
        ax.set_xticks(range(1, g.num_tasks + 1))
        ax.set_ylim(-3, 103)
        ax.set_xlabel("Tasks learnt (step)")
        ax.set_ylabel("Accuracy on the task's test set (%)")
        ax.label_outer()
    fig.suptitle(title)
    legend_rows = math.ceil(len(handles) / 5)
    height = fig.get_size_inches()[1]
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, min(0.3, (0.15 + 0.22 * legend_rows) / height), 1, 1))
    return save(fig, base)


def accuracy_vs_classes(by_modality: dict[str, list[Group]], title: str, base: Path, step_accuracy: bool) -> list[Path]:
    """Average accuracy (or AV-CIL step accuracy) after each step against the classes seen so far."""
    plt = _plt()
    mods = [m for m in MODALITIES if by_modality.get(m)]
    fig, axes = plt.subplots(1, len(mods), figsize=(3.6 * len(mods), 3.2), squeeze=False, sharey=True)
    seen_labels = {}
    for ax, m in zip(axes.flat, mods):
        for g in by_modality[m]:
            curves = g.step_acc() if step_accuracy else g.avg_acc_curve()
            T = g.num_tasks
            C = g.first.num_classes
            x = (np.arange(T) + 1) * (C // T) if C and C % T == 0 else np.arange(T) + 1
            y = curves.mean(axis=0)
            err = curves.std(axis=0, ddof=1) if len(curves) > 1 else None
            h = ax.errorbar(
                x,
                y,
                yerr=err,
                marker="o",
                ms=3.5,
                lw=1.5,
                capsize=2,
                color=color_of(g.strategy),
                ls="--" if g.strategy == UPPER_BOUND else "-",
                label=g.display_name,
            )
            seen_labels[g.display_name] = h
        ax.set_title(MOD_TITLE[m])
        ax.set_xlabel("Number of classes seen" if by_modality[m] and by_modality[m][0].first.num_classes else "Step")
        ax.set_ylabel("Accuracy on all seen classes (%)" if step_accuracy else "Average accuracy over seen tasks (%)")
        ax.set_ylim(-3, 103)
        ax.label_outer()
    fig.suptitle(title)
    fig.legend(
        list(seen_labels.values()),
        list(seen_labels.keys()),
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        frameon=False,
    )
    fig.tight_layout()
    return save(fig, base)


def heatmaps(groups: list[Group], title: str, base: Path) -> list[Path]:
    """Mean accuracy matrix per strategy (rows: after task i, columns: task j)."""
    import matplotlib
    import seaborn as sns

    _plt()
    fig, axes = _grid(len(groups), w=2.9, h=2.7)
    for ax, g in zip(axes, groups):
        with warnings.catch_warnings():  # entries above the diagonal are NaN in every seed
            warnings.simplefilter("ignore", RuntimeWarning)
            R = np.nanmean(g.matrices(), axis=0)
        mask = np.triu(np.ones_like(R, dtype=bool), k=1)
        ticks = [str(i + 1) for i in range(g.num_tasks)]
        sns.heatmap(
            R,
            mask=mask,
            vmin=0,
            vmax=100,
            cmap="viridis",
            annot=g.num_tasks <= 6,
            fmt=".0f",
            annot_kws={"fontsize": 7},
            cbar=False,
            square=True,
            ax=ax,
            xticklabels=ticks,
            yticklabels=ticks,
            linewidths=0.3,
            linecolor="white",
        )
        ax.grid(False)
        ax.set_title(f"{g.display_name} (n={g.n})")
        ax.set_xlabel("Evaluated on task")
        ax.set_ylabel("After training task")
    sm = matplotlib.cm.ScalarMappable(cmap="viridis", norm=matplotlib.colors.Normalize(0, 100))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    cax = fig.add_axes((0.92, 0.15, 0.015, 0.7))
    fig.colorbar(sm, cax=cax, label="Accuracy (%)")
    return save(fig, base)


def project_2d(X: np.ndarray, method: str = "tsne", seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) projection and the name of the method used (t-SNE, or PCA as a fallback)."""
    X = np.asarray(X, dtype=np.float64)
    X = X - X.mean(axis=0, keepdims=True)
    if method == "tsne" and len(X) >= 5:
        try:
            from sklearn.manifold import TSNE
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            perplexity = float(min(30.0, max(2.0, (len(X) - 1) / 3.0)))
            # One thread: sklearn's Barnes-Hut gradient with all OpenMP threads on a busy machine is
            # orders of magnitude slower (oversubscription); the points are few.
            with threadpool_limits(1):
                Z = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(X)
            return Z, "t-SNE"
    if X.shape[1] < 2:
        X = np.hstack([X, np.zeros((len(X), 2 - X.shape[1]))])
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    return X @ vt[:2].T, "PCA"


def embedding_for(emb: dict, modality: str | None) -> tuple[np.ndarray, str] | None:
    """The embedding of ``modality`` in an embeddings file, with its panel label, or None.

    A model with one embedding per branch and none for the pair (CIGN's class-aware g_a, g_v)
    gives, for the audio-visual panel, the two concatenated ("audio ⊕ visual")."""
    if modality is None:
        key = "audio-visual" if "audio-visual" in emb else sorted(emb)[0]
        return emb[key], key
    if modality in emb:
        return emb[modality], modality
    if modality == "audio-visual" and {"audio", "visual"} <= set(emb):
        return np.hstack([emb["audio"], emb["visual"]]), "audio ⊕ visual"
    return None


def embeddings_figure(
    items: list[tuple[str, Path]],
    title: str,
    base: Path,
    method: str = "tsne",
    modality: str | None = None,
    columns: int = 4,
) -> list[Path]:
    """One panel per (label, embeddings.npz), points coloured by class (first task's classes);
    panels in rows of ``columns``. Files without an embedding of ``modality`` are left out."""
    import matplotlib

    from .embeddings import load_npz

    panels = []
    for label, path in items:
        d = load_npz(path)
        got = embedding_for(d["embeddings"], modality)
        if got is not None:
            panels.append((label, d, *got))
    if not panels:
        return []
    plt = _plt()
    n = len(panels)
    ncols = min(n, columns)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.2 * nrows), squeeze=False)
    legend = {}
    for ax, (label, d, X, key) in zip(axes.flat, panels):
        Z, used = project_2d(X, method)
        labels = np.asarray(d["labels"]).astype(int)
        names = d["class_names"]
        classes = sorted(set(labels.tolist()))
        cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for k, c in enumerate(classes):
            sel = labels == c
            name = names[c] if 0 <= c < len(names) else (names[k] if k < len(names) else str(c))
            sc = ax.scatter(Z[sel, 0], Z[sel, 1], s=10, color=cmap(k % cmap.N), label=name, alpha=0.85, lw=0)
            legend.setdefault(name, sc)
        ax.set_title(f"{label} ({key})", fontsize=10)
        ax.set_xlabel(f"{used} dimension 1 (a.u.)", fontsize=8)
        ax.set_ylabel(f"{used} dimension 2 (a.u.)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.legend(
        list(legend.values()),
        list(legend.keys()),
        loc="lower center",
        ncol=min(len(legend), 4),
        bbox_to_anchor=(0.5, 0.0),
        frameon=False,
        title="Class (first task)",
    )
    fig.tight_layout(rect=(0, 0.06 + 0.02 / nrows, 1, 1))
    return save(fig, base)


def _slug(s: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(s)).strip("-")


def plot_all(col: Collection, out_dir: Path, log=print) -> list[Path]:
    """Every figure for every benchmark/protocol in the collection; returns the files written."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    cells = sorted({(g.benchmark, g.protocol) for g in col.groups})
    for b, p in cells:
        by_mod = {m: representatives(col, b, p, m) for m in MODALITIES}
        for m, groups in by_mod.items():
            if not groups:
                continue
            name = f"{_slug(b)}_{_slug(p)}_{m}"
            written += forgetting_curves(
                groups, f"Forgetting curves: {b} ({p}), {MOD_TITLE[m]}", out_dir / "forgetting_curves" / name
            )
            written += heatmaps(
                groups, f"Accuracy matrices R[i][j] (%): {b} ({p}), {MOD_TITLE[m]}", out_dir / "heatmaps" / name
            )
        if any(by_mod.values()):
            step = p == "av-cil"
            what = "Accuracy on all seen classes" if step else "Average accuracy"
            written += accuracy_vs_classes(
                by_mod,
                f"{what} vs. classes seen: {b} ({p})",
                out_dir / "accuracy_vs_classes" / f"{_slug(b)}_{_slug(p)}",
                step,
            )
        # embeddings (CIGN Fig. 3): per modality, one panel per strategy (its first seed's run)
        for m in MODALITIES:
            items = []
            for g in by_mod.get(m) or []:
                for r in sorted(g.runs, key=lambda r: r.seed):
                    if (r.path / "embeddings.npz").is_file():
                        items.append((g.display_name, r.path / "embeddings.npz"))
                        break
            if items:
                written += embeddings_figure(
                    items,
                    f"Embeddings of the first task's test clips: {b} ({p}), {MOD_TITLE[m]}",
                    out_dir / "embeddings" / f"{_slug(b)}_{_slug(p)}_{m}",
                    modality=m,
                )
    log(f"[report] {len(written)} figure files")
    return written
