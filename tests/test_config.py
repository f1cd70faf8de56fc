"""Layered configuration: benchmark < strategy defaults < strategy's benchmark section < --set."""

import pytest

from avcl_bench.config import parse_set, resolve
from avcl_bench.errors import ConfigError
from avcl_bench.runner import build_config


def test_parse_set_nested_and_typed():
    out = parse_set(["train.lr=0.01", "train.epochs=3", "strategy.tau=0.1", "modality=audio", "x.flag=true"])
    assert out == {
        "train": {"lr": 0.01, "epochs": 3},
        "strategy": {"tau": 0.1},
        "modality": "audio",
        "x": {"flag": True},
    }


def test_parse_set_rejects_missing_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["train.lr"])


def test_layers_order():
    # strategies/finetune.yaml: defaults epochs 100, the shared quick profile a 30-epoch budget;
    # --set wins over both.
    cfg, _ = build_config("finetune", "synth-av", {})
    assert cfg["train"]["epochs"] == 30
    cfg, _ = build_config("finetune", "vggsound-instruments", {})
    assert cfg["train"]["epochs"] == 100 and cfg["train"]["lr"] == 1e-4
    assert cfg["memory"]["per_class"] == 50  # from the benchmark's CIGN protocol
    cfg, _ = build_config("finetune", "synth-av", parse_set(["train.epochs=2"]))
    assert cfg["train"]["epochs"] == 2


def test_protocol_selects_tasks_and_memory():
    cfg, _ = build_config("finetune", "vggsound-100", {"protocol": "cign-10"})
    assert cfg["num_tasks"] == 10
    cfg, _ = build_config("finetune", "ave-ci", {})
    assert cfg["num_tasks"] == 4 and cfg["memory"]["total"] == 340 and cfg["input"] == "features"


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({"train": {"lrr": 1}}, "train.lrr"),
        ({"nonsense": 1}, "nonsense"),
        ({"strategy": {"not_a_param": 1}}, "strategy.not_a_param"),
    ],
)
def test_unknown_keys_are_errors(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config("finetune", "synth-av", bad)


def test_unknown_names():
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        resolve("nope")
    with pytest.raises(ConfigError, match="unknown benchmark 'nope'"):
        build_config("finetune", "nope", {})
    with pytest.raises(ConfigError, match="unknown modality"):
        build_config("finetune", "synth-av", {"modality": "smell"})
    with pytest.raises(ConfigError, match="unknown protocol"):
        build_config("finetune", "synth-av", {"protocol": "nope"})
    with pytest.raises(ConfigError, match="does not support input"):
        build_config("finetune", "vggsound-instruments", {"input": "features"})


def test_bad_values():
    with pytest.raises(ConfigError, match="train.epochs"):
        build_config("finetune", "synth-av", {"train": {"epochs": 0}})
