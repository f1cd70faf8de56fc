"""Typed parameters: every configuration key is declared once (type, default, range) and every
layer is coerced and checked against the declarations; a bad value ends with one line on stderr
naming the key, exit code 2."""

import math
from pathlib import Path

import pytest
import yaml

from avcl_bench import config
from avcl_bench.cli import main
from avcl_bench.config import load_strategy_yaml, parse_set, strategy_names, strategy_origin
from avcl_bench.errors import ConfigError
from avcl_bench.params import InvalidValue, Param, declared_params
from avcl_bench.paths import DATASETS_DIR
from avcl_bench.runner import build_config

FAST = ["--set", "synth.size=tiny", "--set", "train.epochs=1", "--quiet"]


def refused(capsys, tmp_path: Path, args: list[str]) -> str:
    """Run the real CLI; assert exit 2 with one line on stderr and no run directory; the line."""
    res = tmp_path / "runs"
    code = main(["run", "--results-dir", str(res)] + FAST + args)  # args last: they win over FAST
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not res.exists() or not any(res.iterdir())
    return lines[0]


@pytest.mark.parametrize(
    "strategy,setting,needles",
    [
        ("finetune", "train.lr=abc", ["'train.lr'", "> 0", "'abc'"]),
        ("finetune", "train.lr=-1", ["'train.lr'", "> 0", "-1"]),
        ("finetune", "train.lr=0", ["'train.lr'", "> 0"]),
        ("finetune", "train.lr=nan", ["'train.lr'", "finite", "'nan'"]),
        ("finetune", "train.lr=inf", ["'train.lr'", "finite", "'inf'"]),
        ("finetune", "train.lr=.inf", ["'train.lr'", "finite"]),
        ("finetune", "train.epochs=0", ["'train.epochs'", "integer >= 1"]),
        ("finetune", "train.epochs=3.5", ["'train.epochs'", "integer >= 1", "3.5"]),
        ("finetune", "train.batch_size=-1", ["'train.batch_size'", "integer >= 1"]),
        ("finetune", "train.eval_batch_size=0", ["'train.eval_batch_size'", "integer >= 1"]),
        ("finetune", "train.weight_decay=-0.1", ["'train.weight_decay'", ">= 0"]),
        ("finetune", "train.momentum=1.5", ["'train.momentum'", ">= 0 and <= 1"]),
        ("finetune", "train.optimizer=rmsprop", ["train.optimizer", "'rmsprop'", "adam, sgd"]),
        ("finetune", "train.amp=maybe", ["'train.amp'", "true or false"]),
        ("finetune", "seed=-1", ["'seed'", "integer >= 0"]),
        ("finetune", "synth.seed=-3", ["'synth.seed'", "integer >= 0"]),
        ("finetune", "memory.per_class=-5", ["'memory.per_class'", ">= 0 or null"]),
        ("finetune", "memory.total=-5", ["'memory.total'", ">= 0 or null"]),
        ("finetune", "model.dropout=1", ["'model.dropout'", "< 1"]),
        ("finetune", "input=frames", ["input", "'frames'", "clips, features"]),
        ("finetune", "train=3", ["'train'", "section"]),
        ("finetune", "strategy.name=cign", ["unknown config key 'strategy.name'"]),
        ("cign", "strategy.cg_negatives=foo", ["strategy.cg_negatives", "'foo'", "classes, batch"]),
        ("cign", "strategy.avctd=maybe", ["'strategy.avctd'", "true or false"]),
        ("cign", "strategy.depth=0", ["'strategy.depth'", "integer >= 1"]),
        ("cign", "strategy.tau=0", ["'strategy.tau'", "> 0"]),
        ("bic", "strategy.val_fraction=1", ["'strategy.val_fraction'", "> 0 and < 1"]),
        ("ewc", "strategy.fisher_max_samples=2.5", ["'strategy.fisher_max_samples'", "or null"]),
        ("av-cil", "strategy.epochs_by_modality.audio=0", ["'strategy.epochs_by_modality.audio'", "integer >= 1"]),
        (
            "av-cil",
            "strategy.epochs_by_modality.smell=3",
            ["unknown config key 'strategy.epochs_by_modality.smell'", "audio, visual, audio-visual"],
        ),
        ("dualprompt", "strategy.e_layers=[1, -1]", ["'strategy.e_layers[1]'", "integer >= 0"]),
    ],
)
def test_bad_value_is_one_line_naming_the_key(strategy, setting, needles, tmp_path, capsys):
    line = refused(capsys, tmp_path, ["--strategy", strategy, "--set", setting])
    for needle in needles:
        assert needle in line, line
    assert "(in --set)" in line


def test_dim_not_divisible_by_heads(tmp_path, capsys):
    line = refused(capsys, tmp_path, ["--strategy", "finetune", "--set", "model.dim=10", "--set", "model.heads=4"])
    assert "'model.dim' (10)" in line and "'model.heads' (4)" in line


def test_clip_preprocessing_range_names_the_key(tmp_path, capsys):
    line = refused(capsys, tmp_path, ["--strategy", "finetune", "--set", "clips.audio.n_fft=0"])
    assert line.endswith("clips.audio.n_fft must be positive, got 0"), line
    line = refused(capsys, tmp_path, ["--strategy", "finetune", "--set", "clips.audio.duration=abc"])
    assert "'clips.audio.duration'" in line and "finite number" in line


def test_bad_type_in_a_manifest_layer(tmp_path, capsys):
    """A benchmark manifest's config: section is checked like --set, and the error names the file."""
    src = yaml.safe_load((DATASETS_DIR / "synth-av.yaml").read_text())
    src["config"] = {"train": {"batch_size": "many"}}
    manifest = tmp_path / "mine.yaml"
    manifest.write_text(yaml.safe_dump(src))
    line = refused(capsys, tmp_path, ["--strategy", "finetune", "--benchmark", str(manifest)])
    assert "'train.batch_size'" in line and "'many'" in line and "benchmark manifest" in line, line


def copy_strategies(tmp_path: Path, monkeypatch, edit) -> None:
    """The built-in strategy documents copied to ``tmp_path``, ``edit(name, doc)`` applied, and
    the copies used by the resolver."""
    for name in strategy_names():
        doc = load_strategy_yaml(name)
        edit(name, doc)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setattr(config, "STRATEGIES_DIR", tmp_path)


def test_bad_type_in_a_strategy_layer(tmp_path, capsys, monkeypatch):
    def edit(name, doc):
        if name == "cign":
            doc["profiles"]["quick"]["strategy"]["depth"] = "deep"

    (tmp_path / "strategies").mkdir()
    copy_strategies(tmp_path / "strategies", monkeypatch, edit)
    line = refused(capsys, tmp_path, ["--strategy", "cign"])
    assert "'strategy.depth'" in line and "'deep'" in line and "strategies/cign.yaml profiles.quick" in line


@pytest.mark.parametrize(
    "decl,needle",
    [
        ({"type": "integer", "default": 1, "source": "x"}, "unknown type 'integer'"),
        ({"type": "int", "default": 0, "min": 1, "source": "x"}, "default 0 is not an integer >= 1"),
        ({"type": "int", "default": 2.5, "source": "x"}, "default 2.5 is not an integer"),
        ({"type": "str", "default": "c", "choices": ["a", "b"], "source": "x"}, "default 'c' is not one of a, b"),
        ({"type": "float", "default": None, "source": "x"}, "default None is not a finite number"),
        ({"type": "float", "default": 1.0}, "no source"),
        ({"type": "float", "source": "x"}, "no default"),
        ({"type": "float", "default": 1.0, "source": "x", "minimum": 0}, "unknown declaration key 'minimum'"),
        ({"type": "str", "default": "a", "min": 0, "source": "x"}, "'min' needs a numeric type"),
        ({"type": "list", "default": [1], "source": "x"}, "a list declares 'items'"),
        (
            {"type": "map", "default": {"a": 0}, "keys": ["a"], "values": {"type": "int", "min": 1}, "source": "x"},
            "default.a 0 is not an integer >= 1",
        ),
        (
            {"type": "int", "default": 1, "choices": ["one", 2], "source": "x"},
            "choices ['one', 2] are not all of type int",
        ),
        ({"type": "bool", "default": True, "nullable": "yes", "source": "x"}, "'nullable' must be true or false"),
        ("3", "must be a mapping"),
    ],
)
def test_malformed_declaration_names_file_and_key(decl, needle):
    with pytest.raises(ConfigError, match=r"^strategies/mine\.yaml params\.p") as err:
        declared_params({"params": {"p": decl}}, "strategies/mine.yaml")
    assert needle in str(err.value)


def test_malformed_declaration_in_a_document_through_the_cli(tmp_path, capsys, monkeypatch):
    def edit(name, doc):
        if name == "lwf":
            doc["params"]["T"]["default"] = -2.0

    (tmp_path / "strategies").mkdir()
    copy_strategies(tmp_path / "strategies", monkeypatch, edit)
    line = refused(capsys, tmp_path, ["--strategy", "lwf"])
    assert line.endswith("strategies/lwf.yaml params.T: default -2.0 is not a finite number > 0"), line


def test_strategy_values_under_defaults_are_refused(tmp_path, monkeypatch):
    """One place for a strategy's defaults: its params: section."""

    def edit(name, doc):
        doc["defaults"]["strategy"] = {"depth": 2}

    (tmp_path / "strategies").mkdir()
    copy_strategies(tmp_path / "strategies", monkeypatch, edit)
    with pytest.raises(ConfigError, match="declared under 'params:'"):
        build_config("cign", "synth-av", {})


@pytest.mark.parametrize(
    "spec,given,expected",
    [
        (Param("float"), "1e-4", 1e-4),
        (Param("float"), "1.0e-4", 1e-4),
        (Param("float"), 3, 3.0),
        (Param("int"), 3.0, 3),
        (Param("int"), "7", 7),
        (Param("int"), "3.0", 3),
        (Param("bool"), "true", True),
        (Param("bool"), "False", False),
        (Param("bool"), True, True),
        (Param("str"), 12, "12"),
        (Param("int", nullable=True), None, None),
        (Param("list", items=Param("int")), [1, 2.0], [1, 2]),
        (Param("map", values=Param("float")), {"a": "2e-1"}, {"a": 0.2}),
    ],
)
def test_coercion(spec, given, expected):
    out = spec.coerce(given)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    "spec,given",
    [
        (Param("int"), 3.5),
        (Param("int"), True),
        (Param("int"), "three"),
        (Param("int"), None),
        (Param("float"), "nan"),
        (Param("float"), float("inf")),
        (Param("float"), False),
        (Param("float"), [1.0]),
        (Param("bool"), 1),
        (Param("bool"), "yes please"),
        (Param("str"), 1.5),
        (Param("str"), True),
        (Param("float", exclusive_min=0), 0.0),
        (Param("float", min=0, max=1), 1.01),
        (Param("str", choices=("a", "b")), "c"),
        (Param("list", items=Param("int", min=0)), [0, -1]),
        (Param("map", keys=("a",), values=Param("int")), {"b": 1}),
    ],
)
def test_refused(spec, given):
    with pytest.raises(InvalidValue):
        spec.coerce(given)


def test_map_parameter_updates_key_by_key():
    """A layer sets some keys of a map; the others keep the lower layer's values (null over a null map)."""
    below = {"strategy": {"epochs_by_modality": {"audio-visual": 200}}}  # the manifest layer, below --set
    cfg = config.resolve("av-cil", "synth-av", below, parse_set(["strategy.epochs_by_modality.audio=3"]))
    assert cfg["strategy"]["epochs_by_modality"] == {"audio": 3, "visual": None, "audio-visual": 200}
    cfg, _ = build_config("av-cil", "ave-ci", {"strategy": {"epochs_by_modality": None}})
    assert cfg["strategy"]["epochs_by_modality"] is None
    null_below = {"strategy": {"epochs_by_modality": None}}  # the manifest layer, below --set
    cfg = config.resolve("afc", "synth-av", null_below, {"strategy": {"epochs_by_modality": {"visual": 2}}})
    assert cfg["strategy"]["epochs_by_modality"] == {"audio": None, "visual": 2, "audio-visual": None}


def test_set_lr_in_ordinary_notation_is_the_yaml_float():
    """--set train.lr=1e-4 (a string to PyYAML) resolves to the very float the YAMLs' 1.0e-4 gives."""
    yaml_cfg, _ = build_config("finetune", "vggsound-instruments", {})
    set_cfg, _ = build_config("finetune", "synth-av", parse_set(["train.lr=1e-4", "train.epochs=2.0"]))
    assert yaml_cfg["train"]["lr"] == set_cfg["train"]["lr"] == 1e-4
    assert type(set_cfg["train"]["lr"]) is float and set_cfg["train"]["epochs"] == 2
    assert type(set_cfg["train"]["epochs"]) is int


@pytest.mark.parametrize("strategy", strategy_names())
def test_every_declared_parameter_resolves_with_its_type(strategy):
    declared = declared_params(load_strategy_yaml(strategy), strategy_origin(strategy))
    assert all(p.source for p in declared.values())
    for bench in ("synth-av", "vggsound-instruments", "ave-ci"):
        cfg, _ = build_config(strategy, bench, {})
        assert list(cfg["strategy"]) == ["name"] + list(declared)
        for key, spec in declared.items():
            assert spec.coerce(cfg["strategy"][key]) == cfg["strategy"][key]
            value = cfg["strategy"][key]
            if value is not None and spec.type in ("int", "float", "bool", "str"):
                assert type(value).__name__ == spec.type, (strategy, key, value)


def test_shared_sections_resolve_with_their_types():
    cfg, _ = build_config("cign", "synth-av", {})
    schema = config.SCHEMA

    def walk(section, values, path=""):
        for key, spec in section.items():
            if isinstance(spec, dict):
                walk(spec, values[key], f"{path}{key}.")
            elif values[key] is not None and spec.type in ("int", "float", "bool", "str"):
                assert type(values[key]).__name__ == spec.type, f"{path}{key}"

    walk(schema, cfg)
    assert math.isfinite(cfg["train"]["lr"])


def test_finetune_runs_with_lr_in_ordinary_notation(tmp_path):
    """The command of issue 11 completes, and the run's saved config holds the float."""
    code = main(
        [
            "run",
            "--strategy",
            "finetune",
            "--set",
            "train.lr=1e-4",
            "--set",
            "train.epochs=1",
            "--set",
            "synth.size=tiny",
            "--results-dir",
            str(tmp_path),
            "--run-id",
            "ft",
            "--quiet",
        ]
    )
    assert code == 0
    saved = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    assert saved["train"]["lr"] == 1e-4 and saved["train"]["epochs"] == 1


def test_a_layer_that_is_not_a_mapping(tmp_path, monkeypatch):
    def edit(name, doc):
        doc.setdefault("profiles", {})["quick"] = 3

    (tmp_path / "strategies").mkdir()
    copy_strategies(tmp_path / "strategies", monkeypatch, edit)
    with pytest.raises(ConfigError, match=r"^strategies/finetune\.yaml profiles\.quick must be a mapping"):
        build_config("finetune", "synth-av", {})
