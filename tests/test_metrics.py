"""Metrics on hand-computed accuracy matrices."""

import math

import numpy as np
import pytest

from avcl_bench import metrics

NAN = float("nan")
# 3 tasks; R[i][j] = accuracy on task j after training task i.
R3 = [
    [90.0, NAN, NAN],
    [60.0, 80.0, NAN],
    [70.0, 50.0, 85.0],
]


def test_average_accuracy_is_mean_of_last_row():
    assert metrics.average_accuracy(R3) == pytest.approx((70 + 50 + 85) / 3)


def test_forgetting_max_minus_last():
    # task0: max(90, 60) - 70 = 20; task1: max(80) - 50 = 30 -> 25
    assert metrics.forgetting_max(R3) == pytest.approx(25.0)
    # the L2P release's maximum also takes the last row: max(90, 60, 70) - 70, max(80, 50) - 50 -> same here
    assert metrics.forgetting_l2p(R3) == pytest.approx(25.0)


def test_forgetting_l2p_counts_last_step_improvement_as_zero():
    R = [[40.0, NAN, NAN], [30.0, 60.0, NAN], [50.0, 55.0, 90.0]]
    # before-last maximum: task0 max(40, 30) - 50 = -10, task1 max(60) - 55 = 5 -> -2.5
    assert metrics.forgetting_max(R) == pytest.approx(-2.5)
    # L2P release: task0 max(40, 30, 50) - 50 = 0, task1 max(60, 55) - 55 = 5 -> 2.5
    assert metrics.forgetting_l2p(R) == pytest.approx(2.5)
    out = metrics.all_metrics(R)
    assert out["forgetting"] == pytest.approx(-2.5) and out["forgetting_l2p"] == pytest.approx(2.5)


def test_forgetting_max_uses_best_not_first():
    R = [[50.0, NAN, NAN], [80.0, 70.0, NAN], [60.0, 70.0, 90.0]]
    # task0: max(50, 80) - 60 = 20 (first-minus-last would give -10); task1: 70 - 70 = 0
    assert metrics.forgetting_max(R) == pytest.approx(10.0)
    assert metrics.forgetting_first_last(R) == pytest.approx((-10 + 0) / 2)


def test_first_last_and_bwt():
    # task0: 90 - 70 = 20; task1: 80 - 50 = 30
    assert metrics.forgetting_first_last(R3) == pytest.approx(25.0)
    assert metrics.backward_transfer(R3) == pytest.approx(-25.0)


def test_step_accuracies_unweighted_and_weighted():
    assert metrics.step_accuracies(R3) == pytest.approx([90.0, 70.0, (70 + 50 + 85) / 3])
    # weights 100, 300, 100 test clips
    w = [100, 300, 100]
    expected = [90.0, (60 * 100 + 80 * 300) / 400, (70 * 100 + 50 * 300 + 85 * 100) / 500]
    assert metrics.step_accuracies(R3, w) == pytest.approx(expected)
    assert metrics.mean_incremental_accuracy(R3, w) == pytest.approx(np.mean(expected))


def test_avcil_forgetting_updates_best_after_computing():
    # step1: best0 = 90 -> 90 - 60 = 30; then best0 = 90.
    # step2: (90 - 70 + 80 - 50) / 2 = 25
    assert metrics.avcil_forgetting_per_step(R3) == pytest.approx([30.0, 25.0])
    assert metrics.avcil_forgetting(R3) == pytest.approx(27.5)


def test_avcil_forgetting_can_be_negative():
    R = [[50.0, NAN], [60.0, 70.0]]
    assert metrics.avcil_forgetting(R) == pytest.approx(-10.0)
    # the maximum before the last step: improvement at the last step counts negative ...
    assert metrics.forgetting_max(R) == pytest.approx(-10.0)
    # ... the L2P release's maximum includes it: task 0, max(50, 60) - 60 = 0
    assert metrics.forgetting_l2p(R) == pytest.approx(0.0)


def test_single_task_has_zero_forgetting():
    R = [[42.0]]
    assert metrics.forgetting_max(R) == 0.0
    assert metrics.forgetting_l2p(R) == 0.0
    assert metrics.avcil_forgetting(R) == 0.0
    assert metrics.average_accuracy(R) == 42.0


def test_unseen_entries_are_never_read():
    out = metrics.all_metrics(R3)
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in out.values() if not isinstance(v, list))
    assert set(out) <= set(metrics.DEFINITIONS)


def test_non_square_matrix_rejected():
    with pytest.raises(ValueError):
        metrics.average_accuracy([[1.0, 2.0]])


def test_unlearned_tasks_hand_computed():
    from avcl_bench.metrics import unlearned_tasks

    nan = float("nan")
    # 2 classes per task: chance 50 %, so R[j][j] <= 55 is "not learned"
    R = [[54.0, nan, nan], [10.0, 56.0, nan], [0.0, 5.0, 55.0]]
    assert unlearned_tasks(R, classes_per_task=2) == [1, 3]
    # 10 classes per task: chance 10 %, bar 15 %
    assert unlearned_tasks([[15.1, nan], [3.0, 15.0]], classes_per_task=10) == [2]
