"""Training progress: bars and the duration estimate on stderr, silenced by --quiet, with no effect
on results; the estimate's step count is the run's."""

import json

import pytest
from conftest import SMALL_FEATURE_RUN

from avcl_bench import progress
from avcl_bench.cli import main

#: SMALL_FEATURE_RUN without --quiet (progress shown)
SHOWN = [a for a in SMALL_FEATURE_RUN if a != "--quiet"]


def run_cli(benchmark, tmp_path, run_id, *extra, strategy="finetune"):
    args = ["run", "--strategy", strategy, "--benchmark", str(benchmark), "--results-dir", str(tmp_path)]
    assert main([*args, "--run-id", run_id, "--set", "train.epochs=2", *SHOWN, *extra]) == 0
    return tmp_path / run_id


def test_bars_loss_val_acc_and_estimate_shown_then_silenced(feature_benchmark, tmp_path, capsys):
    shown = run_cli(feature_benchmark, tmp_path, "shown", "--set", "train.select_best_on_val=true")
    err = capsys.readouterr().err
    for needle in ("task 1/4", "task 4/4", "epoch 1/2", "epoch 2/2", "loss=", "val acc=", "step/s"):
        assert needle in err, needle
    estimates = [line for line in err.replace("\r", "\n").splitlines() if "estimated duration: ~" in line]
    assert len(estimates) == 1 and " s/step x " in estimates[0], estimates

    quiet = run_cli(feature_benchmark, tmp_path, "quiet", "--set", "train.select_best_on_val=true", "--quiet")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    # showing progress draws no random number and runs no extra step: the same accuracies
    assert metrics_of(shown) == metrics_of(quiet)


@pytest.mark.parametrize("strategy", ["finetune", "icarl"])
def test_estimate_counts_the_steps_the_run_takes(strategy, total_memory_benchmark, tmp_path, capsys, monkeypatch):
    """planned_steps predicts every training step, exemplars replayed by concatenation included;
    the results equal a quiet run's (the memory's random selection untouched by progress)."""
    made = []
    init = progress.TrainingProgress.__init__

    def recording_init(self, *args, **kwargs):
        made.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(progress.TrainingProgress, "__init__", recording_init)
    shown = run_cli(total_memory_benchmark, tmp_path, strategy, strategy=strategy)
    capsys.readouterr()
    assert len(made) == 1
    assert made[0]._steps_seen == made[0].total_steps > 0
    quiet = run_cli(total_memory_benchmark, tmp_path, "quiet", "--quiet", strategy=strategy)
    assert len(made) == 1
    assert metrics_of(shown) == metrics_of(quiet)


def metrics_of(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())["modalities"]


def test_estimate_line_formats():
    assert progress.format_duration(12.4) == "~12 s"
    assert progress.format_duration(720) == "~12 min"
    assert progress.format_duration(5 * 3600) == "~5.0 h"


@pytest.mark.parametrize("first_epoch_steps, later_epoch_steps", [(0, 4), (3, 3), (12, 12)])
def test_one_estimate_whatever_the_first_epoch_length(first_epoch_steps, later_epoch_steps):
    """Estimated after the timed steps, at the end of an epoch shorter than them, or (after an
    epoch without steps) in the next epoch; once per run."""
    import io

    import torch

    out = io.StringIO()
    bars = progress.TrainingProgress(total_steps=100, num_tasks=2, file=out)
    for task in range(2):
        bars.start_experience(task, epochs=2)
        for epoch in (1, 2):
            steps = first_epoch_steps if (task, epoch) == (0, 1) else later_epoch_steps
            bars.start_epoch(epoch, 2, steps)
            for _ in range(steps):
                bars.step(torch.tensor(0.5))
            bars.end_epoch(val_acc=50.0)
    bars.close()
    assert out.getvalue().count("estimated duration: ~") == 1
    assert "x 100 steps" in out.getvalue() and "loss=0.5000" in out.getvalue() and "val acc=50.0%" in out.getvalue()
