"""SS-IL: separated softmax + task-wise KD wiring, replay in separate batches; smoke runs."""

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from avcl_bench.data.loading import PairedReplayLoader
from avcl_bench.strategies.losses import separated_ce, taskwise_kd

#: the paper-level model (D = 512) is not needed to exercise the feature path
SMALL_FEATURES = ["--set", "model.dim=32", "--set", "model.heads=4"]


@pytest.fixture
def ssil(build_strategy):
    s = build_strategy("ssil", {"model": {"dim": 16, "heads": 2}})
    s.num_old, s.num_seen, s.classes_per_task = 2, 4, 2
    return s


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_ssil_loss_on_new_data_ignores_old_class_logits(ssil):
    # task 2 of 2 classes: old classes 0-1, new classes 2-3; rows 0-1 new data, row 2 an exemplar
    logits = torch.tensor([[0.3, -0.2, 2.0, 0.0], [1.0, 0.5, 0.0, 1.0], [2.0, 0.0, 1.0, -1.0]], requires_grad=True)
    y = torch.tensor([2, 3, 0])
    ssil.mbatch = [[torch.zeros(3, 32), torch.zeros(3, 2, 4, 16)], y, torch.zeros(3, dtype=torch.long)]
    ssil.previous.model = None  # CE part alone
    ssil.mb_output = logits
    loss = ssil.criterion()
    new1 = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0))  # softmax over new logits 2:4 only
    new2 = -math.log(math.exp(1.0) / (1.0 + math.exp(1.0)))
    old = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0))  # exemplar: softmax over old logits 0:2 only
    assert loss.item() == pytest.approx((new1 + new2 + old) / 3, rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[:2, :2] == 0)  # new data: no gradient on old-class logits
    assert torch.all(logits.grad[2, 2:] == 0)  # exemplar: none on new-class logits
    # raising the old-class logits of the new samples changes nothing
    bumped = logits.detach().clone()
    bumped[:2, :2] += 7.0
    ssil.mb_output = bumped
    assert ssil.criterion().item() == pytest.approx(loss.item(), rel=1e-6)


def test_ssil_adds_taskwise_kd_of_the_previous_model(ssil):
    torch.manual_seed(0)
    logits, old_logits = torch.randn(3, 4), torch.randn(3, 2)
    y = torch.tensor([2, 3, 1])
    ssil.mbatch = [[torch.zeros(3, 32), torch.zeros(3, 2, 4, 16)], y, torch.zeros(3, dtype=torch.long)]
    ssil.mb_output = logits
    ssil.previous.model = _FixedLogits(old_logits)
    expected = separated_ce(logits, y, 2, 4) + taskwise_kd(logits[:, :2], old_logits, 2, 2, T=2.0)
    assert ssil.criterion().item() == pytest.approx(expected.item(), rel=1e-6)
    assert taskwise_kd(logits[:, :2], old_logits, 2, 2, T=2.0).item() > 0


def test_replay_batches_are_drawn_separately_and_cycle():
    new = DataLoader(TensorDataset(torch.arange(10, 16).float().view(-1, 1), torch.arange(10, 16)), batch_size=2)
    mem = DataLoader(TensorDataset(torch.arange(0, 3).float().view(-1, 1), torch.arange(0, 3)), batch_size=2)
    batches = list(PairedReplayLoader(new, mem))
    assert len(batches) == 3  # one epoch = one pass over the new data
    ys = [b[1].tolist() for b in batches]
    assert ys == [[10, 11, 0, 1], [12, 13, 2], [14, 15, 0, 1]]  # new rows first, memory cycles
    assert [b[1].tolist() for b in PairedReplayLoader(new, None)] == [[10, 11], [12, 13], [14, 15]]


@pytest.mark.parametrize("input", [pytest.param("clips", marks=pytest.mark.slow), "features"])
@pytest.mark.parametrize("modality", ["audio", "visual", "audio-visual"])
def test_ssil_smoke(run_tiny, modality, input):
    extra = []
    if input == "features" and modality == "visual":  # the AV-CIL memory form: a fixed total
        extra = ["--set", "memory.per_class=null", "--set", "memory.total=12"]
    m = run_tiny("ssil", modality, input, extra + (SMALL_FEATURES if input == "features" else []))
    assert set(m["modalities"]) == {modality}
    assert 0.0 <= m["modalities"][modality]["avg_acc"] <= 100.0
    C = m["run"]["num_classes"]
    if input == "features":
        assert m["run"]["buffer_size"] == (12 // C * C if extra else 3 * C)
    else:
        assert m["run"]["buffer_size"] > 0
