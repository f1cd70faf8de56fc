"""DualPrompt: G-prompt in shallow blocks, E-prompt of the matched task in deeper blocks."""

import pytest
import torch

from avcl_bench.errors import ConfigError
from avcl_bench.models.prompts import DualPrompts

#: the paper-level model (D = 512) is not needed to exercise the feature path
SMALL_FEATURES = ["--set", "model.dim=32", "--set", "model.heads=4"]


def test_prefixes_put_g_in_shallow_and_the_tasks_e_in_deep_blocks():
    dp = DualPrompts(dim=4, num_tasks=3, g_layers=[0], e_layers=[1, 2], g_length=2, e_length=3, depth=3)
    task = torch.tensor([2, 0])
    pre = dp.prefixes(task)
    assert sorted(pre) == [0, 1, 2]
    pk, pv = pre[0]
    assert pk.shape == (2, 2, 4) and torch.equal(pk[1], dp.g[0, 0]) and torch.equal(pv[0], dp.g[0, 1])
    for j, layer in enumerate([1, 2]):
        pk, pv = pre[layer]
        assert pk.shape == (2, 3, 4)
        assert torch.equal(pk[0], dp.e[2][j, 0]) and torch.equal(pv[0], dp.e[2][j, 1])  # sample 0: task 2
        assert torch.equal(pk[1], dp.e[0][j, 0]) and torch.equal(pv[1], dp.e[0][j, 1])  # sample 1: task 0
    both = DualPrompts(dim=4, num_tasks=2, g_layers=[0], e_layers=[0], g_length=2, e_length=3, depth=1)
    pk, _ = both.prefixes(torch.tensor([1]))[0]
    assert torch.equal(pk[0], torch.cat([both.g[0, 0], both.e[1][0, 0]]))  # G then E where both apply
    with pytest.raises(ConfigError, match="fusion blocks"):
        DualPrompts(dim=4, num_tasks=2, g_layers=[0], e_layers=[2], g_length=2, e_length=3, depth=2)


def test_task_key_matching_and_loss():
    dp = DualPrompts(dim=2, num_tasks=3, g_layers=[0], e_layers=[0], g_length=1, e_length=1, depth=1)
    with torch.no_grad():
        for t, k in enumerate([[1.0, 0.0], [0.0, 5.0], [-1.0, 0.0]]):
            dp.task_keys[t].copy_(torch.tensor(k))
    q = torch.tensor([[0.9, 0.1], [0.1, 0.9], [-1.0, 0.05]])
    assert dp.match(q, 3)[0].tolist() == [0, 1, 2]
    assert dp.match(q, 2)[0].tolist() == [0, 1, 1]  # only the tasks seen so far compete
    loss = dp.matching_loss(q, torch.tensor([0, 0, 0]))
    cos = torch.nn.functional.cosine_similarity(q, torch.tensor([[1.0, 0.0]]).expand(3, -1))
    assert loss.item() == pytest.approx((1 - cos).mean().item(), rel=1e-6)
    dp.set_task(1)
    assert [e.requires_grad for e in dp.e] == [False, True, False]
    assert [k.requires_grad for k in dp.task_keys] == [False, True, False]
    assert dp.g.requires_grad


@pytest.fixture
def dualprompt(build_strategy):
    s = build_strategy("dualprompt", {"model": {"dim": 16, "heads": 2}}, seed=0)
    s.model.grow(6)
    s.model.eval()
    s.task_id = 2  # three tasks learned
    return s


def test_inference_uses_the_expert_prompt_of_the_matched_task(dualprompt):
    s, model = dualprompt, dualprompt.model
    x = [torch.randn(4, 32), torch.randn(4, 2, 4, 16)]
    query = model.query(x)
    with torch.no_grad():  # task keys: task t's key = the query of sample t (sample 3 -> task 1)
        for t in range(3):
            model.prompt.task_keys[t].copy_(query[t])
        model.prompt.task_keys[3].copy_(-query[0])  # an unseen task must never be picked
    matched, _ = model.prompt.match(query, 3)
    expected_task = [0, 1, 2] + [int(torch.nn.functional.cosine_similarity(query[3:], query[:3]).argmax())]
    assert matched.tolist() == expected_task
    logits, aux = s.forward_with_aux(x)  # inference: task from key matching
    assert aux is None and s.last_task.tolist() == expected_task
    explicit, _ = s.forward_with_aux(x, torch.tensor(expected_task))
    assert torch.allclose(logits, explicit, atol=1e-6)
    for t in range(3):  # the expert prompt matters: another task's expert gives other logits
        other, _ = s.forward_with_aux(x, torch.full((4,), (t + 1) % 3))
        assert not torch.allclose(logits[t], other[t])
    prefixes = model.prompt.prefixes(torch.tensor(expected_task))
    feat = model.forward_features(x, prefixes=prefixes)
    assert torch.allclose(logits, model.classifier(feat), atol=1e-6)


@pytest.mark.parametrize("input", [pytest.param("clips", marks=pytest.mark.slow), "features"])
@pytest.mark.parametrize("modality", ["audio", "visual", "audio-visual"])
def test_dualprompt_smoke(run_tiny, modality, input):
    m = run_tiny("dualprompt", modality, input, SMALL_FEATURES if input == "features" else [])
    assert set(m["modalities"]) == {modality}
    assert 0.0 <= m["modalities"][modality]["avg_acc"] <= 100.0
    assert m["run"]["buffer_size"] == 0  # rehearsal-free
