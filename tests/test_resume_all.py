"""Every registered strategy and the example method of examples/: interrupted at an experience
boundary and resumed, it ends with the same accuracy matrix as an uninterrupted run (its previous
model, memory, statistics and random streams all survive the checkpoint)."""

import json

import numpy as np
import pytest
from conftest import SMALL_FEATURE_RUN

from avcl_bench.cli import main
from avcl_bench.config import strategy_names
from avcl_bench.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow  # 3 runs of every strategy; test_reliability and test_sweep resume fast

#: small enough for CI: the tiny generated feature benchmark, 2 epochs, D=16
ARGS = ["--set", "train.epochs=2", *SMALL_FEATURE_RUN]


#: the example method from outside the package (examples/), named by its file spec
EXAMPLE = f"{PROJECT_ROOT / 'examples' / 'replay_distill.py'}:ReplayDistill"


@pytest.mark.parametrize("strategy", strategy_names() + [EXAMPLE])
def test_interrupted_and_resumed_equals_straight(strategy, feature_benchmark, tmp_path, interrupt_after_task):
    base = ["run", "--strategy", strategy, "--benchmark", str(feature_benchmark), "--results-dir", str(tmp_path)] + ARGS
    assert main(base + ["--run-id", "straight"]) == 0
    interrupt_after_task(2)
    assert main(base + ["--run-id", "cut"]) == 130
    interrupt_after_task(None)
    # a method from outside the suite is imported on resume only when named again
    confirm = [] if strategy in strategy_names() else ["--strategy", "examples/replay_distill.py:ReplayDistill"]
    with pytest.MonkeyPatch.context() as mp:  # the relative spelling of the same file confirms it
        mp.chdir(PROJECT_ROOT)
        assert main(["run", "--quiet", "--resume", str(tmp_path / "cut"), *confirm]) == 0
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["run"]["resumed"] is True
    for csv in sorted((tmp_path / "straight").glob("accuracy_*.csv")):
        assert (tmp_path / "cut" / csv.name).read_text() == csv.read_text(), csv.name
    # the final model itself: its embeddings of the first task's test clips, bit for bit (far more
    # sensitive than accuracies over a few test clips)
    with np.load(tmp_path / "straight" / "embeddings.npz") as a, np.load(tmp_path / "cut" / "embeddings.npz") as b:
        for key in a.files:
            if key.startswith("emb_"):
                assert np.array_equal(a[key], b[key]), key
