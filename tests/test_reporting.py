"""Reports from fixture run directories (no training): leaderboard, tables, published values, plots.

Fixture runs are written through avcl_bench.rundir with known accuracy matrices, so every number
the report shows can be computed by hand here.
"""

import csv
import math

import numpy as np
import pandas as pd
import pytest

from avcl_bench import metrics
from avcl_bench.reporting import generate_report
from avcl_bench.reporting.published import load_published
from avcl_bench.rundir import RunDir

MODS = ("audio", "visual", "audio-visual")


def lower(T, base, drop=10.0, seed_shift=0.0):
    """A T x T accuracy matrix: task j starts at base - 2j and loses `drop` per later step."""
    R = [[None] * T for _ in range(T)]
    for i in range(T):
        for j in range(i + 1):
            R[i][j] = max(0.0, base - 2 * j - drop * (i - j) + seed_shift)
    return R


def write_run(
    results,
    run_id,
    strategy,
    benchmark="vggsound-instruments",
    protocol="cign",
    modality="audio-visual",
    seed=0,
    matrices=None,
    sizes=None,
    strategy_cfg=None,
    epochs=100,
    complete=True,
    embeddings=None,
    wrong_metrics_json=False,
    catalogue=None,
):
    """A run directory as the runner writes it, with the given matrices ({modality: R})."""
    T = len(next(iter(matrices.values())))
    sizes = sizes or [10] * T
    rd = RunDir.create(results, run_id)
    cfg = {
        "benchmark": benchmark,
        "protocol": protocol,
        "num_tasks": T,
        "modality": modality,
        "input": "clips",
        "seed": seed,
        "results_dir": str(results),
        "run_id": run_id,
        "device": "cpu",
        "progress": False,
        "train": {"epochs": epochs, "lr": 1e-4},
        "strategy": {"name": strategy, **(strategy_cfg or {})},
    }
    rd.write_config(cfg)
    rd.write_status("running")
    for m, R in matrices.items():
        rd.write_matrix(m, R, sizes)
    if not complete:
        rd.write_status("failed", error="RuntimeError: boom")
        return rd
    out = {"definitions": metrics.DEFINITIONS, "modalities": {}}
    for m, R in matrices.items():
        full = [[np.nan if v is None else v for v in row] for row in R]
        out["modalities"][m] = metrics.all_metrics(full, sizes)
        if wrong_metrics_json:
            out["modalities"][m]["avg_acc"] = 99.0
    out["run"] = {
        "strategy": strategy,
        "benchmark": benchmark,
        "protocol": protocol,
        "modality": modality,
        "seed": seed,
        "num_tasks": T,
        "num_classes": 4 * T,
        "parameters": 1234,
        "buffer_size": 40,
    }
    if catalogue is not None:  # as the runner records it
        out["run"].update(display_name=catalogue["display_name"], catalogue=catalogue)
    out["timing"] = {"total_s": 12.5, "train_s": 10.0}
    out["memory"] = {"peak_rss_mb": 321.0}
    rd.write_json("metrics.json", out)
    rd.write_json("environment.json", {"git_commit": "abc123"})
    if embeddings is not None:
        from avcl_bench.embeddings import write_npz

        write_npz(rd.path / "embeddings.npz", **embeddings)
    rd.write_status("complete")
    rd.mark_complete()
    return rd


def fixture_embeddings(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 12)
    centres = rng.normal(size=(4, 16)) * 5
    X = centres[labels] + rng.normal(size=(len(labels), 16))
    return {
        "labels": labels,
        "class_names": ["flute", "cello", "bass_guitar", "accordion"],
        "meta": {"source": "fixture"},
        "audio-visual": X,
        "audio": X[:, :8],
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Fixture results: 2 strategies x 2-3 seeds on vggsound-instruments, CIGN (all modalities from one run,
    with an ablation variant and embeddings), one failed run, one on synth-av; then the full report."""
    root = tmp_path_factory.mktemp("rep")
    results = root / "runs"
    T = 4
    for seed, shift in ((0, 0.0), (1, 2.0), (2, 4.0)):
        for m in MODS:
            write_run(
                results,
                f"lwf_{m}_s{seed}",
                "lwf",
                modality=m,
                seed=seed,
                matrices={m: lower(T, 80, 10, shift)},
                wrong_metrics_json=(seed == 0 and m == "audio"),
            )
    for seed, shift in ((0, 0.0), (1, 1.0)):
        for m in MODS:
            write_run(
                results, f"joint_{m}_s{seed}", "joint", modality=m, seed=seed, matrices={m: lower(T, 90, 1, shift)}
            )
        write_run(
            results,
            f"cign_s{seed}",
            "cign",
            seed=seed,
            matrices={m: lower(T, 85, 4, shift + k) for k, m in enumerate(MODS)},
            strategy_cfg={"avctd": True, "avcg": True},
            embeddings=fixture_embeddings(seed) if seed == 0 else None,
        )
    # an ablation variant of CIGN on the same benchmark: must not enter Table 1
    write_run(
        results,
        "cign_noavctd_s0",
        "cign",
        seed=0,
        matrices={m: lower(T, 60, 15) for m in MODS},
        strategy_cfg={"avctd": False, "avcg": True},
    )
    # a second configuration of lwf (more epochs, one seed): fewer seeds, so not the one shown
    write_run(
        results, "lwf_e5_av_s0", "lwf", modality="audio-visual", epochs=5, matrices={"audio-visual": lower(T, 10, 1)}
    )
    write_run(
        results, "ewc_failed", "ewc", matrices={"audio-visual": lower(2, 50)[:1] + [[None, None]]}, complete=False
    )
    for seed in (0, 1):
        write_run(
            results,
            f"ft_synth_s{seed}",
            "finetune",
            benchmark="synth-av",
            seed=seed,
            matrices={"audio-visual": lower(T, 70, 20, seed)},
        )
    out = root / "reports"
    lb = root / "results" / "leaderboard.csv"
    summary = generate_report(results_dirs=[results], out_dir=out, leaderboard_path=lb, log=lambda m: None)
    return {"root": root, "results": results, "out": out, "lb": lb, "summary": summary, "T": T}


@pytest.mark.slow
def test_leaderboard_rows_metrics_recomputed(report):
    df = pd.read_csv(report["lb"])
    # complete runs: lwf 9 + 1, joint 6, cign 2 + 1 (3 modalities each), finetune 2; the failed run is not a row
    assert len(df) == 9 + 1 + 6 + 3 * 3 + 2
    assert not (df["run_id"] == "ewc_failed").any()
    row = df[(df.run_id == "lwf_audio_s0")].iloc[0]
    R = lower(report["T"], 80, 10, 0.0)
    full = [[np.nan if v is None else v for v in r] for r in R]
    assert row["avg_acc"] == pytest.approx(metrics.average_accuracy(full), abs=1e-3)  # not metrics.json's 99.0
    assert row["forgetting"] == pytest.approx(metrics.forgetting_max(full), abs=1e-3)
    assert row["forgetting_l2p"] == pytest.approx(metrics.forgetting_l2p(full), abs=1e-3)
    assert row["parameters"] == 1234 and row["buffer_size"] == 40 and row["train_s"] == 10.0
    assert row["peak_rss_mb"] == 321.0
    assert set(df[df.strategy == "cign"]["modality"]) == set(MODS)
    assert set(df[df.strategy == "cign"]["trained_modality"]) == {"audio-visual"}
    cols = pd.read_csv(report["lb"].with_name("leaderboard_columns.csv"))
    assert {"avg_acc", "forgetting", "forgetting_l2p", "mean_inc_acc", "avcil_forgetting", "bwt"} <= set(cols["column"])
    assert "| forgetting | forgetting (L2P code) |" in (report["out"] / "leaderboard.md").read_text()
    inc = pd.read_csv(report["lb"].with_name("leaderboard_incomplete.csv"))
    assert list(inc["state"]) == ["failed"] and "boom" in inc["error"][0]
    warnings = report["summary"]["collection"].warnings
    assert any("lwf_audio_s0" in w and "differs" in w for w in warnings)


@pytest.mark.slow
def test_aggregation_over_seeds(report):
    s = pd.read_csv(report["lb"].with_name("leaderboard_summary.csv"))
    sel = s[(s.strategy == "lwf") & (s.modality == "audio") & (s.n_seeds == 3)]
    assert len(sel) == 1
    vals = [
        metrics.average_accuracy([[np.nan if v is None else v for v in r] for r in lower(4, 80, 10, sh)])
        for sh in (0.0, 2.0, 4.0)
    ]
    assert sel.iloc[0]["avg_acc_mean"] == pytest.approx(np.mean(vals), abs=1e-3)
    assert sel.iloc[0]["avg_acc_std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-3)
    assert sel.iloc[0]["avg_acc_ci95"] == pytest.approx(4.303 * np.std(vals, ddof=1) / math.sqrt(3), abs=1e-2)
    assert sel.iloc[0]["seeds"] == "0;1;2"
    # the two lwf configurations are told apart by the key that differs
    variants = set(s[(s.strategy == "lwf")]["variant"].dropna())
    assert variants == {"train.epochs=100", "train.epochs=5"}


def _md_rows(path):
    rows = {}
    for line in path.read_text().split("Suite vs. published")[0].splitlines():
        if line.startswith("| ") and not line.startswith("| Method") and not line.startswith("| AVCTD"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0] if cells[0] not in ("✓", "✗") else (cells[0], cells[1])] = cells
    return rows


@pytest.mark.slow
def test_cign_table1_layout_and_missing_cells(report):
    tables = report["out"] / "tables"
    md = (tables / "cign_table1.md").read_text()
    rows = _md_rows(tables / "cign_table1.md")
    order = [k for k in rows]
    assert order == [
        "EWC",
        "LwF",
        "iCaRL",
        "IL2M",
        "BiC",
        "PODNet",
        "SS-IL",
        "L2P",
        "DualPrompt",
        "CIGN (ours)",
        "Upper bound",
    ]
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert header.count("Avg Acc") == 3 and header.count("Forgetting") == 3
    assert header.index("Audio:") < header.index("Visual:") < header.index("Audio-Visual:")
    # missing methods are shown as missing, never filled
    assert rows["EWC"][1] == "0" and set(rows["EWC"][2:]) == {"—"}
    # lwf: mean ± std over its 3 seeds (the one-seed epochs=5 configuration is not the one shown)
    vals = [
        metrics.average_accuracy([[np.nan if v is None else v for v in r] for r in lower(4, 80, 10, sh)])
        for sh in (0.0, 2.0, 4.0)
    ]
    assert rows["LwF"][1] == "3"
    assert rows["LwF"][2] == f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}"
    # CIGN: the full method, not the avctd=False variant (60 % base); all modalities from one run
    cign_av = [
        metrics.average_accuracy([[np.nan if v is None else v for v in r] for r in lower(4, 85, 4, sh + 2)])
        for sh in (0.0, 1.0)
    ]
    assert rows["CIGN (ours)"][6] == f"{np.mean(cign_av):.2f} ± {np.std(cign_av, ddof=1):.2f}"
    assert "more than one configuration" in md


@pytest.mark.slow
def test_published_values_side_by_side_with_deltas(report):
    frame = pd.read_csv(report["out"] / "tables" / "cign_table1.csv")
    cell = frame[(frame.strategy == "lwf") & (frame.modality == "audio") & (frame.metric == "avg_acc")].iloc[0]
    assert cell["published"] == pytest.approx(26.37)
    assert cell["delta"] == pytest.approx(cell["suite_mean"] - 26.37, abs=1e-3)
    assert "Table 1" in cell["published_source"]
    ewc = frame[(frame.strategy == "ewc") & (frame.modality == "visual") & (frame.metric == "forgetting")].iloc[0]
    assert ewc["published"] == pytest.approx(39.75) and pd.isna(ewc["suite_mean"]) and pd.isna(ewc["delta"])
    ub = frame[(frame.strategy == "joint") & (frame.metric == "forgetting")]
    assert ub["published"].isna().all()  # the paper prints '-': stays missing
    # the upper bound retrains on all data: its forgetting is printed "—" (its runs exist, n > 0)
    assert ub["suite_mean"].isna().all() and len(ub) == 3
    ub_acc = frame[(frame.strategy == "joint") & (frame.metric == "avg_acc")]
    assert ub_acc["suite_mean"].notna().all()
    md = (report["out"] / "tables" / "cign_table1.md").read_text()
    cmp_part = md.split("Suite vs. published")[1]
    assert "— / 17.32 / —" in cmp_part  # EWC audio: nothing run, the paper's value, no delta
    tex = (report["out"] / "tables" / "cign_table1.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"\multicolumn{2}{c}{Audio}" in tex
    assert tex.count(r"\begin{tabular}") == 2  # suite table + suite/paper/delta table


@pytest.mark.slow
def test_table4_ablation_and_10_tasks(report):
    rows = _md_rows(report["out"] / "tables" / "cign_table4.md")
    assert list(rows) == [("✗", "✗"), ("✓", "✗"), ("✗", "✓"), ("✓", "✓")]
    # fixture runs are on vggsound-instruments, Table 4 is VGGSound-100: nothing is filled
    assert set(rows[("✗", "✓")][3:]) == {"—"}
    frame = pd.read_csv(report["out"] / "tables" / "cign_table4.csv")
    pub = frame[(frame.AVCTD == "✓") & (frame.AVCG == "✗") & (frame.modality == "visual") & (frame.metric == "avg_acc")]
    assert pub.iloc[0]["published"] == pytest.approx(47.12)
    ten = pd.read_csv(report["out"] / "tables" / "cign_10tasks.csv")
    assert set(ten["strategy"]) == {"cign"}
    assert ten[(ten.modality == "audio-visual") & (ten.metric == "avg_acc")].iloc[0]["published"] == pytest.approx(
        48.16
    )


@pytest.mark.slow
def test_avcil_tables_and_reference_file_is_empty(report, tmp_path):
    tables = report["out"] / "tables"
    for b in ("ave-ci", "ks-ci", "vs100-ci"):
        md = (tables / f"avcil_{b}.md").read_text()
        # no run on these benchmarks: the step count is unknown (it comes from runs, not manifests)
        assert "Mean Acc" in md and "Step 1" not in md
    pub = load_published()
    av = pub[pub.paper == "AV-CIL"]
    assert len(av) > 0 and av["value"].isna().all()  # never invented
    assert (tables / "avcil_summary.md").is_file()
    # a user-filled reference value appears with its delta
    pdir = tmp_path / "pub"
    pdir.mkdir()
    text = "\n".join(
        line for line in (load_published.__globals__["default_dir"]() / "av-cil.csv").read_text().splitlines()
    )
    text = text.replace(
        ",ave-ci,av-cil,Fine-tuning,finetune,audio-visual,,,",
        "T1,ave-ci,av-cil,Fine-tuning,finetune,audio-visual,12.5,40,user",
    )
    (pdir / "av-cil.csv").write_text(text + "\n")
    filled = load_published(pdir)
    hit = filled[(filled.strategy == "finetune") & (filled.benchmark == "ave-ci") & (filled.modality == "audio-visual")]
    assert sorted(hit["value"]) == [12.5, 40.0]


@pytest.mark.slow
def test_layout_tables_for_other_benchmarks(report):
    tables = report["out"] / "tables"
    md = (tables / "layout_cign_synth-av_cign.md").read_text()
    rows = _md_rows(tables / "layout_cign_synth-av_cign.md")
    # a researcher's own benchmark: rows only for the methods that ran there (here fine-tuning
    # alone; the empty rows of the paper's other methods and the upper bound are gone), nobody's
    # "(ours)"; the paper's own tables keep every row and their authors' mark
    assert list(rows) == ["Fine-tuning †"], rows
    assert "Suite vs. published" not in md  # no paper numbers for another benchmark
    avcil_layout = (tables / "layout_avcil_synth-av_cign.md").read_text()
    assert "(ours)" not in md and "(ours)" not in avcil_layout and "Upper bound" not in avcil_layout
    assert "CIGN (ours)" in (tables / "cign_table1.md").read_text() and "Upper bound" in _md_rows(tables / "cign_table1.md")
    assert (tables / "layout_avcil_synth-av_cign.md").is_file()
    assert (tables / "layout_ablation_vggsound-instruments_cign.md").is_file()  # the avctd=False CIGN run
    for ext in ("md", "tex", "csv"):
        assert (tables / f"cign_table2.{ext}").stat().st_size > 0
    index = (report["out"] / "index.md").read_text()
    assert "CIGN Table 1" in index and "forgetting_curves" in index


@pytest.mark.slow
def test_each_plot_file_produced_and_non_empty(report):
    figs = report["out"] / "figures"
    expected = [f"forgetting_curves/vggsound-instruments_cign_{m}" for m in MODS]
    expected += [f"heatmaps/vggsound-instruments_cign_{m}" for m in MODS]
    expected += [
        "accuracy_vs_classes/vggsound-instruments_cign",
        "accuracy_vs_classes/synth-av_cign",
        "forgetting_curves/synth-av_cign_audio-visual",
        "embeddings/vggsound-instruments_cign_audio-visual",
        "embeddings/vggsound-instruments_cign_audio",
    ]
    for base in expected:
        for ext in ("png", "pdf"):
            p = figs / f"{base}.{ext}"
            assert p.is_file() and p.stat().st_size > 1000, p
    png = (figs / "forgetting_curves/vggsound-instruments_cign_audio.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (figs / "heatmaps/vggsound-instruments_cign_audio.pdf").read_bytes()[:5] == b"%PDF-"


def test_embedding_plot_from_fixture_npz(tmp_path):
    from avcl_bench.embeddings import write_npz
    from avcl_bench.reporting.embeddings import load_npz
    from avcl_bench.reporting.plots import embeddings_figure, project_2d

    p = write_npz(tmp_path / "embeddings.npz", **fixture_embeddings())
    d = load_npz(p)
    assert set(d["embeddings"]) == {"audio-visual", "audio"} and d["class_names"][1] == "cello"
    files = embeddings_figure([("CIGN", p), ("LwF", p)], "fixture", tmp_path / "emb", method="pca")
    assert [f.suffix for f in files] == [".png", ".pdf"] and all(f.stat().st_size > 1000 for f in files)
    Z, used = project_2d(d["embeddings"]["audio"], "pca")
    assert Z.shape == (48, 2) and used == "PCA"


def test_export_embeddings_from_a_model(tmp_path):
    import torch
    from torch import nn

    from avcl_bench.embeddings import export_embeddings
    from avcl_bench.reporting.embeddings import load_npz

    class Tiny(nn.Module):
        modality = "audio-visual"

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 3)

        def forward_features(self, x):
            a, v = x
            return self.lin(torch.cat([a, v], 1))

    class Strategy:  # what the runner hands over: .model, .device, .cfg
        def __init__(self):
            self.model, self.device, self.cfg = Tiny(), torch.device("cpu"), {"strategy": {"name": "finetune"}}

    data = [((torch.randn(2), torch.randn(4)), i % 2, 0) for i in range(10)]
    path = export_embeddings(Strategy(), data, tmp_path, class_names=["a", "b"], batch_size=4)
    d = load_npz(path)
    assert d["embeddings"]["audio-visual"].shape == (10, 3) and list(d["labels"][:3]) == [0, 1, 0]
    assert d["meta"]["source"] == "forward_features" and d["meta"]["strategy"] == "finetune"

    class WithEmbed(Tiny):
        def embed(self, x):
            f = self.forward_features(x)
            return {"audio": f[:, :2], "visual": f[:, 1:]}

    path = export_embeddings(WithEmbed(), data, tmp_path, filename="e2.npz")
    assert set(load_npz(path)["embeddings"]) == {"audio", "visual"}

    class WithLabels(Tiny):  # the class-aware embedding of the ground-truth class (CIGN Fig. 3)
        def embed(self, x, y):
            return self.forward_features(x) * 0 + y.float()[:, None]

    d = load_npz(export_embeddings(WithLabels(), data, tmp_path, filename="e3.npz"))
    assert d["meta"]["source"] == "embed(x, y)"
    assert (d["embeddings"]["audio-visual"][:, 0] == d["labels"]).all()


def test_export_embeddings_on_the_first_task_of_a_real_stream(tmp_path):
    """What the runner will call at the end of a run: the first task's test experience of the tiny
    synthetic benchmark (an Avalanche dataset) through an AVNet."""
    from avcl_bench.data.datasets import load_data
    from avcl_bench.data.streams import make_streams
    from avcl_bench.embeddings import export_embeddings
    from avcl_bench.models.avnet import AVNet
    from avcl_bench.reporting.embeddings import load_npz
    from avcl_bench.runner import build_config, quiet_third_party_warnings

    quiet_third_party_warnings()
    cfg, manifest = build_config(
        "finetune",
        "synth-av",
        {"synth": {"size": "tiny"}, "num_tasks": 2, "progress": False, "model": {"encoder_width": 8, "dim": 32}},
    )
    manifest.materialize(cfg)
    data = load_data(manifest, cfg)
    scenario = make_streams(data, cfg["num_tasks"], manifest.name)
    first = list(scenario.test_stream)[0]
    k = len(data.classes) // cfg["num_tasks"]
    path = export_embeddings(AVNet(cfg), first.dataset, tmp_path, class_names=data.classes[:k])
    d = load_npz(path)
    assert d["embeddings"]["audio-visual"].shape == (len(first.dataset), 32)
    assert set(d["labels"].tolist()) == set(range(k)) and d["class_names"] == data.classes[:k]


def test_published_cign_transcription_matches_the_papers_text():
    """The differences CIGN's text states (Sec. 4.2, 4.3) follow from the transcribed tables."""
    pub = load_published()
    cign = pub[pub.paper == "CIGN"]

    def v(table, strategy, modality, metric, **flags):
        sel = (
            (cign.table == table) & (cign.strategy == strategy) & (cign.modality == modality) & (cign.metric == metric)
        )
        for k, x in flags.items():
            sel &= cign[k] == x
        (val,) = cign[sel]["value"]
        return val

    claims = [  # (table, other method, modality, metric, stated CIGN gain)
        ("Table 1", "dualprompt", "audio", "avg_acc", 5.26),
        ("Table 1", "dualprompt", "audio", "forgetting", -2.71),
        ("Table 1", "dualprompt", "visual", "avg_acc", 4.02),
        ("Table 1", "dualprompt", "visual", "forgetting", -2.54),
        ("Table 1", "dualprompt", "audio-visual", "avg_acc", 6.74),
        ("Table 1", "dualprompt", "audio-visual", "forgetting", -3.41),
        ("Table 2", "l2p", "audio", "avg_acc", 7.78),
        ("Table 2", "l2p", "visual", "avg_acc", 7.46),
        ("Table 2", "l2p", "audio-visual", "avg_acc", 7.44),
        ("Table 3", "l2p", "audio", "avg_acc", 5.60),
        ("Table 3", "l2p", "visual", "avg_acc", 6.05),
        ("Table 3", "l2p", "audio-visual", "avg_acc", 4.43),
    ]
    for table, other, mod, metric, gain in claims:
        assert v(table, "cign", mod, metric) - v(table, other, mod, metric) == pytest.approx(gain, abs=1e-6)
    # Table 4 (Sec. 4.3): AVCTD alone and both modules over the baseline
    for mod, acc_gain, forg_drop, both_acc, both_forg in (
        ("audio", 5.87, 6.02, 9.11, 9.02),
        ("visual", 7.77, 6.51, 10.17, 8.40),
        ("audio-visual", 5.97, 5.51, 10.21, 8.74),
    ):
        base = dict(avctd=False, avcg=False)
        assert v("Table 4", "cign", mod, "avg_acc", avctd=True, avcg=False) - v(
            "Table 4", "cign", mod, "avg_acc", **base
        ) == pytest.approx(acc_gain)
        assert v("Table 4", "cign", mod, "forgetting", **base) - v(
            "Table 4", "cign", mod, "forgetting", avctd=True, avcg=False
        ) == pytest.approx(forg_drop)
        assert v("Table 4", "cign", mod, "avg_acc", avctd=True, avcg=True) - v(
            "Table 4", "cign", mod, "avg_acc", **base
        ) == pytest.approx(both_acc)
        assert v("Table 4", "cign", mod, "forgetting", **base) - v(
            "Table 4", "cign", mod, "forgetting", avctd=True, avcg=True
        ) == pytest.approx(both_forg)
        # Table 4's last row equals Table 2's CIGN row
        for metric in ("avg_acc", "forgetting"):
            assert v("Table 4", "cign", mod, metric, avctd=True, avcg=True) == v("Table 2", "cign", mod, metric)
    ten = cign[cign.table == "10 tasks"]
    assert sorted(ten["value"]) == sorted([40.53, 43.29, 48.16, 13.87, 12.16, 9.75])
    with open(load_published.__globals__["default_dir"]() / "cign.csv") as fh:
        rows = [r for r in csv.DictReader(line for line in fh if not line.startswith("#"))]
    assert len(rows) == 3 * 11 + 4 + 1 and all(r["source"].startswith("CIGN (ICCV 2023)") for r in rows)


@pytest.mark.slow
def test_report_cli_one_command(tmp_path, capsys):
    from avcl_bench.cli import main

    results = tmp_path / "runs"
    for seed in (0, 1):
        write_run(
            results,
            f"ft_s{seed}",
            "finetune",
            benchmark="synth-av",
            seed=seed,
            matrices={"audio-visual": lower(4, 70, 20, seed)},
        )
    code = main(
        [
            "report",
            "--results-dir",
            str(results),
            "--out",
            str(tmp_path / "rep"),
            "--leaderboard",
            str(tmp_path / "lb.csv"),
            "--no-plots",
            "--quiet",
        ]
    )
    assert code == 0
    assert "2 runs" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "lb.csv")) == 2
    assert (tmp_path / "rep" / "tables" / "cign_table1.tex").is_file()
    # --where keeps only the runs whose resolved config matches
    code = main(
        [
            "report",
            "--results-dir",
            str(results),
            "--out",
            str(tmp_path / "rep"),
            "--leaderboard",
            str(tmp_path / "lb.csv"),
            "--no-plots",
            "--quiet",
            "--where",
            "seed=1",
        ]
    )
    assert code == 0 and list(pd.read_csv(tmp_path / "lb.csv")["seed"]) == [1]
    # an --out folder holding someone's own files is not wiped
    own = tmp_path / "mine"
    (own / "tables").mkdir(parents=True)
    (own / "tables" / "notes.txt").write_text("keep")
    assert (
        main(
            [
                "report",
                "--results-dir",
                str(results),
                "--out",
                str(own),
                "--leaderboard",
                str(tmp_path / "x.csv"),
                "--no-plots",
                "--quiet",
            ]
        )
        == 2
    )
    assert (own / "tables" / "notes.txt").read_text() == "keep"


def test_step_columns_come_from_the_runs(tmp_path):
    """An AV-CIL table has as many step columns as its runs have tasks (K-S-CI here: 5)."""
    results = tmp_path / "runs"
    write_run(
        results, "ft_ks", "finetune", benchmark="ks-ci", protocol="av-cil", matrices={"audio-visual": lower(5, 70)}
    )
    generate_report(
        results_dirs=[results],
        out_dir=tmp_path / "rep",
        leaderboard_path=tmp_path / "lb.csv",
        plots=False,
        log=lambda m: None,
    )
    md = (tmp_path / "rep" / "tables" / "avcil_ks-ci.md").read_text()
    assert "Step 5" in md and "Step 6" not in md
    assert "Step 1" not in (tmp_path / "rep" / "tables" / "avcil_ave-ci.md").read_text()


def test_methods_are_named_by_the_catalogue_their_runs_recorded(tmp_path):
    """A method from outside the package: its recorded display name in the leaderboard, the tables
    (in the paper table its catalogue lists, else as an extra row) and the figures; a built-in
    strategy's recorded display name wins over today's YAML."""
    results = tmp_path / "runs"
    listed = {
        "name": "mine",
        "display_name": "Mine (ext)",
        "paper": "",
        "tables": ["cign-table1"],
        "modalities": ["audio-visual"],
    }
    other = {**listed, "name": "other", "display_name": "Other method", "tables": []}
    for seed in (0, 1):
        write_run(
            results,
            f"mine_s{seed}",
            "/abs/my_method.py:Mine",
            seed=seed,
            catalogue=listed,
            matrices={"audio-visual": lower(4, 75, 5, seed)},
        )
    write_run(results, "other_s0", "pkg.mod:Other", catalogue=other, matrices={"audio-visual": lower(4, 60)})
    write_run(
        results,
        "lwf_s0",
        "lwf",
        catalogue={**listed, "name": "lwf", "display_name": "LwF (renamed)", "tables": ["cign-table1"]},
        matrices={"audio-visual": lower(4, 50)},
    )
    generate_report(
        results_dirs=[results], out_dir=tmp_path / "rep", leaderboard_path=tmp_path / "lb.csv", log=lambda m: None
    )
    rows = _md_rows(tmp_path / "rep" / "tables" / "cign_table1.md")
    assert list(rows)[-3:] == ["Mine (ext)", "Other method †", "Upper bound"]  # after the paper's, before the bound
    assert "LwF (renamed)" in rows and rows["Mine (ext)"][1] == "0/0/2"
    lb = pd.read_csv(tmp_path / "lb.csv")
    assert set(lb[lb.strategy == "/abs/my_method.py:Mine"]["display_name"]) == {"Mine (ext)"}
    assert "| Mine (ext) |" in (tmp_path / "rep" / "leaderboard.md").read_text()
    assert (tmp_path / "rep" / "figures" / "heatmaps" / "vggsound-instruments_cign_audio-visual.png").is_file()
    from avcl_bench.reporting.collect import collect
    from avcl_bench.reporting.plots import representatives

    col = collect([results])
    groups = representatives(col, "vggsound-instruments", "cign", "audio-visual")
    assert [g.display_name for g in groups] == ["LwF (renamed)", "Mine (ext)", "Other method"]


def test_forgetting_curve_legends_name_the_tasks_classes():
    """Legends name each task's classes as the run recorded them (metrics.json run.classes, in the
    run's class order); a task of many classes shows two and the count; no names: numbers."""
    import types

    from avcl_bench.reporting.plots import _task_classes

    def group(classes, num_classes, tasks):
        first = types.SimpleNamespace(num_classes=num_classes, info={"run": {"classes": classes}})
        return types.SimpleNamespace(first=first, num_tasks=tasks)

    g = group(["cat", "dog", "owl", "bee"], 4, 2)
    assert [_task_classes(g, j) for j in range(2)] == ["Task 1: cat, dog", "Task 2: owl, bee"]
    many = group([f"c{i}" for i in range(20)], 20, 2)
    assert _task_classes(many, 1) == "Task 2: c10, c11, … (10 classes)"
    assert _task_classes(group(None, 4, 2), 1) == "Task 2 (classes 3–4)"
