"""Fine-tuning and the upper bound on both input forms (the fixture every strategy's smoke test uses)."""

import pytest


@pytest.mark.parametrize("input", ["clips", "features"])
def test_finetune_runs_on_both_input_forms(run_tiny, input):
    m = run_tiny("finetune", "audio-visual", input)
    assert set(m["modalities"]) == {"audio-visual"}
    assert m["run"]["input"] == input


@pytest.mark.slow
def test_joint_beats_finetune_on_features(run_tiny):
    extra = ["--set", "train.epochs=8", "--set", "train.lr=0.003"]
    ft = run_tiny("finetune", "audio-visual", "features", extra)["modalities"]["audio-visual"]
    jt = run_tiny("joint", "audio-visual", "features", extra)["modalities"]["audio-visual"]
    assert jt["avg_acc"] > ft["avg_acc"] + 20
    assert ft["forgetting"] > 30
