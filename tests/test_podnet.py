"""PODNet: pooled-outputs distillation, LSC and NCA against hand-computed values; smoke runs."""

import math

import pytest
import torch

from avcl_bench.strategies.losses import nca_loss
from avcl_bench.strategies.podnet import (
    LSCClassifier,
    pod_flat_loss,
    pod_forward,
    pod_pool,
    pod_spatial_loss,
    podnet_nca,
    spherical_kmeans,
    split_stage,
    tokens_and_layout,
)

#: the paper-level model (D = 512) is not needed to exercise the feature path
SMALL_FEATURES = ["--set", "model.dim=32", "--set", "model.heads=4"]


def test_pod_pool_mapping():
    torch.manual_seed(0)
    v = torch.randn(2, 3, 4, 5)  # B, T frames, P positions, D
    a = torch.randn(2, 1, 5)  # B, Na, D
    out = pod_pool(a, v, square=False)
    T, P, D = 3, 4, 5
    per_frame = out["visual"][:, : T * D].view(2, T, D)
    per_position = out["visual"][:, T * D :].view(2, P, D)
    assert torch.allclose(per_frame, v.sum(2))  # positions pooled away (POD-width analogue)
    assert torch.allclose(per_position, v.sum(1))  # frames pooled away (POD-height analogue)
    assert torch.allclose(out["audio"], torch.cat([a.flatten(1), a.sum(1)], 1))
    squared = pod_pool(a, v, square=True)
    assert torch.allclose(squared["visual"][:, : T * D].view(2, T, D), (v * v).sum(2))


def test_pod_spatial_zero_for_identical_maps_and_hand_value():
    # one clip, 1 frame, 2 positions, 1 channel; activations squared before pooling
    old_v = torch.tensor([[[[1.0], [2.0]]]])  # squares 1, 4 -> pooled [5 | 1, 4]
    new_v = torch.tensor([[[[2.0], [1.0]]]])  # squares 4, 1 -> pooled [5 | 4, 1]
    old_a = torch.tensor([[[1.0, 0.0]]])  # squares [1, 0] -> [1, 0 | 1, 0]
    new_a = torch.tensor([[[0.0, 1.0]]])  # -> [0, 1 | 0, 1]
    same = [pod_pool(old_a, old_v), pod_pool(old_a, old_v)]
    assert pod_spatial_loss(same, same).item() == 0.0
    # visual: ||[5,1,4]/sqrt(42) - [5,4,1]/sqrt(42)|| = sqrt(18/42); audio: ||(1,0,1,0)-(0,1,0,1)||/sqrt(2) = sqrt(2)
    v_dist, a_dist = math.sqrt(18 / 42), math.sqrt(2.0)
    stage1_old, stage1_new = pod_pool(old_a, old_v), pod_pool(new_a, new_v)
    stage2 = pod_pool(None, old_v)  # identical in both models: distance 0
    loss = pod_spatial_loss([stage1_old, stage2], [stage1_new, stage2])
    assert loss.item() == pytest.approx(((v_dist + a_dist) / 2 + 0.0) / 2, rel=1e-6)


def test_pod_flat_hand_value():
    # the release's cosine embedding loss: mean of 1 - cos over the batch
    old = torch.tensor([[3.0, 4.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    new = torch.tensor([[6.0, 8.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    # cos = 1, 0, -1, 1/sqrt(2) -> (0 + 1 + 2 + 1 - 1/sqrt(2)) / 4
    assert pod_flat_loss(old, new).item() == pytest.approx((4 - 1 / math.sqrt(2)) / 4, rel=1e-6)
    # the norm does not count: a scaled embedding is not a drift (the L2 form would give 5)
    assert pod_flat_loss(old[:1], new[:1]).item() == pytest.approx(0.0, abs=1e-7)


def test_lsc_several_proxies_hand_value():
    clf = LSCClassifier(2, proxies=2)
    clf.grow(2)
    with torch.no_grad():
        clf.weight.copy_(
            torch.tensor(
                [
                    [1.0, 0.0],
                    [0.0, 2.0],  # class 0 (norms do not matter)
                    [-3.0, 0.0],
                    [0.0, -1.0],
                ]
            )
        )  # class 1
    y = clf(torch.tensor([[2.0, 0.0]]))
    e = math.e
    # class 0: proxy sims (1, 0), softmax weights (e, 1)/(e+1) -> e/(e+1)
    # class 1: proxy sims (-1, 0), weights (1/e, 1)/(1/e+1) -> -(1/e)/(1/e+1) = -1/(1+e)
    assert y[0, 0].item() == pytest.approx(e / (e + 1), rel=1e-6)
    assert y[0, 1].item() == pytest.approx(-1 / (1 + e), rel=1e-6)
    assert clf.num_classes == 2 and clf.weight.shape == (4, 2)
    assert clf.grow(3) and clf.weight.shape == (6, 2)
    assert torch.equal(clf.weight[:4], torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, -1.0]]))


def test_nca_loss_with_margin_hand_value():
    sims = torch.tensor([[0.5, 0.1, -0.2], [0.9, -1.0, -1.0]])
    y = torch.tensor([0, 0])
    eta, delta = 2.0, 0.6
    # sample 1: -log(exp(2*(0.5-0.6)) / (exp(0.2) + exp(-0.4))) > 0
    l1 = math.log(math.exp(0.2) + math.exp(-0.4)) + 2 * (0.6 - 0.5)
    # sample 2: log(2 exp(-2)) - 2 * 0.3 = -1.907 < 0 -> hinge gives 0
    l2 = max(0.0, math.log(2 * math.exp(-2.0)) - 2 * 0.3)
    assert l2 == 0.0
    assert nca_loss(sims, y, eta, delta, hinge=True).item() == pytest.approx((l1 + l2) / 2, rel=1e-6)


def test_podnet_nca_release_and_paper_forms_hand_values():
    sims = torch.tensor([[0.5, 0.1, -0.2], [0.9, -1.0, -1.0]])
    y = torch.tensor([0, 0])
    eta, delta = 2.0, 0.6
    # release nca(): margin on every similarity cancels, no clamp:
    # sample 1: log(exp(0.2) + exp(-0.4)) - 1.0; sample 2: log(2 exp(-2)) - 1.8 = -3.107 (kept negative)
    r1 = math.log(math.exp(0.2) + math.exp(-0.4)) - 1.0
    r2 = math.log(2 * math.exp(-2.0)) - 1.8
    assert r2 < 0
    assert podnet_nca(sims, y, eta, delta, "release").item() == pytest.approx((r1 + r2) / 2, rel=1e-6)
    # paper Eq. 8: the margin on the target, clamped: sample 1 + 2 * 0.6, sample 2 -> 0
    p1 = r1 + 2 * 0.6
    assert podnet_nca(sims, y, eta, delta, "paper").item() == pytest.approx((p1 + 0.0) / 2, rel=1e-6)
    # the learned scale: d/d eta = -(s_y - delta) + E_softmax[s_neg] (paper) vs -s_y + E_softmax[s_neg] (release)
    for form, shift in (("release", 0.0), ("paper", delta)):
        e = torch.tensor(eta, requires_grad=True)
        podnet_nca(sims[:1], y[:1], e, delta, form).backward()
        w = torch.softmax(torch.tensor([0.2, -0.4]), 0)
        expected = -(0.5 - shift) + float(w[0] * 0.1 + w[1] * -0.2)
        assert e.grad.item() == pytest.approx(expected, rel=1e-5)


def test_spherical_kmeans_returns_unit_centroids():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    c = spherical_kmeans(x, 2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(c.norm(dim=1), torch.ones(2))
    assert sorted(c.argmax(1).tolist()) == [0, 1]  # one centroid per cluster
    assert spherical_kmeans(x[:1], 3).shape == (3, 2)  # more proxies than samples


@pytest.mark.parametrize("modality", ["audio", "visual", "audio-visual"])
def test_token_layout_matches_model_and_identical_models_do_not_distil(feature_benchmark, modality):
    from avcl_bench.models.avnet import AVNet
    from avcl_bench.runner import build_config

    cfg, _ = build_config("podnet", str(feature_benchmark), {"modality": modality, "model": {"dim": 16, "heads": 2}})
    torch.manual_seed(0)
    model = AVNet(cfg).eval()
    x = [torch.randn(3, 32), torch.randn(3, 2, 4, 16)]  # the generated features: audio 32, visual (2, 4, 16)
    seq, layout = tokens_and_layout(model, x)
    assert torch.equal(seq, model.tokens(x))
    audio, visual = split_stage(seq, layout)
    assert (audio is not None) == (modality != "visual") and (visual is not None) == (modality != "audio")
    if visual is not None:
        assert visual.shape == (3, 2, 4, 16)
    feat, stages = pod_forward(model, x)
    assert len(stages) == 1 + cfg["model"]["fusion_depth"]
    assert torch.allclose(feat, model.forward_features(x))
    old_feat, old_stages = pod_forward(model, x)
    assert pod_spatial_loss(old_stages, stages).item() == pytest.approx(0.0, abs=1e-6)
    assert pod_flat_loss(old_feat, feat).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("input", [pytest.param("clips", marks=pytest.mark.slow), "features"])
@pytest.mark.parametrize("modality", ["audio", "visual", "audio-visual"])
def test_podnet_smoke(run_tiny, modality, input):
    extra = []
    if input == "features" and modality == "visual":  # the AV-CIL memory form: a fixed total
        extra = ["--set", "memory.per_class=null", "--set", "memory.total=12"]
    if input == "features" and modality == "audio":
        extra = ["--set", "strategy.classifier=nme"]
    m = run_tiny("podnet", modality, input, extra + (SMALL_FEATURES if input == "features" else []))
    assert set(m["modalities"]) == {modality}
    res = m["modalities"][modality]
    assert 0.0 <= res["avg_acc"] <= 100.0
    C = m["run"]["num_classes"]
    expected = 12 // C * C if extra[:4] == ["--set", "memory.per_class=null", "--set", "memory.total=12"] else 3 * C
    if input == "features":
        assert m["run"]["buffer_size"] == expected
    else:
        assert m["run"]["buffer_size"] > 0


def _podnet_after_two_tasks(feature_benchmark, build_strategy, **strategy):
    """A PODNet strategy trained on the first two experiences of the tiny feature benchmark."""
    from avcl_bench.data.datasets import load_data
    from avcl_bench.data.streams import make_streams
    from avcl_bench.runner import build_config, seed_everything

    over = {
        "model": {"dim": 16, "heads": 2},
        "train": {"epochs": 1, "batch_size": 64},
        "progress": False,
        "strategy": strategy,
    }
    cfg, manifest = build_config("podnet", str(feature_benchmark), over)
    seed_everything(0)
    manifest.materialize(cfg)
    sc = make_streams(load_data(manifest, cfg), cfg["num_tasks"])
    s = build_strategy("podnet", over)
    for exp in list(sc.train_stream)[:2]:
        s.train(exp, eval_streams=[])
    return s


def test_balanced_finetune_is_one_sgd_step_on_the_proxies_only(feature_benchmark, build_strategy):
    """One epoch, one full batch (the memory: 3 clips of each of the 4 seen classes): the proxies
    move by exactly -lr * d(NCA)/d(proxies) (first SGD step: momentum has no history yet); the
    backbone and eta do not move; the exemplars are class-balanced."""
    s = _podnet_after_two_tasks(feature_benchmark, build_strategy, balanced_finetune_epochs=0)
    counts = torch.bincount(torch.as_tensor(list(s.memory.dataset().targets)))
    assert counts.tolist() == [3, 3, 3, 3]
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    # expected: the gradient of the NCA loss on the memory's features, by autograd on a copy
    ds = s.memory.dataset().eval()
    feats, y = s.extract_features(ds), torch.as_tensor(list(ds.targets))
    w = before["classifier.weight"].clone().requires_grad_(True)
    clf = LSCClassifier(16, s.model.classifier.proxies)
    clf.weight = torch.nn.Parameter(w)
    loss = podnet_nca(clf(feats)[:, :4], y, s.model.classifier.eta.detach(), 0.6, s.scfg["nca_form"])
    (grad,) = torch.autograd.grad(loss, clf.weight)
    s.scfg.update(balanced_finetune_epochs=1, balanced_finetune_lr=0.05)
    s.balanced_finetune()
    after = dict(s.model.named_parameters())
    assert grad.abs().sum() > 0
    assert torch.allclose(after["classifier.weight"], before["classifier.weight"] - 0.05 * grad, atol=1e-6)
    for n, p in after.items():
        if n != "classifier.weight":
            assert torch.equal(p, before[n]), n


def test_balanced_finetune_lowers_the_loss_on_the_balanced_memory(feature_benchmark, build_strategy):
    s = _podnet_after_two_tasks(feature_benchmark, build_strategy, balanced_finetune_epochs=0)
    ds = s.memory.dataset().eval()
    feats, y = s.extract_features(ds), torch.as_tensor(list(ds.targets))
    eta = s.model.classifier.eta.detach()

    def loss():
        with torch.no_grad():
            return podnet_nca(s.model.classifier(feats)[:, :4], y, eta, 0.6, s.scfg["nca_form"]).item()

    start = loss()
    s.scfg.update(balanced_finetune_epochs=20)
    s.balanced_finetune()
    assert loss() < start
