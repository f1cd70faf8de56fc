"""AFC: NCA loss, LSC proxies, channel importance and feature distillation on tiny hand-built
examples, imprinting, and end-to-end runs of both variants on generated AV-CIL-format features."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from avcl_bench.cli import main
from avcl_bench.models.avcil import AVCILNet
from avcl_bench.strategies.afc import (
    AFC,
    LSCClassifier,
    channel_importance,
    feature_distillation,
    feature_gradients,
    importance_weights,
    kmeans,
    sample_importance_weights,
)
from avcl_bench.strategies.losses import nca_loss


def tiny_cfg(modality="audio-visual", audio_dim=4, visual_shape=(2, 3, 4)):
    return {
        "input": "features",
        "modality": modality,
        "model": {"dim": 8},
        "features": {"audio_dim": audio_dim, "visual_shape": list(visual_shape)},
    }


def test_nca_loss_release_form_hand_computed():
    """AFC's loss is the AV-CIL release's nca() (AFC/train_incremental_afc.py): z = scale (s - 0.6) - max,
    l = -z_y + log(exp(0) [target slot] + sum_{j != y} exp(z_j)), >= 0; on LSC similarities in [-4, 0]."""
    s = torch.tensor([[-0.5, -1.5, -3.0], [-2.0, -0.4, -3.0]])
    y = torch.tensor([0, 0])
    # row 1, scale 1: z = s + 0.5 = (0, -1, -2.5); l = log(1 + e^-1 + e^-2.5) = log(1.449964) = 0.371539
    assert nca_loss(s[:1], y[:1], scale=1.0, margin=0.6).item() == pytest.approx(0.371539, abs=1e-6)
    # row 2 (target behind), scale 1.5: z = 1.5 (s + 0.4) = (-2.4, 0, -3.9);
    # l = 2.4 + log(1 + 1 + e^-3.9) = 2.4 + log(2.020242) = 3.103217
    assert nca_loss(s[1:], y[1:], scale=1.5, margin=0.6).item() == pytest.approx(3.103217, abs=1e-6)
    # the margin cancels; for row 1 the old target-margin form gave log(e^-1.5 + e^-3.0) + 1.1 = -0.199
    # and the old 'all' form log(e^-1.5 + e^-3.0) + 0.5 = -0.799 (both unbounded below)
    assert nca_loss(s[:1], y[:1], 1.0, 0.0).item() == pytest.approx(0.371539, abs=1e-6)
    # the learnable scale receives a gradient: row 1, l(eta) = log(1 + e^-eta + e^-2.5 eta),
    # dl/d eta at 1 = (-e^-1 - 2.5 e^-2.5) / 1.449964 = (-0.367879 - 0.205212) / 1.449964 = -0.395245
    scale = torch.tensor(1.0, requires_grad=True)
    nca_loss(s[:1], y[:1], scale).backward()
    assert scale.grad.item() == pytest.approx(-0.395245, abs=1e-6)
    two = torch.tensor([[0.5, 0.1, -0.2], [0.0, 0.3, 0.1]])
    per = nca_loss(two, torch.tensor([0, 1]), 2.0, reduction="none")
    assert (per >= 0).all()
    assert nca_loss(two, torch.tensor([0, 1]), 2.0).item() == pytest.approx(per.mean().item())
    assert nca_loss(two, torch.tensor([0, 1]), 2.0, reduction="sum").item() == pytest.approx(per.sum().item())


def test_lsc_proxy_pooling_and_frozen_old_proxies():
    clf = LSCClassifier(2, proxies_per_class=2)
    clf.grow(1)
    with torch.no_grad():
        clf.new_weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    x = torch.tensor([[2.0, 0.0]])
    # proxy similarities -||x_hat - w_hat||^2: [0, -2]; softmax-weighted sum over the proxies
    w = [1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2))]
    assert clf(x).item() == pytest.approx(w[0] * 0 + w[1] * -2, rel=1e-6)
    before = clf.weight.detach().clone()
    clf.grow(3)
    assert clf.num_classes == 3 and clf.old_weight.shape == (2, 2) and clf.new_weight.shape == (4, 2)
    assert not clf.old_weight.requires_grad and clf.new_weight.requires_grad
    opt = torch.optim.Adam([p for p in clf.parameters() if p.requires_grad], lr=0.1, weight_decay=1e-4)
    loss = nca_loss(clf(torch.randn(4, 2)), torch.tensor([0, 1, 2, 2]), clf.scale)
    loss.backward()
    opt.step()
    assert torch.equal(clf.old_weight, before)  # earlier steps' proxies never move


def test_channel_importance_and_weights_hand_computed():
    grads = {"f_a": torch.tensor([[3.0, 0.0], [4.0, 0.0]]), "v": torch.tensor([[0.0, 1.0], [0.0, -1.0]])}
    imp = channel_importance(grads)
    rms = math.sqrt((9 + 16) / 2)
    assert imp["f_a"].tolist() == pytest.approx([rms, 0.0])
    assert imp["v"].tolist() == pytest.approx([0.0, 1.0])
    w = importance_weights(imp, {"f_a": None, "v": None})
    assert w["f_a"][0] == pytest.approx(rms / (rms + 1)) and w["v"][0] == pytest.approx(1 / (rms + 1))
    assert w["f_a"][1].tolist() == pytest.approx([2.0, 0.0]) and w["v"][1].tolist() == pytest.approx([0.0, 2.0])
    uniform = importance_weights(None, {"a": None, "b": None, "c": None})
    assert all(g == pytest.approx(1 / 3) and c is None for g, c in uniform.values())


def test_sample_importance_weights_hand_computed():
    """strategy.importance release: per sample, each group's gradient norm over their sum."""
    grads = {"f_a": torch.tensor([[3.0, 4.0], [0.0, 1.0]]), "f_v": torch.tensor([[0.0, 5.0], [0.0, 3.0]])}
    w = sample_importance_weights(grads)
    # sample 1: norms 5 and 5 -> 0.5, 0.5; sample 2: norms 1 and 3 -> 0.25, 0.75
    assert w["f_a"][0].tolist() == pytest.approx([0.5, 0.25]) and w["f_v"][0].tolist() == pytest.approx([0.5, 0.75])
    assert w["f_a"][1] is None and w["f_v"][1] is None
    # one group (audio or visual only): weight 1 for every sample
    assert sample_importance_weights({"f_a": grads["f_a"]})["f_a"][0].tolist() == [1.0, 1.0]
    # per-sample weights in the distance: mean over samples of w(x) ||n(x) - o(x)||
    new = {"f_a": torch.tensor([[1.0, 0.0], [1.0, 0.0]])}
    old = {"f_a": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}
    weighted = feature_distillation(new, old, {"f_a": (torch.tensor([0.5, 0.25]), None)})
    assert weighted.item() == pytest.approx(0.5 * math.sqrt(2.0) / 2, rel=1e-5)


def test_feature_distillation_hand_computed():
    new = {"f_a": torch.tensor([[1.0, 0.0]]), "v": torch.tensor([[0.0, 2.0]])}
    old = {"f_a": torch.tensor([[0.0, 1.0]]), "v": torch.tensor([[0.0, 5.0]])}
    weights = {"f_a": (0.75, torch.tensor([2.0, 0.0])), "v": (0.25, None)}
    # f_a: normalised difference (1, -1), channel weights (2, 0) -> sqrt(2); v: identical directions -> 0
    expected = 0.75 * math.sqrt(2.0)
    assert feature_distillation(new, old, weights).item() == pytest.approx(expected, rel=1e-5)
    assert feature_distillation(old, old, weights).item() == pytest.approx(0.0, abs=1e-5)
    uniform = {"f_a": (0.5, None), "v": (0.5, None)}
    assert feature_distillation(new, old, uniform).item() == pytest.approx(0.5 * math.sqrt(2.0), rel=1e-5)
    # finite gradient where new and old still agree (the first iteration of a step)
    leaf = old["f_a"].clone().requires_grad_(True)
    feature_distillation({"f_a": leaf, "v": old["v"]}, old, weights).backward()
    assert torch.isfinite(leaf.grad).all()


@pytest.mark.parametrize("modality", ["audio-visual", "audio", "visual"])
def test_feature_gradients_match_a_full_backward(modality):
    torch.manual_seed(0)
    net = AVCILNet(tiny_cfg(modality), classifier=lambda d: LSCClassifier(d, 3))
    net.grow(4)
    x = (torch.randn(5, 4), torch.randn(5, 2, 3, 4))
    y = torch.tensor([0, 1, 2, 3, 1])
    got = feature_gradients(net, x, y, num_classes=4, margin=0.6)
    out = net.forward_all(x)
    names = {"audio-visual": ["v", "f_a", "f_v"], "audio": ["f_a"], "visual": ["f_v"]}[modality]
    for n in names:
        out[n].retain_grad()
    nca_loss(out["logits"], y, net.classifier.scale, 0.6, reduction="sum").backward()
    assert sorted(got) == sorted(names)
    for n in names:
        assert got[n].shape == out[n].shape
        assert torch.allclose(got[n], out[n].grad, atol=1e-6), n
        assert got[n].abs().sum() > 0


def test_kmeans_finds_two_blobs():
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.randn(30, 2, generator=g) * 0.1 + torch.tensor([5.0, 0.0]),
            torch.randn(30, 2, generator=g) * 0.1 + torch.tensor([-5.0, 0.0]),
        ]
    )
    c = kmeans(x, 2, seed=3)
    c = c[c[:, 0].argsort()]
    assert torch.allclose(c[0], x[30:].mean(0), atol=1e-5) and torch.allclose(c[1], x[:30].mean(0), atol=1e-5)
    assert kmeans(x[:1], 3).shape == (3, 2)  # fewer points than clusters: repeated


def test_imprinting_sets_new_proxies_to_scaled_cluster_centres():
    torch.manual_seed(0)
    net = AVCILNet(tiny_cfg(), classifier=lambda d: LSCClassifier(d, 2))
    net.grow(1)
    net.grow(3)  # class 0 old (frozen), classes 1, 2 new
    feats = F.normalize(torch.randn(12, 4), dim=1)
    labels = torch.tensor([1] * 6 + [2] * 6)
    fake = SimpleNamespace(
        model=net,
        num_old=1,
        num_seen=3,
        cfg={"seed": 0},
        experience=SimpleNamespace(dataset=None),
        features=lambda ds: (feats, labels),
    )
    AFC.imprint(fake)
    norm = net.classifier.old_weight.norm(dim=1).mean()
    expected = torch.cat([kmeans(feats[labels == c], 2, seed=c) * norm for c in (1, 2)])
    assert torch.allclose(net.classifier.new_weight, expected, atol=1e-6)


# ----------------------------------------------------------------------------- end to end


def test_afc_both_variants_end_to_end(tmp_path, total_memory_benchmark):
    bench = total_memory_benchmark
    common = [
        "--benchmark",
        str(bench),
        "--results-dir",
        str(tmp_path),
        "--set",
        "train.epochs=6",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.lr=0.01",
        "--set",
        "model.dim=32",
        "--quiet",
    ]
    res = {}
    for name, extra in [
        ("ft", ["--strategy", "finetune"]),
        ("nme", ["--strategy", "afc", "--set", "strategy.classifier=nme"]),
        ("lsc", ["--strategy", "afc", "--set", "strategy.classifier=lsc"]),
        ("rel", ["--strategy", "afc", "--set", "strategy.importance=release"]),
    ]:
        assert main(["run", "--run-id", name] + extra + common) == 0
        res[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    ft = res["ft"]["modalities"]["audio-visual"]
    for name in ("nme", "lsc", "rel"):
        m = res[name]
        assert m["run"]["buffer_size"] == 48
        a = m["modalities"]["audio-visual"]
        assert a["forgetting"] < ft["forgetting"] - 25, name
        assert a["step_acc"][-1] > ft["step_acc"][-1] + 20, name
