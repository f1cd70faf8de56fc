"""The papers' tables regenerated from run directories (Markdown, LaTeX booktabs, CSV).

- CIGN Tables 1-3: rows = the paper's methods in its order + upper bound, columns = Audio /
  Visual / Audio-Visual x Average Acc / Forgetting (``avg_acc`` / ``forgetting``);
- CIGN Table 4: the AVCTD / AVCG ablation of CIGN on VGGSound-100 (``strategy.avctd`` /
  ``strategy.avcg``);
- CIGN's 10-task result (VGGSound-100, protocol ``cign-10``);
- AV-CIL protocol, per benchmark (AVE-CI, K-S-CI, VS100-CI): step accuracies, mean accuracy
  (``mean_inc_acc``) and AV-CIL forgetting (``avcil_forgetting``), per modality; and a summary;
- the same layouts for any other benchmark/protocol that has runs (e.g. ``synth-av``), without
  published values (the paper's numbers are for other data).

Which methods a paper's table lists, and their names, come from the method catalogue
(``tables`` and ``display_name`` of each strategy's document, and what each run recorded:
:attr:`.collect.Collection.catalogue`); the rows keep the paper's order
(:data:`avcl_bench.strategies.PAPER_ROW_ORDER`), the paper's own method is marked "(ours)". The
number of steps of a table is that of its runs.

Every suite number is a seed aggregate of values recomputed from accuracy matrices
(:mod:`.collect`). Published values come from ``reports/published`` and are shown next to the
suite's with Δ = suite − paper. A cell without a complete run is shown as missing ("—"), never
filled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import method_name
from ..modalities import MODALITIES
from ..strategies import UPPER_BOUND, members
from .collect import Collection, Group, Stat, pick_group
from .published import lookup

MOD_TITLE = {"audio": "Audio", "visual": "Visual", "audio-visual": "Audio-Visual"}

#: The paper families of the tables: (row order in PAPER_ROW_ORDER, the paper's own method).
CIGN_PAPER = ("cign", "cign")
AVCIL_PAPER = ("avcil", "av-cil")
#: Catalogue ``tables`` keys whose methods the layouts of other benchmarks list.
CIGN_LAYOUT = ("cign-table1", "cign-table2", "cign-table3")
AVCIL_LAYOUT = ("avcil-tables",)
#: CIGN Table 4 rows: (avctd, avcg) and labels as in reports/published/cign.csv.
ABLATION_KEYS = frozenset({"avctd", "avcg"})
ABLATION_ROWS = [
    ((False, False), "w/o AVCTD and AVCG"),
    ((True, False), "AVCTD only"),
    ((False, True), "AVCG only"),
    ((True, True), "AVCTD + AVCG"),
]

#: (key, benchmark, protocol, published table, title) of the CIGN tables; the key, hyphenated, is
#: the catalogue ``tables`` key of its methods.
CIGN_TABLES = [
    ("cign_table1", "vggsound-instruments", "cign", "Table 1", "CIGN Table 1: VGGSound-Instruments (4 tasks)"),
    ("cign_table2", "vggsound-100", "cign", "Table 2", "CIGN Table 2: VGGSound-100 (4 tasks)"),
    ("cign_table3", "vggsound-sources", "cign", "Table 3", "CIGN Table 3: VGG-Sound Sources (4 tasks)"),
]
AVCIL_BENCHMARKS = [("ave-ci", "AVE-CI"), ("ks-ci", "K-S-CI"), ("vs100-ci", "VS100-CI")]

METRIC_HEAD = {
    "avg_acc": ("Avg Acc ↑ (%)", r"Avg Acc $\uparrow$"),
    "forgetting": ("Forgetting ↓ (%)", r"Forgetting $\downarrow$"),
    "mean_inc_acc": ("Mean Acc ↑ (%)", r"Mean Acc $\uparrow$"),
    "avcil_forgetting": ("Forgetting ↓ (%)", r"Forgetting $\downarrow$"),
}
MISSING_MD, MISSING_TEX = "—", "--"


@dataclass
class Column:
    group: str | None  # header spanning several columns (e.g. "Audio")
    metric: str  # metric key, or "step" for a step accuracy
    modality: str | None  # None: the row's modality
    step: int | None = None
    comparable: bool = True  # has a published counterpart

    @property
    def md(self) -> str:
        name = f"Step {self.step + 1} (%)" if self.metric == "step" else METRIC_HEAD[self.metric][0]
        return f"{self.group}: {name}" if self.group else name

    @property
    def tex(self) -> str:
        return str(self.step + 1) if self.metric == "step" else METRIC_HEAD[self.metric][1]

    @property
    def key(self) -> str:
        return f"step_acc[{self.step + 1}]" if self.metric == "step" else self.metric


@dataclass
class Cell:
    stat: Stat
    published: float = float("nan")
    source: str = ""
    config_id: str = ""
    variant: str = ""
    runs: list[str] = field(default_factory=list)
    alternatives: int = 0

    @property
    def delta(self) -> float:
        if self.stat.mean is None or math.isnan(self.published):
            return float("nan")
        return self.stat.mean - self.published


@dataclass
class Row:
    head: list[str]  # values of the table's row-header columns
    strategy: str
    modality: str | None  # for tables with a modality section
    cells: list[Cell]
    extra: bool = False  # a strategy that is not in the paper's table


@dataclass
class Table:
    key: str
    title: str
    benchmark: str
    protocol: str
    head: list[str]  # row-header column names
    columns: list[Column]
    rows: list[Row]
    compare: bool  # published values to show side by side
    paper: str = ""  # e.g. "CIGN Table 1"
    notes: list[str] = field(default_factory=list)
    sectioned: bool = False  # rows grouped by modality (AV-CIL tables)

    def filled(self) -> int:
        return sum(1 for r in self.rows for c in r.cells if c.stat.n)

    def seeds(self, row: Row) -> str:
        """Number of seeds of a row: one number, or one per column group when they differ."""
        per = {}
        for c, col in zip(row.cells, self.columns):
            per.setdefault((col.group, col.modality or row.modality), c.stat.n)
        vals = list(per.values())
        return str(vals[0]) if len(set(vals)) == 1 else "/".join(str(v) for v in vals)


# ---- formatting -----------------------------------------------------------------------------------


def _f(v: float | None, tex: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING_TEX if tex else MISSING_MD
    s = f"{v:.2f}"
    if s.startswith("-"):
        s = ("$-$" if tex else "−") + s[1:]
    return s


def fmt_stat(st: Stat, tex: bool = False, with_std: bool = True) -> str:
    if st.mean is None:
        return MISSING_TEX if tex else MISSING_MD
    if with_std and st.std is not None:
        pm = r"$\pm$" if tex else "±"
        return f"{_f(st.mean, tex)} {pm} {st.std:.2f}"
    return _f(st.mean, tex)


def _fmt_cmp(c: Cell, tex: bool = False) -> str:
    d = _f(c.delta, tex)
    if not math.isnan(c.delta) and c.delta >= 0:
        d = "+" + d
    return " / ".join((_f(c.stat.mean, tex), _f(c.published, tex), d))


TEX_CHARS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "†": r"$^\dagger$",
    "✓": r"$\checkmark$",
    "✗": r"$\times$",
    "—": "--",
    "−": "$-$",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
}


def tex_escape(s: str) -> str:
    return "".join(TEX_CHARS.get(ch, ch) for ch in str(s))


def _head_cells(row: Row) -> list[str]:
    head = list(row.head)
    if row.extra:
        head[-1] = head[-1] + " †"
    return head


def to_markdown(t: Table) -> str:
    lines = [f"### {t.title}", ""]
    heads = t.head + ["Seeds"] + [c.md for c in t.columns]
    lines.append("| " + " | ".join(heads) + " |")
    lines.append("|" + "|".join([":---"] * len(t.head) + ["---:"] * (1 + len(t.columns))) + "|")
    for r in t.rows:
        cells = [fmt_stat(c.stat, with_std=col.metric != "step") for c, col in zip(r.cells, t.columns)]
        lines.append("| " + " | ".join(_head_cells(r) + [t.seeds(r)] + cells) + " |")
    if t.compare:
        cmp_cols = [(i, c) for i, c in enumerate(t.columns) if c.comparable]
        lines += ["", f"Suite vs. published ({t.paper}): suite mean / paper / Δ (suite − paper)", ""]
        lines.append("| " + " | ".join(t.head + [c.md for _, c in cmp_cols]) + " |")
        lines.append("|" + "|".join([":---"] * len(t.head) + ["---:"] * len(cmp_cols)) + "|")
        for r in t.rows:
            lines.append("| " + " | ".join(_head_cells(r) + [_fmt_cmp(r.cells[i]) for i, _ in cmp_cols]) + " |")
    if t.notes:
        lines += [""] + [f"- {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


def _tex_tabular(t: Table, compare: bool) -> list[str]:
    cols = [(i, c) for i, c in enumerate(t.columns) if (c.comparable or not compare)]
    nh = len(t.head) + (0 if compare else 1)
    lines = [r"\begin{tabular}{" + "l" * nh + "c" * len(cols) + "}", r"\toprule"]
    groups = []  # (group, span)
    for _, c in cols:
        g = c.group if c.metric != "step" else "Step accuracy (%)"
        if groups and groups[-1][0] == g:
            groups[-1][1] += 1
        else:
            groups.append([g, 1])
    if any(g for g, _ in groups):
        top, rules, start = [""] * nh, [], nh + 1
        for g, span in groups:
            top.append(rf"\multicolumn{{{span}}}{{c}}{{{tex_escape(g or '')}}}")
            if g:
                rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines.append(" & ".join(top) + r" \\")
        lines.append("".join(rules))
    sub = [tex_escape(h) for h in t.head] + ([] if compare else ["Seeds"]) + [c.tex for _, c in cols]
    lines.append(" & ".join(sub) + r" \\")
    lines.append(r"\midrule")
    last_mod = None
    for r in t.rows:
        head = [tex_escape(h) for h in _head_cells(r)]
        if t.sectioned and last_mod is not None and r.modality != last_mod:
            lines.append(r"\midrule")
        elif t.sectioned and last_mod is not None:
            head[0] = ""  # the modality is named on the first row of its section
        last_mod = r.modality
        if compare:
            vals = [_fmt_cmp(r.cells[i], tex=True) for i, _ in cols]
        else:
            vals = [t.seeds(r)] + [fmt_stat(r.cells[i].stat, tex=True, with_std=c.metric != "step") for i, c in cols]
        lines.append(" & ".join(head + vals) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines


def to_latex(t: Table) -> str:
    """booktabs; needs \\usepackage{booktabs,graphicx,amssymb}."""
    label = "tab:avcl-" + t.key.replace("_", "-")
    lines = [
        f"% {t.title}. Generated by `avcl-bench report` from run directories; do not edit.",
        r"% Needs \usepackage{booktabs,graphicx,amssymb}.",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{tex_escape(t.title)}. Suite results, mean $\pm$ std over seeds.}}",
        rf"\label{{{label}}}",
        r"\resizebox{\linewidth}{!}{%",
    ]
    lines += _tex_tabular(t, compare=False)
    lines += ["}", r"\end{table}"]
    if t.compare:
        lines += [
            "",
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{tex_escape(t.title)}: suite / paper ({tex_escape(t.paper)}) / $\Delta$ (suite $-$ paper).}}",
            rf"\label{{{label}-vs-paper}}",
            r"\resizebox{\linewidth}{!}{%",
        ]
        lines += _tex_tabular(t, compare=True)
        lines += ["}", r"\end{table}"]
    if t.notes:
        lines += [""] + [f"% note: {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


def to_frame(t: Table) -> pd.DataFrame:
    rows = []
    for r in t.rows:
        for c, col in zip(r.cells, t.columns):
            rows.append(
                {
                    "table": t.key,
                    "benchmark": t.benchmark,
                    "protocol": t.protocol,
                    **{h: v for h, v in zip(t.head, r.head)},
                    "strategy": r.strategy,
                    "in_paper_table": not r.extra,
                    "modality": col.modality or r.modality,
                    "metric": col.key,
                    "suite_mean": c.stat.mean,
                    "suite_std": c.stat.std,
                    "suite_n": c.stat.n,
                    "suite_ci95": c.stat.ci95,
                    "published": None if math.isnan(c.published) else c.published,
                    "delta": None if math.isnan(c.delta) else c.delta,
                    "published_source": c.source,
                    "config_id": c.config_id,
                    "variant": c.variant,
                    "runs": ";".join(c.runs),
                    "other_configs": c.alternatives,
                }
            )
    return pd.DataFrame(rows)


# ---- building ---------------------------------------------------------------------------------------


#: metrics that measure forgetting: the upper bound retrains on everything seen, so it has none to
#: report; its cells print "—", as CIGN's tables do (its runs stay in the leaderboard)
FORGETTING_METRICS = ("forgetting", "forgetting_l2p", "avcil_forgetting", "forgetting_first_last", "bwt")


def _cell(g: Group | None, alt: int, metric: str, step: int | None = None) -> Cell:
    if g is None or (g.strategy == UPPER_BOUND and metric in FORGETTING_METRICS):
        return Cell(Stat(None, None, 0, None))
    if metric == "step":
        st = Stat.of(g.step_acc()[:, step]) if step < g.num_tasks else Stat(None, None, 0, None)
    else:
        st = g.stat(metric)
    return Cell(st, config_id=g.config_id, variant=g.variant, runs=[r.run_id for r in g.runs], alternatives=alt)


def _flag(cfg: dict, key: str) -> bool:
    v = (cfg.get("strategy") or {}).get(key, True)
    return bool(v) if v is not None else True


def full_method(cfg: dict) -> bool:
    """Not an ablation: CIGN with both modules (or a strategy without these switches)."""
    return _flag(cfg, "avctd") and _flag(cfg, "avcg")


def shows(variant_name: str):
    """The groups of a table row: the runs of exactly that variant ("" = the method itself, as its
    paper or release defines it)."""
    return lambda g: g.variant_name == variant_name


def _ablation_only(g: Group) -> bool:
    """A CIGN run whose only variant is the Table 4 ablation (shown in the ablation table)."""
    return g.strategy == "cign" and bool(g.method_variant) and set(g.method_variant) <= ABLATION_KEYS


def listed_rows(col: Collection, tables, paper: tuple[str, str], mark_own: bool = True) -> list[tuple[str, str, str]]:
    """(strategy, label, variant name "") of the methods whose catalogue entry lists any of
    ``tables``, in the paper's row order; in a paper's own table (``mark_own``) its authors'
    method is labelled "(ours)", never in the layout of a researcher's own benchmark."""
    family, own = paper
    return [
        (s, col.display(s) + (" (ours)" if mark_own and s == own else ""), "")
        for s in members(tables, family, col.catalogue)
    ]


def _extras(col: Collection, benchmark: str, protocol: str, listed) -> list[tuple[str, str, str]]:
    """Rows for what ran here besides the listed methods: other methods, and every named variant
    of a method (its own row, labelled with the variant's name, never in the method's row)."""
    present = sorted(
        {
            (g.strategy, g.variant_name)
            for g in col.groups
            if g.benchmark == benchmark and g.protocol == protocol and not _ablation_only(g)
        }
    )
    known = {(s, v) for s, _, v in listed}
    return [(s, method_name(col.display(s), v), v) for s, v in present if (s, v) not in known]


def _with_extras(rows, extras):
    """Extras go before the upper bound (the last row)."""
    if rows and rows[-1][0] == UPPER_BOUND:
        return list(rows[:-1]) + extras + [rows[-1]]
    return list(rows) + extras


def _common_notes(t: Table, metric_note: str) -> None:
    t.notes.append(
        "Suite: mean ± std over the seeds in column Seeds (per modality when they differ), every value "
        f"recomputed from the runs' accuracy matrices; {metric_note}"
    )
    t.notes.append("— : no complete run (or nothing published): missing, never filled.")
    if any(r.extra for r in t.rows):
        t.notes.append("† not in the paper's table.")
    alts = sum(1 for r in t.rows for c in r.cells if c.alternatives)
    if alts:
        t.notes.append(
            f"{alts} cells: more than one configuration of the method ran here; the one trained in the "
            "predicted modality with the most seeds (then the latest) is shown; every configuration is in "
            "results/leaderboard_summary.csv (narrow with `avcl-bench report --where KEY=VALUE`)."
        )
    variants = sorted({(r.head[-1], c.variant) for r in t.rows for c in r.cells if c.variant})
    for name, v in variants:
        t.notes.append(f"{name}: configuration shown: {v}")


CIGN_METRIC_NOTE = (
    "Avg Acc = mean accuracy over all tasks after the last one, Forgetting = best accuracy before the "
    "last step minus the last (Chaudhry et al. 2018; can be negative; CIGN Sec. 4.1 gives no formula); "
    "the L2P release's variant, whose maximum includes the last step (>= 0), is forgetting_l2p in "
    "results/leaderboard.csv (avcl_bench.metrics)."
)
AVCIL_METRIC_NOTE = (
    "Step k = accuracy over the test clips of all classes seen after step k; Mean Acc = mean of the "
    "step accuracies; Forgetting = AV-CIL's (best earlier accuracy updated after each step, mean over "
    "steps 2..K; avcl_bench.metrics.avcil_forgetting)."
)


def cign_table(
    col: Collection,
    pub,
    key: str,
    title: str,
    benchmark: str,
    protocol: str,
    paper_table: str | None = None,
    only_present: bool = False,
    tables=CIGN_LAYOUT,
    mark_own: bool = True,
) -> Table:
    columns = [Column(MOD_TITLE[m], metric, m) for m in MODALITIES for metric in ("avg_acc", "forgetting")]
    t = Table(
        key,
        title,
        benchmark,
        protocol,
        ["Method"],
        columns,
        [],
        compare=paper_table is not None,
        paper=f"CIGN {paper_table}" if paper_table else "",
    )
    listed = listed_rows(col, tables, CIGN_PAPER, mark_own)
    for strategy, label, vname in _with_extras(listed, _extras(col, benchmark, protocol, listed)):
        cells = []
        for c in columns:
            g, alt = pick_group(col.groups, strategy, benchmark, protocol, c.modality, shows(vname))
            cell = _cell(g, alt, c.metric)
            if paper_table and not vname:  # a variant is not the paper's method: nothing published
                cell.published, cell.source = lookup(
                    pub, paper="CIGN", table=paper_table, strategy=strategy, modality=c.modality, metric=c.metric
                )
            cells.append(cell)
        row = Row([label], strategy, None, cells, extra=(strategy, label, vname) not in listed)
        if only_present and not any(c.stat.n or not math.isnan(c.published) for c in cells):
            continue
        t.rows.append(row)
    _common_notes(t, CIGN_METRIC_NOTE)
    if paper_table:
        t.notes.append(
            f"Paper: CIGN (Mo, Pian, Tian, ICCV 2023) {paper_table}, transcribed in "
            "reports/published/cign.csv; the upper bound's forgetting is printed '-' there."
        )
    return t


def ablation_table(
    col: Collection, pub, key: str, title: str, benchmark: str, protocol: str, paper_table: str | None = None
) -> Table:
    columns = [Column(MOD_TITLE[m], metric, m) for m in MODALITIES for metric in ("avg_acc", "forgetting")]
    t = Table(
        key,
        title,
        benchmark,
        protocol,
        ["AVCTD", "AVCG"],
        columns,
        [],
        compare=paper_table is not None,
        paper=f"CIGN {paper_table}" if paper_table else "",
    )
    for (a, b), _label in ABLATION_ROWS:

        def pred(g, a=a, b=b):  # exactly the paper's ablation: no other variant in the run
            return (
                _flag(g.cfg, "avctd") == a and _flag(g.cfg, "avcg") == b and set(g.method_variant) <= ABLATION_KEYS
            )

        cells = []
        for c in columns:
            g, alt = pick_group(col.groups, "cign", benchmark, protocol, c.modality, pred)
            cell = _cell(g, alt, c.metric)
            if paper_table:
                cell.published, cell.source = lookup(
                    pub,
                    paper="CIGN",
                    table=paper_table,
                    strategy="cign",
                    modality=c.modality,
                    metric=c.metric,
                    avctd=a,
                    avcg=b,
                )
            cells.append(cell)
        t.rows.append(Row(["✓" if a else "✗", "✓" if b else "✗"], "cign", None, cells))
    _common_notes(t, CIGN_METRIC_NOTE)
    t.notes.append(
        "AVCTD = audio-visual class-token distillation (strategy.avctd), AVCG = audio-visual continual "
        "grouping (strategy.avcg); a CIGN run without these keys counts as both on."
    )
    if paper_table:
        t.notes.append(
            "Paper: CIGN Table 4 (its caption names no dataset; Sec. 4.3 says VGGSound-100 and its last "
            "row equals Table 2's CIGN row), transcribed in reports/published/cign.csv."
        )
    return t


def avcil_table(
    col: Collection,
    pub,
    key: str,
    title: str,
    benchmark: str,
    protocol: str,
    num_tasks: int,
    compare: bool = True,
    layout: bool = False,
) -> Table:
    """The AV-CIL table of one benchmark; as the ``layout`` of a benchmark outside the paper: rows
    only for the methods that ran there, and no "(ours)"."""
    columns = [Column(None, "step", None, step=i, comparable=False) for i in range(num_tasks)]
    columns += [Column(None, "mean_inc_acc", None), Column(None, "avcil_forgetting", None)]
    t = Table(
        key,
        title,
        benchmark,
        protocol,
        ["Modality", "Method"],
        columns,
        [],
        compare=compare,
        paper="AV-CIL (reference values, reports/published/av-cil.csv)" if compare else "",
        sectioned=True,
    )
    listed = listed_rows(col, AVCIL_LAYOUT, AVCIL_PAPER, mark_own=not layout)
    for m in MODALITIES:
        for strategy, label, vname in _with_extras(listed, _extras(col, benchmark, protocol, listed)):
            g, alt = pick_group(col.groups, strategy, benchmark, protocol, m, shows(vname))
            if layout and g is None:
                continue  # a method that did not run here (in this modality) has no row
            cells = []
            for c in columns:
                cell = _cell(g, alt, c.metric, c.step)
                if compare and c.comparable and not vname:
                    cell.published, cell.source = lookup(
                        pub, paper="AV-CIL", benchmark=benchmark, strategy=strategy, modality=m, metric=c.metric
                    )
                cells.append(cell)
            t.rows.append(Row([MOD_TITLE[m], label], strategy, m, cells, extra=(strategy, label, vname) not in listed))
    _common_notes(t, AVCIL_METRIC_NOTE)
    if compare:
        t.notes.append(
            "Reference: AV-CIL's published tables were not available; reports/published/av-cil.csv is "
            "left for the user to fill in (its values are empty, so the paper column shows missing)."
        )
    return t


def avcil_summary(col: Collection, pub, compare: bool = True) -> Table:
    columns = [
        Column(name, metric, None) for b, name in AVCIL_BENCHMARKS for metric in ("mean_inc_acc", "avcil_forgetting")
    ]
    t = Table(
        "avcil_summary",
        "AV-CIL protocol: mean accuracy and forgetting on AVE-CI, K-S-CI, VS100-CI",
        "ave-ci,ks-ci,vs100-ci",
        "av-cil",
        ["Modality", "Method"],
        columns,
        [],
        compare=compare,
        paper="AV-CIL (reference values, reports/published/av-cil.csv)" if compare else "",
        sectioned=True,
    )
    bench_of = {name: b for b, name in AVCIL_BENCHMARKS}
    listed = listed_rows(col, AVCIL_LAYOUT, AVCIL_PAPER)
    extras = []
    for b, _ in AVCIL_BENCHMARKS:
        extras += [e for e in _extras(col, b, "av-cil", listed) if e not in extras]
    for m in MODALITIES:
        for strategy, label, vname in _with_extras(listed, extras):
            cells = []
            for c in columns:
                b = bench_of[c.group]
                g, alt = pick_group(col.groups, strategy, b, "av-cil", m, shows(vname))
                cell = _cell(g, alt, c.metric)
                if compare and not vname:
                    cell.published, cell.source = lookup(
                        pub, paper="AV-CIL", benchmark=b, strategy=strategy, modality=m, metric=c.metric
                    )
                cells.append(cell)
            t.rows.append(Row([MOD_TITLE[m], label], strategy, m, cells, extra=(strategy, label, vname) not in listed))
    _common_notes(t, AVCIL_METRIC_NOTE)
    return t


def _num_tasks(benchmark: str, protocol: str, col: Collection) -> int:
    """Steps of a table: the most tasks among its runs (0, no step columns, without runs)."""
    return max((g.num_tasks for g in col.groups if g.benchmark == benchmark and g.protocol == protocol), default=0)


def build_tables(col: Collection, pub) -> list[Table]:
    """Every table: the papers' (always, missing cells shown) and layouts for other benchmarks."""
    tables = [
        cign_table(col, pub, key, title, b, p, paper_table=pt, tables=(key.replace("_", "-"),))
        for key, b, p, pt, title in CIGN_TABLES
    ]
    tables.append(
        ablation_table(
            col,
            pub,
            "cign_table4",
            "CIGN Table 4: ablation of AVCTD and AVCG (VGGSound-100)",
            "vggsound-100",
            "cign",
            paper_table="Table 4",
        )
    )
    tables.append(
        cign_table(
            col,
            pub,
            "cign_10tasks",
            "CIGN Sec. 4.3: 10 tasks x 10 classes on VGGSound-100",
            "vggsound-100",
            "cign-10",
            paper_table="10 tasks",
            only_present=True,
            tables=("cign-10tasks",),
        )
    )
    for b, name in AVCIL_BENCHMARKS:
        tables.append(
            avcil_table(col, pub, f"avcil_{b}", f"AV-CIL protocol: {name}", b, "av-cil", _num_tasks(b, "av-cil", col))
        )
    tables.append(avcil_summary(col, pub))
    covered = {(b, p) for _, b, p, _, _ in CIGN_TABLES} | {("vggsound-100", "cign-10")}
    covered |= {(b, "av-cil") for b, _ in AVCIL_BENCHMARKS}
    others = sorted({(g.benchmark, g.protocol) for g in col.groups} - covered)
    for b, p in others:
        # a researcher's own benchmark: only the methods that ran there, none of them "(ours)"
        tables.append(
            cign_table(
                col,
                pub,
                f"layout_cign_{b}_{p}",
                f"CIGN Tables 1-3 layout on {b} ({p})",
                b,
                p,
                only_present=True,
                mark_own=False,
            )
        )
        tables.append(
            avcil_table(
                col,
                pub,
                f"layout_avcil_{b}_{p}",
                f"AV-CIL layout on {b} ({p})",
                b,
                p,
                _num_tasks(b, p, col),
                compare=False,
                layout=True,
            )
        )
    # the ablation layout wherever CIGN ran with a module switched off (Table 4 itself is VGGSound-100)
    ablated = sorted({(g.benchmark, g.protocol) for g in col.groups if g.strategy == "cign" and not full_method(g.cfg)})
    for b, p in ablated:
        if (b, p) != ("vggsound-100", "cign"):
            tables.append(
                ablation_table(col, pub, f"layout_ablation_{b}_{p}", f"CIGN Table 4 layout on {b} ({p})", b, p)
            )
    return tables


def write_tables(tables: list[Table], out_dir: Path) -> list[Path]:
    from ..rundir import atomic_write_text

    out_dir = Path(out_dir)
    written = []
    for t in tables:
        for ext, text in (
            ("md", to_markdown(t)),
            ("tex", to_latex(t)),
            ("csv", to_frame(t).to_csv(index=False, float_format="%.4f")),
        ):
            p = out_dir / f"{t.key}.{ext}"
            atomic_write_text(p, text)
            written.append(p)
    return written
