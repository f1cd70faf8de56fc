"""PODNet: pooled-outputs distillation, LSC and NCA against hand-computed values; smoke runs."""

import math

import pytest
import torch

from avcl_bench.strategies.losses import nca_loss
from avcl_bench.strategies.podnet import (
    LSCClassifier,
    lsc_similarity_for,
    pod_flat_loss,
    pod_forward,
    pod_pool,
    pod_spatial_loss,
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


PROXIES = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, -1.0]])  # class 0: rows 0-1, class 1: rows 2-3


def test_lsc_several_proxies_hand_value():
    clf = LSCClassifier(2, proxies=2, similarity="cosine")
    clf.grow(2)
    with torch.no_grad():
        clf.weight.copy_(PROXIES)  # norms do not matter
    y = clf(torch.tensor([[2.0, 0.0]]))
    e = math.e
    # class 0: proxy sims (1, 0), softmax weights (e, 1)/(e+1) -> e/(e+1)
    # class 1: proxy sims (-1, 0), weights (1/e, 1)/(1/e+1) -> -(1/e)/(1/e+1) = -1/(1+e)
    assert y[0, 0].item() == pytest.approx(e / (e + 1), rel=1e-6)
    assert y[0, 1].item() == pytest.approx(-1 / (1 + e), rel=1e-6)
    assert clf.num_classes == 2 and clf.weight.shape == (4, 2)
    assert clf.grow(3) and clf.weight.shape == (6, 2)
    assert torch.equal(clf.weight[:4], PROXIES)


def test_lsc_release_distance_hand_value():
    """The release's neg_stable_cosine_distance: -||h_hat - theta_hat||^2 = 2 cos - 2 per proxy."""
    clf = LSCClassifier(2, proxies=2)  # default: the release's distance
    assert clf.similarity == "neg_stable_cosine_distance"
    clf.grow(2)
    with torch.no_grad():
        clf.weight.copy_(PROXIES)
    x = torch.tensor([[2.0, 0.0]])
    # h_hat = (1, 0); ||h_hat - theta_hat||^2 to (1, 0), (0, 1), (-1, 0), (0, -1) = 0, 2, 4, 2
    assert clf.proxy_similarities(x).flatten().tolist() == pytest.approx([0.0, -2.0, -4.0, -2.0])
    y = clf(x)
    e2 = math.exp(2.0)
    # class 0: (0, -2), softmax weights (1, e^-2)/(1 + e^-2) -> -2 e^-2/(1 + e^-2) = -2/(e^2 + 1) = -0.238406
    # class 1: (-4, -2), weights (e^-4, e^-2)/(e^-4 + e^-2) -> (-4 - 2 e^2)/(1 + e^2) = -2.238406
    assert y[0, 0].item() == pytest.approx(-2 / (e2 + 1), rel=1e-6)
    assert y[0, 1].item() == pytest.approx((-4 - 2 * e2) / (1 + e2), rel=1e-6)
    with pytest.raises(ValueError):
        LSCClassifier(2, 2, similarity="euclidean")


def test_lsc_similarity_follows_the_nca_form_unless_set():
    assert lsc_similarity_for("release") == "neg_stable_cosine_distance"
    assert lsc_similarity_for("paper") == "cosine"
    assert lsc_similarity_for("release", "cosine") == "cosine"


#: eta = 2, delta = 0.6; similarities with the target (class 0) first
SIMS = torch.tensor([[0.5, 0.1, -0.2], [0.9, -1.0, -1.0], [0.1, 0.5, -0.2]])
Y0 = torch.tensor([0, 0, 0])


def test_nca_release_form_hand_values():
    """The PODNet release's nca() (inclearn/lib/losses/base.py): z = eta (s - delta) - max, the target's
    slot of the denominator exp(0): l = -z_y + log(1 + sum_{j != y} exp(z_j)), bounded below by 0."""
    eta, delta = 2.0, 0.6
    # [0.5, 0.1, -0.2]: delta cancels, z = 2 (s - 0.5) = (0, -0.8, -1.4);
    #   l = log(1 + e^-0.8 + e^-1.4) = log(1 + 0.449329 + 0.246597) = log(1.695926) = 0.528229
    # [0.9, -1, -1]: z = (0, -3.8, -3.8); l = log(1 + 2 e^-3.8) = log(1.044742) = 0.043770
    # [0.1, 0.5, -0.2] (target second): z = 2 (s - 0.5) = (-0.8, 0, -1.4);
    #   l = 0.8 + log(e^0 [target slot] + e^0 + e^-1.4) = 0.8 + log(2.246597) = 1.609417
    #   (softmax CE would be 1.328229: the target's slot holds exp(0), not exp(z_y))
    expected = [0.528229, 0.043770, 1.609417]
    assert nca_loss(SIMS, Y0, eta, delta, "release", reduction="none").tolist() == pytest.approx(expected, abs=1e-6)
    assert nca_loss(SIMS, Y0, eta, delta).item() == pytest.approx(sum(expected) / 3, abs=1e-6)  # the default form
    assert nca_loss(SIMS, Y0, eta, delta, reduction="sum").item() == pytest.approx(sum(expected), abs=1e-6)
    # the old suite form (margin on every similarity, positive out of the denominator, no bound) gave
    # log(e^0.2 + e^-0.4) - 1.0 = -0.363 and log(2 e^-2) - 1.8 = -3.107 for the first two rows
    assert (nca_loss(SIMS, Y0, eta, delta, reduction="none") >= 0).all()
    # the margin cancels
    assert nca_loss(SIMS, Y0, eta, 0.0).item() == pytest.approx(nca_loss(SIMS, Y0, eta, delta).item(), abs=1e-7)
    # softmax cross-entropy of eta * s where the target scores highest (rows 1-2)
    ce = torch.nn.functional.cross_entropy(eta * SIMS[:2], Y0[:2], reduction="none")
    assert nca_loss(SIMS[:2], Y0[:2], eta, delta, reduction="none").tolist() == pytest.approx(ce.tolist(), abs=1e-6)


def test_nca_release_form_is_bounded_and_its_target_gradient_vanishes():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(256, 7, generator=g) * 2 - 1
    y = torch.randint(7, (256,), generator=g)
    for eta in (0.5, 2.0, 16.0):
        assert (nca_loss(s, y, eta, 0.6, reduction="none") >= 0).all()
    # [0.9, -1, -1], eta = 2: dl/ds_y = -2 * 2 e^-3.8 / (1 + 2 e^-3.8) = -0.085651 (the old form: -eta = -2)
    sims = SIMS[1:2].clone().requires_grad_(True)
    nca_loss(sims, Y0[:1], 2.0, 0.6).backward()
    assert sims.grad[0, 0].item() == pytest.approx(-0.085651, abs=1e-6)
    # the target far ahead, [1, -1, -1] with eta = 10: z = (0, -20, -20);
    # dl/ds_y = -10 * 2 e^-20 / (1 + 2 e^-20) = -4.1e-8, and the loss log(1 + 2 e^-20) = 4.1e-9
    far = torch.tensor([[1.0, -1.0, -1.0]], requires_grad=True)
    loss = nca_loss(far, Y0[:1], 10.0, 0.6)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-8)
    assert far.grad.abs().max().item() < 1e-7
    # target behind, [0.1, 0.5, -0.2]: dl/ds_y = -eta = -2 exactly (its own slot is the constant exp(0))
    behind = SIMS[2:3].clone().requires_grad_(True)
    nca_loss(behind, Y0[:1], 2.0, 0.6).backward()
    assert behind.grad[0, 0].item() == pytest.approx(-2.0, abs=1e-6)


def test_nca_release_form_scale_gradient_hand_value():
    # [0.5, 0.1, -0.2]: l = log(1 + e^{-0.4 eta} + e^{-0.7 eta}); at eta = 2
    # dl/d eta = (-0.4 e^-0.8 - 0.7 e^-1.4) / (1 + e^-0.8 + e^-1.4) = (-0.179732 - 0.172618) / 1.695926 = -0.207762
    e = torch.tensor(2.0, requires_grad=True)
    nca_loss(SIMS[:1], Y0[:1], e, 0.6).backward()
    assert e.grad.item() == pytest.approx(-0.207762, abs=1e-6)


def test_nca_paper_form_hand_values():
    """PODNet Eq. 8: [ -log( exp(eta (s_y - delta)) / sum_{j != y} exp(eta s_j) ) ]_+."""
    eta, delta = 2.0, 0.6
    # [0.5, 0.1, -0.2]: log(e^0.2 + e^-0.4) - 2 (0.5 - 0.6) = log(1.891723) + 0.2 = 0.837488
    # [0.9, -1, -1]: log(2 e^-2) - 2 (0.9 - 0.6) = -1.906853 -> hinge 0
    # [0.1, 0.5, -0.2]: log(e^1.0 + e^-0.4) - 2 (0.1 - 0.6) = log(3.388602) + 1.0 = 2.220417
    expected = [0.837488, 0.0, 2.220417]
    assert nca_loss(SIMS, Y0, eta, delta, "paper", reduction="none").tolist() == pytest.approx(expected, abs=1e-6)
    # the learned scale: d/d eta = -(s_y - delta) + E_softmax[s_neg] = 0.1 + (0.1 e^0.2 - 0.2 e^-0.4)/(e^0.2 + e^-0.4)
    e = torch.tensor(eta, requires_grad=True)
    nca_loss(SIMS[:1], Y0[:1], e, delta, "paper").backward()
    w = [math.exp(0.2), math.exp(-0.4)]
    assert e.grad.item() == pytest.approx(0.1 + (w[0] * 0.1 - w[1] * 0.2) / sum(w), rel=1e-5)
    with pytest.raises(ValueError):
        nca_loss(SIMS, Y0, eta, delta, "target")


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
    clf = LSCClassifier(16, s.model.classifier.proxies, similarity=s.model.classifier.similarity)
    clf.weight = torch.nn.Parameter(w)
    loss = nca_loss(clf(feats)[:, :4], y, s.model.classifier.eta.detach(), 0.6, s.scfg["nca_form"])
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
            return nca_loss(s.model.classifier(feats)[:, :4], y, eta, 0.6, s.scfg["nca_form"]).item()

    start = loss()
    s.scfg.update(balanced_finetune_epochs=20)
    s.balanced_finetune()
    assert loss() < start
