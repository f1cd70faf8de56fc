"""Every number says what produced it (issue #21): a named variant carries its name in every output
a researcher reads; model selection looks only at data the method holds; iCaRL's NME selection
validates with the exemplars the epoch's model would keep."""

from __future__ import annotations

import json
import types

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_FEATURE_RUN

from avcl_bench.cli import main
from avcl_bench.errors import ConfigError
from avcl_bench.runner import build_config
from avcl_bench.strategies.memory import ClassMeans, ExemplarMemory


def _run(benchmark, results, run_id, *extra):
    args = ["run", "--strategy", "lwf", "--benchmark", str(benchmark), "--results-dir", str(results)]
    args += ["--run-id", run_id, "--set", "train.epochs=1", *SMALL_FEATURE_RUN, *extra]
    return main([a for a in args if a != "--quiet"])


def test_a_named_variant_carries_its_name_in_every_output(feature_benchmark, tmp_path, capsys):
    results = tmp_path / "runs"
    assert _run(feature_benchmark, results, "plain") == 0
    plain_out = capsys.readouterr().out
    assert _run(feature_benchmark, results, "variant", "--set", "strategy.ce=all") == 0
    variant_out = capsys.readouterr().out
    name = "LwF (CE over all seen classes)"
    # the run's header and summary
    assert f"[avcl-bench] {name} (lwf) on " in variant_out and f"[avcl-bench] {name}: a named variant" in variant_out
    assert "[avcl-bench] LwF (lwf) on " in plain_out and "[avcl-bench] LwF: the method as" in plain_out
    # metrics.json
    run = json.loads((results / "variant" / "metrics.json").read_text())["run"]
    assert run["method"] == name and run["variant"] == {"ce": "all"}
    assert run["variant_name"] == "(CE over all seen classes)" and run["display_name"] == "LwF"
    plain = json.loads((results / "plain" / "metrics.json").read_text())["run"]
    assert plain["method"] == "LwF" and plain["variant"] == {} and plain["variant_name"] == ""
    # the leaderboard and the tables
    assert main(["report", "--results-dir", str(results), "--no-plots"]) == 0
    lb = pd.read_csv(tmp_path / "leaderboard.csv")
    names = dict(zip(lb.run_id, lb.display_name))
    assert names["plain"] == "LwF" and names["variant"] == name
    assert set(lb[lb.run_id == "variant"].variant) == {"(CE over all seen classes)"}
    table = (tmp_path / "reports" / "tables" / "layout_cign_feat-synth_default.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert "LwF" in rows and any(r.startswith(name) for r in rows), rows  # its own row, never the method's
    # the sweep's dry run names what each planned run is
    code = main(
        ["sweep", "--strategies", "lwf", "--benchmarks", str(feature_benchmark), "--set", "strategy.ce=all"]
        + ["--dry-run", "--results-dir", str(tmp_path / "sweep")]
    )
    assert code == 0 and f"[{name}]" in capsys.readouterr().out


def test_model_selection_looks_at_the_current_task_only_outside_the_av_cil_protocol(build_strategy, feature_benchmark):
    s = build_strategy("finetune", {"train": {"select_best_on_val": True}})
    assert s.cfg["train"]["select_on"] == "current"
    s.val_experiences = ["v0", "v1", "v2", "v3"]
    s.task_id = 2
    assert s.selection_experiences() == ["v2"]
    s.cfg["train"]["select_on"] = "seen"  # the AV-CIL release's rule (its protocol only)
    assert s.selection_experiences() == ["v0", "v1", "v2"]
    with pytest.raises(ConfigError, match="config key 'train.select_on' is 'seen' under protocol 'default'"):
        build_config("finetune", str(feature_benchmark), {"train": {"select_on": "seen", "select_best_on_val": True}})
    # the upper bound trains on every seen task's data: it selects on all of them under any protocol
    cfg, _ = build_config("joint", str(feature_benchmark), {"train": {"select_best_on_val": True}})
    assert cfg["train"]["select_on"] == "seen"
    # the release's methods select on every seen task under its protocol
    for name in ("finetune", "lwf", "icarl", "ssil", "afc", "av-cil", "joint"):
        cfg, _ = build_config(name, "ave-ci", {})
        assert cfg["train"]["select_on"] == "seen" and cfg["train"]["select_best_on_val"], name


class _Rows:
    """A dataset of feature rows with the Avalanche calls the memory uses (targets, subset)."""

    def __init__(self, feats, targets):
        self.feats, self.targets = feats, list(targets)

    def subset(self, rows):
        return _Rows(self.feats[list(rows)], [self.targets[r] for r in rows])


@pytest.mark.parametrize("selection", ["herding", "random"])
def test_the_epochs_nme_means_are_those_the_memory_will_hold(selection):
    """After an epoch, iCaRL validates with the means of the exemplars the epoch's model would keep
    (the AV-CIL release, iCaRL/train_incremental_icarl.py l.235-238); the memory's update after the
    experience, with the same model, keeps exactly those, and a random memory's draws are not taken."""
    g = torch.Generator().manual_seed(0)
    old = _Rows(torch.randn(12, 5, generator=g), [0] * 6 + [1] * 6)
    new = _Rows(torch.randn(14, 5, generator=g), [2] * 7 + [3] * 7)
    memory = ExemplarMemory(total=8, selection=selection, seed=3)
    strategy = types.SimpleNamespace(
        num_old=2, num_seen=2, device=torch.device("cpu"), model=types.SimpleNamespace(dim=5)
    )
    strategy.extract_features = lambda ds: ds.feats
    memory.update(old, 2, feature_fn=lambda ds: ds.feats)
    means = ClassMeans(memory)
    strategy.num_seen, strategy.new_training_data = 4, lambda: new
    rng_before = memory.rng.get_state()[1].copy()
    during = means.compute_with_current_classes(strategy)
    assert np.array_equal(memory.rng.get_state()[1], rng_before)  # nothing drawn
    assert sorted(memory.store) == [0, 1] and during.shape == (4, 5)
    assert (during.norm(dim=1) > 0).all()  # every seen class has a mean, the current ones included
    memory.update(new, 4, feature_fn=lambda ds: ds.feats)
    after = means.compute(strategy)
    assert torch.allclose(during, after, atol=1e-6)
    # hand check of one current class: the renormalised mean of its 2 (= 8 // 4) kept exemplars
    rows = memory.store[2][1]
    expected = F.normalize(F.normalize(new.feats[rows], dim=1).mean(0), dim=0)
    assert len(rows) == 2 and torch.allclose(during[2], expected, atol=1e-6)
