"""Size profiles (configuration layer 5) and the manifest's own config: layer above the strategy's
defaults."""

from __future__ import annotations

import json
import shutil

import pytest

from avcl_bench.cli import main
from avcl_bench.config import load_strategy_yaml
from avcl_bench.runner import build_config


def test_embedded_benchmark_defaults_to_quick_real_ones_to_paper():
    quick = load_strategy_yaml("cign")["profiles"]["quick"]
    cfg, _ = build_config("cign", "synth-av", {})
    assert cfg["profile"] == "quick" and cfg["model"]["dim"] == quick["model"]["dim"] == 64
    cfg, _ = build_config("cign", "vggsound-instruments", {})
    assert cfg["profile"] == "paper" and cfg["model"]["dim"] == 512 and cfg["train"]["epochs"] == 100  # CIGN Sec. 4.1
    cfg, _ = build_config("cign", "vggsound-instruments", {"profile": "quick"})
    assert cfg["model"]["dim"] == 64 and cfg["train"]["batch_size"] == 32


def test_manifest_config_is_above_strategy_defaults_and_profile(feature_benchmark, tmp_path):
    shutil.copytree(feature_benchmark.parent, tmp_path / "b")
    y = tmp_path / "b" / feature_benchmark.name
    y.write_text(y.read_text() + "config: {profile: quick, train: {lr: 0.25, epochs: 3}}\n")
    cfg, _ = build_config("finetune", str(y), {})
    assert cfg["profile"] == "quick" and cfg["model"]["dim"] == 64  # the manifest picked the profile
    assert cfg["train"]["lr"] == 0.25 and cfg["train"]["epochs"] == 3  # above quick's 1e-3 and 10
    cfg, _ = build_config("finetune", str(y), {"train": {"lr": 0.5}})
    assert cfg["train"]["lr"] == 0.5  # --set is above the manifest


def test_run_prints_its_profile(feature_benchmark, tmp_path, capsys):
    args = ["run", "--strategy", "finetune", "--benchmark", str(feature_benchmark), "--results-dir", str(tmp_path)]
    assert main(args + ["--profile", "quick", "--set", "train.epochs=1", "--set", "model.dim=16"]) == 0
    assert "profile quick: 1 epochs, batch 32" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["fast", "Quick"])
def test_unknown_profile_is_one_line(feature_benchmark, tmp_path, capsys, value):
    code = main(["run", "--strategy", "finetune", "--benchmark", str(feature_benchmark), "--profile", value, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "profile" in err[0] and "quick, paper" in err[0], err


def test_quick_profile_trains_until_validation_stops_improving(feature_benchmark, tmp_path):
    """quick: keep the best epoch by val accuracy, stop after `early_stop_patience` epochs without
    a new best, within the budget train.epochs; paper: every epoch, as the papers train."""
    cfg, _ = build_config("finetune", str(feature_benchmark), {"profile": "quick"})
    assert cfg["train"]["select_best_on_val"] and cfg["train"]["early_stop_patience"] == 5
    assert cfg["train"]["early_stop_min_epochs"] == 10
    cfg, _ = build_config("finetune", str(feature_benchmark), {"profile": "paper"})
    assert not cfg["train"]["select_best_on_val"] and cfg["train"]["early_stop_patience"] is None
    budget, patience, least = 30, 2, 4
    args = ["run", "--strategy", "finetune", "--benchmark", str(feature_benchmark), "--results-dir", str(tmp_path)]
    args += ["--profile", "quick", "--quiet", "--run-id", "q", "--set", f"train.epochs={budget}"]
    args += ["--set", f"train.early_stop_patience={patience}", "--set", f"train.early_stop_min_epochs={least}"]
    args += ["--set", "model.dim=16"]
    assert main(args) == 0
    trained = json.loads((tmp_path / "q" / "metrics.json").read_text())["run"]["epochs_trained"]
    assert len(trained) == 4
    for task in trained:
        # stopped `patience` epochs after the kept one, not before epoch `least` (or at the budget)
        assert task["epochs"] == min(budget, max(least, task["kept_epoch"] + patience)), trained
        assert task["epochs"] >= least
        # every epoch's selection accuracy is recorded; the kept epoch is the first best of them
        assert len(task["val_acc"]) == task["epochs"], trained
        assert task["kept_epoch"] == 1 + task["val_acc"].index(max(task["val_acc"])), trained
    assert any(task["epochs"] < budget for task in trained), trained  # tiny data converges early
