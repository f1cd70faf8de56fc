"""Shared loss terms and exemplar selection against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from avcl_bench.strategies.losses import kd_loss, separated_ce, taskwise_kd
from avcl_bench.strategies.memory import ExemplarMemory, herding_select


def test_kd_loss_hand_computed():
    new = torch.tensor([[0.0, 0.0]])
    old = torch.tensor([[math.log(3.0), 0.0]])  # softmax -> [0.75, 0.25] at T=1
    # KL(p_old || p_new) = 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_loss(new, old, T=1.0).item() == pytest.approx(expected, rel=1e-5)
    # T=2 scales logits by 1/2 and the loss by 4
    p = torch.softmax(old / 2, 1)[0]
    expected2 = 4 * (p[0] * math.log(p[0] / 0.5) + p[1] * math.log(p[1] / 0.5)).item()
    assert kd_loss(new, old, T=2.0).item() == pytest.approx(expected2, rel=1e-5)
    assert kd_loss(old, old, T=2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_taskwise_kd_is_sum_over_task_slices():
    torch.manual_seed(0)
    new, old = torch.randn(3, 6), torch.randn(3, 6)
    # two old tasks of 2 classes; logits of the current task (4:6) are ignored
    expected = kd_loss(new[:, 0:2], old[:, 0:2]) + kd_loss(new[:, 2:4], old[:, 2:4])
    assert taskwise_kd(new, old, classes_per_task=2, num_old=4).item() == pytest.approx(expected.item(), rel=1e-6)
    changed = new.clone()
    changed[:, 4:] += 5.0
    assert taskwise_kd(changed, old, 2, 4).item() == pytest.approx(expected.item(), rel=1e-6)


def test_separated_ce_hand_computed():
    logits = torch.tensor(
        [
            [2.0, 0.0, 1.0, 0.0],  # exemplar of old class 0
            [0.0, 5.0, 0.0, 1.0],
        ]
    )  # new sample of class 3
    y = torch.tensor([0, 3])
    old_term = -math.log(math.exp(2) / (math.exp(2) + 1))  # softmax over logits 0:2
    new_term = -math.log(math.exp(1) / (math.exp(0) + math.exp(1)))  # softmax over logits 2:4
    assert separated_ce(logits, y, num_old=2, num_seen=4).item() == pytest.approx((old_term + new_term) / 2, rel=1e-6)
    # new data never sees old-class logits: raising them changes nothing
    bumped = logits.clone()
    bumped[1, :2] += 10
    assert separated_ce(bumped, y, 2, 4).item() == pytest.approx(separated_ce(logits, y, 2, 4).item(), rel=1e-6)


def test_herding_first_pick_is_nearest_to_mean():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071], [1.0, 0.2]])
    order = herding_select(feats, 3)
    normed = torch.nn.functional.normalize(feats, dim=1)
    mu = normed.mean(0)
    assert order[0] == int(((normed - mu) ** 2).sum(1).argmin())
    assert len(set(order)) == 3


def test_herding_with_repeats_picks_a_clip_again_by_hand():
    """Unit features a=(1,0), b=(0,1), c=(0.6,0.8); mu = (1.6, 1.8)/3 = (0.533, 0.6).
    Pick 1: ||mu - x||^2 = a 0.578, b 0.444, c 0.044 -> c. Pick 2, ||mu - (x + c)/2||^2: a 0.111,
    b 0.144, c again 0.044: the AV-CIL release's herding (no clip set aside) takes c twice, iCaRL's
    distinct herding takes a."""
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    assert herding_select(feats, 2) == [2, 0]
    assert herding_select(feats, 2, distinct=False) == [2, 2]
    assert len(herding_select(feats, 5, distinct=False)) == 3  # at most one pick per clip of the class
    mem = ExemplarMemory(per_class=2, selection="herding_repeats")
    mem.update(_DS([0, 0, 0]), 1, feature_fn=lambda sub: feats[sub.rows])
    assert mem.store[0][1] == [2, 2]  # the memory holds the clip twice, as the release's list of vids


class _DS:
    """Minimal stand-in for an Avalanche dataset: targets + subset."""

    def __init__(self, targets, rows=None):
        self.targets = list(targets)
        self.rows = rows if rows is not None else list(range(len(targets)))

    def subset(self, idx):
        return _DS([self.targets[i] for i in idx], [self.rows[i] for i in idx])


def test_memory_quota_forms():
    ds1 = _DS([0] * 30 + [1] * 30)
    ds2 = _DS([2] * 30 + [3] * 30)
    mem = ExemplarMemory(per_class=5)
    mem.update(ds1, 2)
    mem.update(ds2, 4)
    assert {c: len(r) for c, (_, r) in mem.store.items()} == {0: 5, 1: 5, 2: 5, 3: 5}
    mem = ExemplarMemory(total=48)
    mem.update(ds1, 2)
    assert len(mem) == 48
    first = list(mem.store[0][1])
    mem.update(ds2, 4)
    assert {c: len(r) for c, (_, r) in mem.store.items()} == {0: 12, 1: 12, 2: 12, 3: 12}
    assert mem.store[0][1] == first[:12]  # shrinking keeps the highest-priority exemplars


def test_memory_herding_uses_features():
    ds = _DS([0] * 10)
    feats = torch.tensor(np.random.RandomState(0).randn(10, 4), dtype=torch.float32)
    mem = ExemplarMemory(per_class=3, selection="herding")
    mem.update(ds, 1, feature_fn=lambda sub: feats[sub.rows])
    assert mem.store[0][1] == herding_select(feats, 3)
