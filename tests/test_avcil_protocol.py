"""The AV-CIL protocol's settings (strategies' ``protocols: av-cil:`` sections) and the provenance
of every resolved value (``avcl-bench config``).

``tests/golden/avcil_protocol_settings.yaml`` holds, for every method of the AV-CIL tables on
``ave-ci``, ``ks-ci`` and ``vs100-ci`` and every modality, the values that make the release's runs
(network, epochs, batch, lr, weight decay, drop_last, best-epoch selection, memory, exemplar batch)
and the layer each comes from. It was recorded once (``python tests/test_avcil_protocol.py``) and
reviewed against the release's ``run_incremental_*.sh``; a change that moves any of them on purpose
re-records it and says why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from avcl_bench.cli import main
from avcl_bench.config import QUICK_CONVERGENCE, SHARED_QUICK, parse_set, provenance_rows, resolve, shown
from avcl_bench.errors import ConfigError
from avcl_bench.paths import STRATEGIES_DIR
from avcl_bench.runner import build_config
from avcl_bench.strategies import builtin_catalogue, members

EXPECTED = Path(__file__).parent / "golden" / "avcil_protocol_settings.yaml"
METHODS = tuple(members(("avcil-tables",), "avcil"))
BENCHMARKS = ("ave-ci", "ks-ci", "vs100-ci")
MODALITIES = ("audio", "visual", "audio-visual")
#: the settings of a release run: shared keys, and the strategy keys of the methods that have them
KEYS = (
    "seed",
    "num_tasks",
    "memory.total",
    "model.network",
    "train.epochs",
    "train.batch_size",
    "train.eval_batch_size",
    "train.optimizer",
    "train.lr",
    "train.weight_decay",
    "train.drop_last",
    "train.select_best_on_val",
    "train.select_on",
    "strategy.epochs_by_modality",
    "strategy.exemplar_batch_size",
    "strategy.replay_batch_size",
    "strategy.loss",
    "strategy.classifier",
    "strategy.lam_I",
    "strategy.lam_C",
    "strategy.reinit",
)


def settings_table(strategy: str, benchmark: str, modality: str) -> dict:
    """{key: 'value  [layer]'} of :data:`KEYS` (the layer without the strategy document's name)."""
    provenance: dict = {}
    cfg, _ = build_config(strategy, benchmark, {"modality": modality}, provenance=provenance)
    prefix = f"strategies/{strategy}.yaml "
    return {
        key: f"{shown(value)}  [{layer.removeprefix(prefix)}]"
        for key, value, layer in provenance_rows(cfg, provenance)
        if key in KEYS
    }


def all_tables() -> dict:
    return {f"{s} {b} {m}": settings_table(s, b, m) for s in METHODS for b in BENCHMARKS for m in MODALITIES}


def test_the_avcil_tables_cover_the_seven_methods():
    assert set(METHODS) == {"finetune", "joint", "lwf", "icarl", "ssil", "afc", "av-cil"}


def test_settings_and_their_layers_match_the_reviewed_table():
    expected = yaml.safe_load(EXPECTED.read_text())
    got = all_tables()
    assert set(got) == set(expected)
    for run, table in got.items():
        assert table == expected[run], run


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_every_method_runs_the_release_network_and_loop(benchmark):
    for strategy in METHODS:
        for modality in MODALITIES:
            cfg, _ = build_config(strategy, benchmark, {"modality": modality})
            assert cfg["model"]["network"] == "avcil", (strategy, modality)
            train = cfg["train"]
            assert (train["batch_size"], train["lr"], train["weight_decay"]) == (256, 1e-3, 1e-4)
            assert train["drop_last"] and train["select_best_on_val"] and cfg["seed"] == 42


# ---- a user's manifest with the av-cil protocol ----------------------------------------------------
def user_manifest(feature_benchmark: Path, name: str, protocol: dict) -> Path:
    """A copy of the tiny feature benchmark's manifest under another name, with ``protocol`` as its
    only protocol ``av-cil`` (beside the original, so its relative paths hold)."""
    doc = yaml.safe_load(feature_benchmark.read_text())
    doc.update(name=name, protocols={"av-cil": protocol}, default_protocol="av-cil")
    path = feature_benchmark.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_user_manifest_with_the_protocol_gets_the_release_settings(feature_benchmark):
    mine = user_manifest(feature_benchmark, "my-ave", {"num_tasks": 4, "memory": {"total": 48}, "settings": "AVE"})
    for strategy, modality, epochs in (("finetune", "audio", 300), ("ssil", "audio-visual", 200)):
        provenance: dict = {}
        cfg, _ = build_config(strategy, str(mine), {"modality": modality}, provenance=provenance)
        assert cfg["train"]["epochs"] == epochs and cfg["model"]["network"] == "avcil"
        assert cfg["train"]["batch_size"] == 256 and cfg["train"]["drop_last"]
        assert (
            provenance["train.epochs"]
            == f"strategies/{strategy}.yaml protocols.av-cil.settings.AVE.modalities.{modality}"
        )
        assert provenance["model.network"] == f"strategies/{strategy}.yaml protocols.av-cil"
        assert cfg["memory"]["total"] == 48  # the manifest's own memory
    cfg, _ = build_config("av-cil", str(mine), {})
    assert cfg["strategy"]["lam_I"] == 0.5  # run_incremental_ours.sh (AVE)


def test_a_manifest_without_settings_gets_the_protocol_wide_values_only(feature_benchmark):
    mine = user_manifest(feature_benchmark, "my-avcil", {"num_tasks": 4, "memory": {"total": 48}})
    provenance: dict = {}
    cfg, _ = build_config("finetune", str(mine), {"modality": "audio"}, provenance=provenance)
    assert cfg["model"]["network"] == "avcil" and cfg["train"]["lr"] == 1e-3
    assert cfg["train"]["epochs"] == 100 and provenance["train.epochs"] == "strategies/finetune.yaml defaults"


def test_cign_protocols_get_no_avcil_settings():
    cfg, _ = build_config("finetune", "vggsound-100", {"protocol": "cign-10"})
    assert cfg["model"]["network"] is None and not cfg["train"]["drop_last"] and cfg["train"]["lr"] == 1e-4


def test_a_protocol_section_sits_below_the_profile_and_the_command_line():
    cfg, _ = build_config("finetune", "ave-ci", {"profile": "quick"})
    assert cfg["train"]["epochs"] == SHARED_QUICK["train"]["epochs"]  # quick's epoch budget
    assert cfg["model"]["network"] == "avcil"
    cfg, _ = build_config("afc", "ave-ci", parse_set(["modality=audio", "train.epochs=3"]))
    assert cfg["train"]["epochs"] == 3


# ---- bad input in the new sections -----------------------------------------------------------------
def strategy_file(tmp_path: Path, protocols) -> str:
    """A method outside the package: fine-tuning with ``protocols`` as its document's section."""
    doc = yaml.safe_load((STRATEGIES_DIR / "finetune.yaml").read_text())
    doc["protocols"] = protocols
    path = tmp_path / "mine.py"
    path.write_text(
        "from avcl_bench.strategies.finetune import FineTuning\n\n\n"
        f"class Mine(FineTuning):\n    doc = {doc!r}\n    doc['name'] = 'mine'\n"
    )
    return f"{path}:Mine"


@pytest.mark.parametrize(
    "protocols,needle",
    [
        ({"av-cil": {"train": {"lrr": 1}}}, "unknown config key 'train.lrr' (in the doc of strategy"),
        ({"av-cil": {"settings": {"AVE": {"modalities": {"smell": {}}}}}}, "unknown modality 'smell'"),
        ({"av-cil": {"settings": {"KS": {"trian": {}}}}}, "unknown config key 'trian'"),
        ({"av-cil": {"modalities": {"audio": {"modality": "visual"}}}}, "'modality' cannot be set"),
        ({"av-cil": {"settings": ["AVE"]}}, "protocols.av-cil.settings must be a mapping"),
        ({"av-cil": 3}, "protocols.av-cil must be a mapping"),
        ({"cign": {"train": {"epochs": 0}}}, "train.epochs"),  # checked although the run is av-cil
    ],
)
def test_bad_protocol_sections_are_one_line_errors(tmp_path, capsys, protocols, needle):
    spec = strategy_file(tmp_path, protocols)
    code = main(["config", "--strategy", spec, "--benchmark", "ave-ci"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_unknown_settings_name_in_a_manifest(feature_benchmark, capsys):
    mine = user_manifest(feature_benchmark, "my-typo", {"num_tasks": 4, "memory": {"total": 48}, "settings": "AEV"})
    code = main(["config", "--strategy", "finetune", "--benchmark", str(mine)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "protocols.av-cil.settings 'AEV' is not in strategies/finetune.yaml" in err[0] and "AVE" in err[0]


def test_settings_must_be_a_name(feature_benchmark):
    mine = user_manifest(feature_benchmark, "my-list", {"num_tasks": 4, "settings": ["AVE"]})
    with pytest.raises(ConfigError, match="protocols.av-cil.settings in .* must be a name"):
        build_config("finetune", str(mine), {})


def test_benchmarks_sections_are_refused_with_what_replaced_them(tmp_path):
    doc = yaml.safe_load((STRATEGIES_DIR / "finetune.yaml").read_text())
    doc["benchmarks"] = {"ave-ci": {"train": {"epochs": 1}}}
    (tmp_path / "old.py").write_text(
        f"from avcl_bench.strategies.finetune import FineTuning\n\n\nclass Old(FineTuning):\n    doc = {doc!r}\n"
    )
    with pytest.raises(ConfigError, match="'benchmarks:' in strategy .* is replaced by 'protocols: <protocol>:'"):
        resolve(f"{tmp_path / 'old.py'}:Old")


# ---- the network -----------------------------------------------------------------------------------
def test_the_baselines_build_the_network_model_network_names(build_strategy):
    from avcl_bench.models.avcil import AVCILNet
    from avcl_bench.models.avnet import AVNet

    small = {"model": {"dim": 16, "heads": 2}}
    for name in ("finetune", "joint", "lwf", "icarl", "ssil"):
        assert type(build_strategy(name, small).model) is AVNet
        assert type(build_strategy(name, {"model": {"network": "avcil", "dim": 16}}).model) is AVCILNet


def test_a_strategy_refuses_a_network_it_cannot_build(tmp_path, capsys, feature_benchmark):
    args = ["run", "--benchmark", str(feature_benchmark), "--results-dir", str(tmp_path), "--quiet"]
    for strategy, value, needle in (
        ("cign", "avcil", "strategy 'cign' builds its own network"),
        ("podnet", "avcil", "strategy 'podnet' builds only avnet"),
        ("av-cil", "avnet", "strategy 'av-cil' builds only avcil"),
    ):
        code = main(args + ["--strategy", strategy, "--set", f"model.network={value}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], err


@pytest.mark.parametrize("strategy", ["finetune", "joint", "lwf", "icarl", "ssil"])
def test_the_baselines_train_on_the_avcil_network_with_whole_batches(strategy, feature_benchmark, tmp_path):
    """One epoch per task under the av-cil protocol of a user's manifest (24 new clips per task,
    batch 5): every training batch is whole, SS-IL's 5 new clips + 4 exemplars too."""
    from avcl_bench.strategies.base import AVCLStrategy

    mine = user_manifest(feature_benchmark, "my-ks", {"num_tasks": 4, "memory": {"total": 12}, "settings": "ksounds"})
    sizes = []
    original = AVCLStrategy.backward

    def record(self):
        sizes.append(int(self.mb_y.shape[0]))
        original(self)

    sets = {"train.epochs": 1, "train.batch_size": 5, "model.dim": 16}
    if strategy == "ssil":
        sets["strategy.replay_batch_size"] = 4
    args = ["run", "--strategy", strategy, "--benchmark", str(mine), "--results-dir", str(tmp_path), "--quiet"]
    AVCLStrategy.backward = record  # every method's backward is the base's
    try:
        code = main(args + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")])
    finally:
        AVCLStrategy.backward = original
    assert code == 0
    (run,) = tmp_path.iterdir()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["network"] == "avcil" and cfg["train"]["drop_last"] and cfg["train"]["epochs"] == 1
    assert sizes and set(sizes) == ({5, 9} if strategy == "ssil" else {5}), sizes


# ---- the sweep's plan ------------------------------------------------------------------------------
def test_the_avcil_tables_dry_run_shows_every_method_with_the_release_settings(tmp_path, capsys):
    code = main(["sweep", "--preset", "avcil-tables", "--dry-run", "--seeds", "0", "--results-dir", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == len(METHODS) * len(BENCHMARKS) * len(MODALITIES)
    expected = yaml.safe_load(EXPECTED.read_text())
    names = {s: e["display_name"] for s, e in builtin_catalogue().items()}
    for line in lines:
        status, run_id, rest = line.split(None, 2)
        strategy, bench, _, modality = run_id.split("_")[:4]
        # what runs, by name: each method as its release runs it, no named variant
        method, settings = rest.removeprefix("[").split("] ", 1)
        assert method == names[strategy], line
        epochs = expected[f"{strategy} {bench} {modality}"]["train.epochs"].split()[0]
        assert status == "pending" and settings.startswith(f"epochs={epochs} network=avcil batch=256 lr=0.001 ")
        assert "wd=0.0001 opt=adam drop_last=yes best_val=yes select_on=seen memory_total=" in settings, line
    ssil = [line for line in lines if line.split()[1].startswith("ssil_")]
    assert ssil and all(line.endswith("strategy.replay_batch_size=128") for line in ssil)


# ---- avcl-bench config -----------------------------------------------------------------------------
def test_config_prints_every_value_with_its_layer(capsys):
    code = main(
        ["config", "--strategy", "ssil", "--benchmark", "ks-ci", "--modality", "visual", "--set", "train.lr=0.01"]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith("# method: SS-IL (the method as its strategy document defines it"), out[0]
    rows = {line.split(" = ")[0].strip(): line.split(" = ", 1)[1] for line in out[1:]}
    assert rows["train.epochs"] == "100  [strategies/ssil.yaml protocols.av-cil.settings.ksounds.modalities.visual]"
    assert rows["train.lr"] == "0.01  [--set]"
    assert rows["strategy.replay_batch_size"] == "128  [strategies/ssil.yaml protocols.av-cil]"
    assert rows["strategy.temperature"] == "2.0  [strategies/ssil.yaml params]"
    assert rows["memory.total"] == "500  [benchmark manifest 'ks-ci' protocol]"
    assert rows["train.momentum"] == "0.9  [schema default]"
    assert rows["modality"] == "visual  [--set]" and rows["strategy.name"] == "ssil  [--strategy]"


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_config_formats(capsys, fmt):
    code = main(["config", "--strategy", "finetune", "--benchmark", "synth-av", "--format", fmt])
    out = capsys.readouterr().out
    table = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert code == 0
    assert table["train.epochs"] == {"value": SHARED_QUICK["train"]["epochs"], "layer": "SHARED_QUICK"}
    assert table["train.early_stop_patience"] == {
        "value": QUICK_CONVERGENCE["train"]["early_stop_patience"],
        "layer": "QUICK_CONVERGENCE",
    }
    assert table["profile"] == {"value": "quick", "layer": "default profile of benchmark 'synth-av'"}
    assert table["model.network"] == {"value": None, "layer": "schema default"}


def test_provenance_names_the_manifest_config_layer(feature_benchmark):
    doc = yaml.safe_load(feature_benchmark.read_text())
    doc.update(name="my-config", config={"train": {"lr": 0.5}})
    path = feature_benchmark.parent / "my-config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    provenance: dict = {}
    cfg, _ = build_config("finetune", str(path), {}, provenance=provenance)
    assert cfg["train"]["lr"] == 0.5 and provenance["train.lr"] == "benchmark manifest 'my-config' config"


def test_provenance_covers_every_value_of_every_strategy():
    from avcl_bench.config import strategy_names

    for name in strategy_names():
        provenance: dict = {}
        cfg, _ = build_config(name, "ave-ci", {}, provenance=provenance)
        keys = [key for key, _, _ in provenance_rows(cfg, provenance)]
        assert set(keys) == set(provenance), name


if __name__ == "__main__":  # re-record: python tests/test_avcil_protocol.py
    header = (
        "# The AV-CIL methods' settings on the AV-CIL benchmarks: value  [layer it comes from]\n"
        "# (strategies/<method>.yaml omitted from the layer). Recorded by python tests/test_avcil_protocol.py\n"
        "# and reviewed against the release's run_incremental_*.sh (weiguoPian/AV-CIL_ICCV2023).\n"
    )
    EXPECTED.write_text(header + yaml.safe_dump(all_tables(), sort_keys=False, width=200))
    print(f"recorded {EXPECTED}", file=sys.stderr)
