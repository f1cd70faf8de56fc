"""Methods outside the package: the three spec forms (path.py:Class, module:Class, an entry point
of the group avcl_bench.strategies), bad specs (one line, exit 2), and the example method of
examples/ swept beside a built-in strategy and shown in `avcl-bench report`."""

import json
import textwrap

import pandas as pd
import pytest
from conftest import SMALL_FEATURE_RUN

from avcl_bench.cli import main
from avcl_bench.config import load_strategy_yaml
from avcl_bench.paths import PROJECT_ROOT
from avcl_bench.strategies import canonical_spec, get_strategy, strategy_catalogue

EXAMPLE = "examples/replay_distill.py:ReplayDistill"
MODALITIES_ALL = ("audio", "visual", "audio-visual")
#: the cheapest run: the tiny generated feature benchmark, 1 epoch, D=16
QUICK = ["--set", "train.epochs=1", *SMALL_FEATURE_RUN]

MODULE = '''
from avcl_bench.strategies.base import AVCLStrategy


class {cls}(AVCLStrategy):
    """Fine-tuning under another name (the base strategy as is)."""

    doc = {{"name": "{name}", "display_name": "{display}", "modalities": {modalities},
           "params": {{"unused_knob": {{"type": "int", "default": 3, "min": 0, "source": "a test knob"}}}}}}


class NotAStrategy:
    doc = {{"name": "nope"}}
'''


def write_module(folder, module, cls, name, display, modalities=("audio-visual",)):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module}.py"
    path.write_text(MODULE.format(cls=cls, name=name, display=display, modalities=list(modalities)))
    return path


def write_dist_info(folder, dist, entry_points: dict):
    """An installed distribution as importlib.metadata sees it: <dist>-0.1.dist-info on sys.path."""
    info = folder / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[avcl_bench.strategies]\n{lines}\n")


def run_quick(spec, results, run_id, benchmark, extra=()):
    return main(
        ["run", "--strategy", spec, "--benchmark", str(benchmark), "--results-dir", str(results), "--run-id", run_id]
        + QUICK
        + list(extra)
    )


def test_file_spec_loads_class_and_document(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    cls = get_strategy(EXAMPLE)
    assert cls.__name__ == "ReplayDistill"
    doc = load_strategy_yaml(EXAMPLE)
    assert doc == cls.doc and doc is not cls.doc  # a copy: resolving a config cannot change the class
    assert canonical_spec(EXAMPLE) == f"{PROJECT_ROOT / 'examples' / 'replay_distill.py'}:ReplayDistill"
    assert strategy_catalogue(EXAMPLE)["display_name"] == "Replay + KD"
    assert get_strategy(canonical_spec(EXAMPLE)) is cls  # one module per file, whatever the spelling


def test_module_spec_runs_and_resumes_from_any_directory(
    tmp_path, monkeypatch, feature_benchmark, interrupt_after_task
):
    write_module(tmp_path / "pkg" / "ext_pkg", "methods", "ModFT", "mod-ft", "Module FT")
    (tmp_path / "pkg" / "ext_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    results = tmp_path / "runs"
    interrupt_after_task(1)
    assert run_quick("ext_pkg.methods:ModFT", results, "cut", feature_benchmark) == 130
    interrupt_after_task(None)
    saved = (results / "cut" / "config.yaml").read_text()
    assert "name: ext_pkg.methods:ModFT" in saved and "unused_knob: 3" in saved  # the document's defaults
    monkeypatch.chdir(tmp_path)
    # a run folder is data: its method is imported only when the user names it again
    assert main(["run", "--quiet", "--resume", str(results / "cut")]) == 2
    assert main(["run", "--quiet", "--resume", str(results / "cut"), "--strategy", "finetune"]) == 2
    assert main(["run", "--quiet", "--resume", str(results / "cut"), "--strategy", "ext_pkg.methods:ModFT"]) == 0
    info = json.loads((results / "cut" / "metrics.json").read_text())["run"]
    assert info["resumed"] is True and info["display_name"] == "Module FT"
    assert info["catalogue"]["name"] == "mod-ft"


def test_entry_point_name_runs(tmp_path, monkeypatch, feature_benchmark, capsys):
    write_module(tmp_path / "site", "ep_methods", "EpFT", "ep-ft", "Entry-point FT")
    write_dist_info(tmp_path / "site", "ep_dist", {"ep-ft": "ep_methods:EpFT", "ep-broken": "ep_methods:NotAStrategy"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert get_strategy("ep-ft").__name__ == "EpFT"
    assert run_quick("ep-ft", tmp_path / "runs", "ep", feature_benchmark) == 0
    info = json.loads((tmp_path / "runs" / "ep" / "metrics.json").read_text())["run"]
    assert info["strategy"] == "ep-ft" and info["display_name"] == "Entry-point FT"
    capsys.readouterr()
    assert main(["list"]) == 0
    assert "installed strategies (entry points avcl_bench.strategies): ep-broken, ep-ft" in capsys.readouterr().out


def test_declared_modalities_must_match_what_the_run_reports(tmp_path, monkeypatch, feature_benchmark, capsys):
    path = write_module(tmp_path, "three_mods", "ThreeMods", "three", "Three", MODALITIES_ALL)
    assert run_quick(f"{path}:ThreeMods", tmp_path / "runs", "three", feature_benchmark) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "declares modalities" in err[0] and "three_mods.py:ThreeMods" in err[0]


@pytest.mark.parametrize(
    "case",
    [
        "missing-file",
        "no-class",
        "not-subclass",
        "syntax",
        "no-module",
        "no-entry",
        "entry-not-subclass",
        "bad-doc",
        "bad-doc-key",
        "exits-at-import",
    ],
)
def test_bad_spec_is_one_line_exit_2(case, tmp_path, monkeypatch, capsys):
    good = write_module(tmp_path, "good_mod", "Good", "good", "Good")
    (tmp_path / "broken.py").write_text("class Broken(:\n    pass\n")
    (tmp_path / "exiter.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "bad_doc.py").write_text(
        textwrap.dedent("""
        from avcl_bench.strategies.base import AVCLStrategy
        class NoName(AVCLStrategy):
            doc = {"display_name": "x"}
        class Typo(AVCLStrategy):
            doc = {"name": "typo", "tabels": []}
    """)
    )
    write_dist_info(tmp_path, "bad_dist", {"bad-ep": "good_mod:NotAStrategy"})
    monkeypatch.syspath_prepend(str(tmp_path))
    spec, expect = {
        "missing-file": (f"{tmp_path}/nope.py:X", "file not found"),
        "no-class": (f"{good}:Missing", "defines no class 'Missing'"),
        "not-subclass": (f"{good}:NotAStrategy", "not a subclass of avcl_bench.strategies.base.AVCLStrategy"),
        "syntax": (f"{tmp_path}/broken.py:Broken", "syntax error in"),
        "no-module": ("no_such_pkg.mod:X", "no module named 'no_such_pkg.mod'"),
        "no-entry": ("no-such-method", "unknown strategy 'no-such-method'"),
        "entry-not-subclass": ("bad-ep", "not a subclass"),
        "bad-doc": (f"{tmp_path}/bad_doc.py:NoName", "needs a 'name'"),
        "bad-doc-key": (f"{tmp_path}/bad_doc.py:Typo", "unknown top-level key 'tabels'"),
        "exits-at-import": (f"{tmp_path}/exiter.py:X", "it called sys.exit(3) while being imported"),
    }[case]
    assert main(["run", "--strategy", spec, "--results-dir", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and spec in err[0], err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_example_sweeps_beside_finetune_and_appears_in_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(PROJECT_ROOT)
    results = tmp_path / "runs"
    sets = [
        "--set",
        "synth.size=tiny",
        "--set",
        "num_tasks=2",
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=16",
        "--set",
        "model.encoder_width=8",
        "--set",
        "model.dim=32",
    ]
    args = [
        "sweep",
        "--strategies",
        f"{EXAMPLE},finetune",
        "--benchmarks",
        "synth-av",
        "--results-dir",
        str(results),
        "--quiet",
    ] + sets
    assert main(args) == 0
    runs = sorted(p.name for p in results.iterdir())
    assert len(runs) == 2 and runs[1].startswith("replay-distill_synth-av_cign_audio-visual_s0_"), runs
    assert main(args + ["--dry-run"]) == 0  # planned again: both complete, skipped
    assert capsys.readouterr().out.count("skipped") == 2
    assert (
        main(
            [
                "report",
                "--results-dir",
                str(results),
                "--out",
                str(tmp_path / "reports"),
                "--leaderboard",
                str(tmp_path / "leaderboard.csv"),
                "--quiet",
            ]
        )
        == 0
    )
    lb = pd.read_csv(tmp_path / "leaderboard.csv")
    assert sorted(lb["display_name"]) == ["Fine-tuning", "Replay + KD"]
    table = (tmp_path / "reports" / "tables" / "layout_cign_synth-av_cign.md").read_text()
    assert "| Replay + KD † |" in table and "| Fine-tuning † |" in table
    assert "| Replay + KD |" in (tmp_path / "reports" / "leaderboard.md").read_text()
    assert (tmp_path / "reports" / "figures" / "heatmaps" / "synth-av_cign_audio-visual.png").is_file()


def test_sweep_plans_a_spec_by_its_catalogue(tmp_path):
    """A method whose document says one audio-visual run reports every modality is planned once,
    audio-visually (as CIGN); run ids carry its catalogue name, not the spec."""
    from avcl_bench import sweep as sw

    path = write_module(tmp_path, "all_mods", "AllMods", "all-mods", "All", MODALITIES_ALL)
    spec = f"{path}:AllMods"
    specs = sw.plan(
        [spec, "finetune"],
        ["synth-av"],
        ["audio", "visual"],
        [0],
        sets={"synth": {"size": "tiny"}},
        results_dir=tmp_path / "runs",
    )
    mine = [s for s in specs if s.strategy == spec]
    assert [(s.modality, s.predicted) for s in mine] == [("audio-visual", MODALITIES_ALL)]
    assert mine[0].run_id.startswith("all-mods_synth-av_cign_audio-visual_s0_") and mine[0].status == "pending"
    assert sorted(s.modality for s in specs if s.strategy == "finetune") == ["audio", "visual"]
    assert sw.strategy_available(spec) and not sw.strategy_available(f"{tmp_path}/gone.py:X")


def test_a_received_run_folder_runs_no_code(tmp_path, monkeypatch, feature_benchmark, interrupt_after_task, capsys):
    """A colleague's interrupted run whose config.yaml names a method file beside it: --resume
    imports nothing, says so in one line and exits 2; other options with --resume are refused."""
    results = tmp_path / "runs"
    interrupt_after_task(1)
    assert run_quick("finetune", results, "cut", feature_benchmark) == 130
    interrupt_after_task(None)
    marker = tmp_path / "ran"
    (results / "cut" / "m.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = results / "cut" / "config.yaml"
    config.write_text(config.read_text().replace("name: finetune", "name: runs/cut/m.py:X", 1))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["run", "--quiet", "--resume", "runs/cut"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outside avcl-bench" in err[0] and "runs/cut/m.py:X" in err[0], err
    assert not marker.exists()
    assert not (results / "cut" / "COMPLETE").exists()
    for extra in (["--seed", "5"], ["--set", "train.lr=0.5"], ["--run-id", "other"], ["--strategy", "lwf"]):
        assert main(["run", "--quiet", "--resume", "runs/cut", *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and (extra[0] in err[0] or "not of --strategy" in err[0]), (extra, err)
    assert not marker.exists()


def test_a_method_without_defaults_trains_with_the_papers_settings(tmp_path, monkeypatch):
    """A strategy document with no ``defaults:`` once trained 1 epoch per task (the schema's value)
    on every real benchmark; it gets the papers' shared settings, and the layer says why."""
    from avcl_bench.config import PAPER_DEFAULTS
    from avcl_bench.runner import build_config

    (tmp_path / "bare.py").write_text(
        "from avcl_bench.strategies.base import AVCLStrategy\n\n\n"
        "class Bare(AVCLStrategy):\n    doc = {'name': 'bare', 'display_name': 'Bare'}\n"
    )
    monkeypatch.chdir(tmp_path)
    provenance: dict = {}
    cfg = build_config("bare.py:Bare", "ave-ci", {}, provenance=provenance)[0]
    assert {k: cfg["train"][k] for k in PAPER_DEFAULTS["train"]} == PAPER_DEFAULTS["train"]
    assert cfg["train"]["epochs"] == 100 and "declares no defaults" in provenance["train.epochs"]
    # the README's example declares its own, the same settings
    example = build_config(f"{PROJECT_ROOT}/examples/replay_distill.py:ReplayDistill", "ave-ci", {})[0]
    assert example["train"]["epochs"] == 100 and example["train"]["lr"] == 1.0e-4
