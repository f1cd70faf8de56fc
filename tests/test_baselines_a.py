"""EWC, LwF, iCaRL, IL2M and BiC: each mechanism against hand-computed values, then a smoke run
of every strategy in every modality (features) and on raw clips.

The mechanism tests build a strategy directly on the tiny generated feature benchmark (8 classes,
4 tasks, 12 training clips per class, memory 3 per class) with a very small fusion model, and
train it on one or two experiences of one epoch.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avcl_bench.errors import ConfigError
from avcl_bench.strategies.bic import BiasLayers, BiasStage, bic_distillation, fit_bias_layer
from avcl_bench.strategies.icarl import icarl_loss, nme_scores
from avcl_bench.strategies.il2m import class_statistics, il2m_rectify
from avcl_bench.strategies.lwf import lwf_loss
from avcl_bench.strategies.memory import herding_select

#: a tiny model and one short epoch for the mechanism tests and smoke runs on features
SMALL = {"model.dim": 16, "model.fusion_depth": 1, "model.heads": 2, "train.epochs": 1, "train.batch_size": 16}
SMALL_ARGS = [a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")]


# ---- helpers -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def feature_setup(feature_benchmark, build_strategy):
    """(make(strategy, **overrides) -> strategy, scenario) on the tiny feature benchmark."""
    from avcl_bench.config import parse_set
    from avcl_bench.data.datasets import load_data
    from avcl_bench.data.streams import make_streams
    from avcl_bench.runner import build_config, quiet_third_party_warnings

    quiet_third_party_warnings()
    bench = str(feature_benchmark)
    cfg0, manifest = build_config("finetune", bench, {})
    manifest.materialize(cfg0)
    data = load_data(manifest, cfg0)
    scenario = make_streams(data, cfg0["num_tasks"], manifest.name)

    def make(strategy, **overrides):
        sets = {**SMALL, **overrides}
        return build_strategy(strategy, parse_set([f"{k}={v}" for k, v in sets.items()]), seed=0)

    return make, scenario


def train_steps(strategy, scenario, n):
    for exp in list(scenario.train_stream)[:n]:
        strategy.train(exp, eval_streams=[])
    return strategy


def first_batch(scenario, t=0, n=8):
    ds = list(scenario.train_stream)[t].dataset.eval()
    items = [ds[i] for i in range(n)]
    audio = torch.stack([it[0][0] for it in items])
    visual = torch.stack([it[0][1] for it in items])
    return [audio, visual], torch.tensor([it[1] for it in items])


# ---- EWC -----------------------------------------------------------------------------------------
def test_ewc_penalty_zero_at_anchor_grows_with_fisher_weighted_distance(feature_setup):
    make, scenario = feature_setup
    s = train_steps(make("ewc", **{"strategy.lambda": 10.0, "strategy.old_heads": "penalised"}), scenario, 1)
    assert len(s.penalties) == 1
    assert s.ewc_penalty().item() == pytest.approx(0.0, abs=1e-12)
    fisher, anchor = s.penalties[0]
    w = s.model.classifier.weight
    f = fisher["classifier.weight"]
    i, j = divmod(int(f.argmax()), f.shape[1])
    assert f[i, j] > 0
    with torch.no_grad():
        w[i, j] += 0.5
    expected = 0.5 * 10.0 * float(f[i, j]) * 0.5**2  # lambda/2 * F_i * delta^2
    assert s.ewc_penalty().item() == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        w[i, j] += 0.5  # twice the distance: four times the penalty
    assert s.ewc_penalty().item() == pytest.approx(4 * expected, rel=1e-5)
    # a grown classifier: the new rows are not penalised
    s.model.grow(s.model.classifier.num_classes + 2)
    with torch.no_grad():
        s.model.classifier.weight[-1] += 3.0
    assert s.ewc_penalty().item() == pytest.approx(4 * expected, rel=1e-5)
    # the penalty enters the training loss
    x, y = first_batch(scenario)
    s.mb_output, s.mbatch = s.model(x), [x, y, torch.zeros_like(y)]
    ce = F.cross_entropy(s.mb_output[:, : s.num_seen], y)
    assert s.criterion().item() == pytest.approx(ce.item() + 4 * expected, rel=1e-5)


def _bias_gradients(s, ds, target: str):
    """Per-clip d log p(target|x) / d b = onehot(target) - p (the classifier bias), in loader order."""
    s.model.eval()
    logits, ys = [], []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(ds.eval(), batch_size=64):
            logits.append(s.model(batch[0])[:, : s.num_seen])
            ys.append(batch[1])
    p = torch.cat(logits).softmax(1)
    t = torch.cat(ys) if target == "label" else p.argmax(1)
    return F.one_hot(t, s.num_seen).float() - p


def test_ewc_fisher_of_classifier_bias_hand_computed(feature_setup):
    """Per-sample form: d log softmax(z)_y / d b_k = 1[k=y] - p_k, so the empirical Fisher of the
    classifier bias is the mean over clips of (onehot(y) - p)^2."""
    make, scenario = feature_setup
    overrides = {"strategy.fisher_target": "label", "strategy.fisher_form": "sample", "strategy.old_heads": "penalised"}
    s = train_steps(make("ewc", **overrides), scenario, 1)
    ds = list(scenario.train_stream)[0].dataset
    fisher = s.compute_fisher(ds)
    expected = _bias_gradients(s, ds, "label").pow(2).mean(0)
    assert torch.allclose(fisher["classifier.bias"], expected, rtol=1e-4, atol=1e-7)
    assert fisher["classifier.bias"].sum() > 0


def test_ewc_batch_fisher_is_facils_batch_mean_form(feature_setup):
    """FACIL ewc.py l.88-97: per batch the squared gradient of the batch-MEAN loss times the batch
    size, divided by the number of clips: sum_b B_b * (mean_{i in b} g_i)^2 / N. With batches of 5
    over the first experience's clips (the last batch partial, weighted by its size)."""
    make, scenario = feature_setup
    s = train_steps(make("ewc", **{"strategy.old_heads": "penalised", "strategy.fisher_batch_size": 5}), scenario, 1)
    ds = list(scenario.train_stream)[0].dataset
    g = _bias_gradients(s, ds, "max_pred")  # FACIL's default target: the arg-max prediction
    n = g.shape[0]
    assert n % 5 != 0  # the partial last batch is exercised
    expected = sum(len(b) * b.mean(0).pow(2) for b in g.split(5)) / n
    fisher = s.compute_fisher(ds)
    assert torch.allclose(fisher["classifier.bias"], expected, rtol=1e-4, atol=1e-7)
    s.scfg["fisher_form"] = "sample"
    # the batch-mean gradient averages before squaring: never more than the per-sample Fisher
    assert (fisher["classifier.bias"] <= s.compute_fisher(ds)["classifier.bias"] + 1e-7).all()


def test_ewc_frozen_heads_leave_the_classifier_out(feature_setup):
    """FACIL without exemplars: the classifier is outside the Fisher, and the cross-entropy runs
    over the current experience's classes only, so the old classes' rows get no gradient."""
    make, scenario = feature_setup
    s = train_steps(make("ewc"), scenario, 2)
    fisher, anchor = s.penalties[0]
    assert fisher and not any(n.startswith("classifier.") for n in fisher)
    assert s.num_old == 2 and s.num_seen == 4
    x, y = first_batch(scenario, t=1)
    s.model.zero_grad()
    s.mb_output, s.mbatch = s.model(x), [x, y, torch.zeros_like(y)]
    logits = s.mb_output[:, :4].detach()
    # hand value: -log softmax over classes 2..3 of the target, averaged
    ce = torch.stack([torch.logsumexp(row[2:4], 0) - row[int(t)] for row, t in zip(logits, y)]).mean()
    loss = s.criterion()
    assert loss.item() == pytest.approx(ce.item() + s.ewc_penalty().item(), rel=1e-5)
    loss.backward()
    grad = s.model.classifier.weight.grad
    assert torch.count_nonzero(grad[:2]) == 0 and torch.count_nonzero(grad[2:4]) > 0


def test_ewc_separate_keeps_one_penalty_per_task_online_merges(feature_setup):
    make, _ = feature_setup
    f1 = {"classifier.bias": torch.tensor([1.0, 2.0])}
    f2 = {"classifier.bias": torch.tensor([3.0, 4.0, 5.0, 6.0])}
    for mode in ("separate", "online", "merged"):
        s = make("ewc", **{"strategy.mode": mode, "strategy.gamma": 0.5, "strategy.alpha": 0.5})
        s.model.grow(2)
        s.consolidate(f1)
        s.model.grow(4)
        s.consolidate(f2)
        if mode == "separate":
            assert [p[0]["classifier.bias"].tolist() for p in s.penalties] == [[1.0, 2.0], [3.0, 4.0, 5.0, 6.0]]
        elif mode == "online":
            assert len(s.penalties) == 1
            assert s.penalties[0][0]["classifier.bias"].tolist() == [3.5, 5.0, 5.0, 6.0]  # 0.5 * F1 + F2
        else:  # FACIL: F = 0.5 * (0.5 * F1) + 0.5 * F2 (the first merge is with F = 0)
            assert len(s.penalties) == 1
            assert s.penalties[0][0]["classifier.bias"].tolist() == [1.75, 2.5, 2.5, 3.0]
        with torch.no_grad():
            s.model.classifier.bias[1] += 2.0
        lam = s.ewc_lambda
        f_bias1 = {"separate": 2.0 + 4.0, "online": 5.0, "merged": 2.5}[mode]
        expected = 0.5 * lam * f_bias1 * 4.0
        assert s.ewc_penalty().item() == pytest.approx(expected, rel=1e-5)


# ---- LwF -----------------------------------------------------------------------------------------
def test_lwf_loss_hand_computed():
    # 2 old classes (one old task), 2 new; one new clip of class 3
    logits = torch.tensor([[1.0, 0.0, 0.0, 2.0]])
    old = torch.tensor([[math.log(3.0), 0.0]])
    y = torch.tensor([3])
    ce_new = -math.log(math.exp(2) / (math.exp(0) + math.exp(2)))  # softmax over the new logits only
    p = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]  # softmax(old / 2)
    q = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]  # softmax(new[:2] / 2)
    kd = 4 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))  # KL * T^2
    got = lwf_loss(logits, old, y, num_old=2, num_seen=4, classes_per_task=2, T=2.0)
    assert got.item() == pytest.approx(ce_new + kd, rel=1e-5)
    # lambda_o weights the distillation; ce=all takes every seen logit
    got = lwf_loss(logits, old, y, 2, 4, 2, T=2.0, lambda_old=0.5, ce="all")
    ce_all = -math.log(math.exp(2) / (math.exp(1) + 1 + 1 + math.exp(2)))
    assert got.item() == pytest.approx(ce_all + 0.5 * kd, rel=1e-5)
    # first task: plain cross-entropy
    assert lwf_loss(logits[:, :2], None, torch.tensor([0]), 0, 2, 2).item() == pytest.approx(
        -math.log(math.e / (math.e + 1)), rel=1e-5
    )


def test_lwf_distils_previous_model_without_exemplars(feature_setup):
    make, scenario = feature_setup
    s = train_steps(make("lwf"), scenario, 2)
    exp1 = list(scenario.train_stream)[1]
    assert s.previous.model is not None and s.previous.model.classifier.num_classes == 2
    assert not any(p.requires_grad for p in s.previous.model.parameters())
    assert not hasattr(s, "memory")
    # the criterion is lwf_loss with the frozen previous model's logits
    x, y = first_batch(scenario, t=1)
    s.mb_output, s.mbatch = s.model(x), [x, y, torch.zeros_like(y)]
    expected = lwf_loss(s.mb_output, s.previous.model(x), y, 2, 4, 2, T=2.0)
    assert s.criterion().item() == pytest.approx(expected.item(), rel=1e-5)
    s.experience = exp1
    s.train_dataset_adaptation()
    assert len(s.adapted_dataset) == len(exp1.dataset) == 24  # the new experience only, no exemplars


# ---- iCaRL ---------------------------------------------------------------------------------------
def test_icarl_bce_loss_hand_computed():
    logits = torch.tensor([[0.5, -1.0, 2.0]])
    old = torch.tensor([[1.0, 0.0]])
    y = torch.tensor([2])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    targets = [sig(1.0), sig(0.0), 1.0]  # old classes: old model's sigmoid outputs; new class: one-hot
    bce = [-(t * math.log(sig(z)) + (1 - t) * math.log(1 - sig(z))) for t, z in zip(targets, logits[0].tolist())]
    assert icarl_loss(logits, y, old, 2, 3, "bce").item() == pytest.approx(sum(bce) / 3, rel=1e-5)
    ce = -math.log(math.exp(2) / (math.exp(0.5) + math.exp(-1) + math.exp(2)))
    assert icarl_loss(logits, y, old, 2, 3, "ce_bce").item() == pytest.approx(ce + sum(bce[:2]) / 2, rel=1e-5)
    # the AV-CIL release's l.60: BCE-with-logits of sigmoid(z), i.e. sigmoid(sigmoid(z)) against sigmoid(old)
    twice = [-(t * math.log(sig(sig(z))) + (1 - t) * math.log(1 - sig(sig(z)))) for t, z in zip(targets[:2], [0.5, -1.0])]
    got = icarl_loss(logits, y, old, 2, 3, "ce_bce", "twice").item()
    assert got == pytest.approx(ce + sum(twice) / 2, rel=1e-5)
    assert got != pytest.approx(ce + sum(bce[:2]) / 2, rel=1e-3)


def test_nme_predicts_nearest_class_mean():
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    feats = torch.tensor([[2.0, 1.0], [0.1, 3.0], [-5.0, 4.0]])
    scores = nme_scores(feats, means)
    assert scores.argmax(1).tolist() == [0, 1, 2]
    u = torch.tensor([2.0, 1.0]) / math.sqrt(5)
    assert scores[0, 1].item() == pytest.approx(-((u - means[1]) ** 2).sum().item(), rel=1e-5)


def test_icarl_herding_buffer_and_nme(feature_setup):
    make, scenario = feature_setup
    s = train_steps(make("icarl"), scenario, 1)
    exp0 = list(scenario.train_stream)[0]
    assert sorted(s.memory.store) == [0, 1]
    for c in (0, 1):
        ds, rows = s.memory.store[c]
        assert len(rows) == 3  # exactly m = memory.per_class
        class_rows = [i for i, t in enumerate(exp0.dataset.targets) if t == c]
        feats = s.extract_features(exp0.dataset.subset(class_rows))
        assert rows == [class_rows[i] for i in herding_select(feats, 3)]
        normed = F.normalize(feats, dim=1)
        nearest = int(((normed - normed.mean(0)) ** 2).sum(1).argmin())
        assert rows[0] == class_rows[nearest]  # the first pick is nearest to the class mean
    # NME: the class means are the renormalised means of the normalised exemplar features
    x, y = first_batch(scenario, n=12)
    mu = torch.stack(
        [F.normalize(F.normalize(s.extract_features(s.memory.class_dataset(c)), dim=1).mean(0), dim=0) for c in (0, 1)]
    )
    assert torch.allclose(s.class_means.means, mu, atol=1e-6)
    s.model.eval()
    f = F.normalize(s.model.forward_features(x), dim=1)
    expected = torch.cdist(f, mu).argmin(1)
    assert torch.equal(s.predict(x)["audio-visual"].argmax(1), expected)
    # the FC variant predicts with the linear head
    s.scfg["classifier"] = "fc"
    assert torch.equal(s.predict(x)["audio-visual"], s.model(x)[:, :2].float())
    # next experience: 4 classes x 3 exemplars, old ones keep their best-ranked rows
    s.scfg["classifier"] = "nme"
    before = {c: list(s.memory.store[c][1]) for c in (0, 1)}
    train_steps_from(s, scenario, 1)
    assert {c: len(r) for c, (_, r) in s.memory.store.items()} == {0: 3, 1: 3, 2: 3, 3: 3}
    assert all(s.memory.store[c][1] == before[c] for c in (0, 1))
    assert s.class_means.means.shape[0] == 4


def test_icarl_release_variants(feature_setup):
    make, scenario = feature_setup
    # class_mean: plain (the AV-CIL release's l.238): the plain mean of the normalised exemplar features
    s = train_steps(make("icarl", **{"strategy.class_mean": "plain"}), scenario, 1)
    plain = torch.stack([F.normalize(s.extract_features(s.memory.class_dataset(c)), dim=1).mean(0) for c in (0, 1)])
    assert torch.allclose(s.class_means.means, plain, atol=1e-6)
    assert (plain.norm(dim=1) < 1 - 1e-4).all()  # not renormalised
    # distill_sigmoid: twice exists only in the release's CE + BCE loss
    with pytest.raises(ConfigError, match="strategy.distill_sigmoid"):
        make("icarl", **{"strategy.distill_sigmoid": "twice", "strategy.loss": "bce"})
    assert make("icarl", **{"strategy.distill_sigmoid": "twice", "strategy.loss": "ce_bce"}).scfg["distill_sigmoid"] == "twice"


def train_steps_from(strategy, scenario, t):
    strategy.train(list(scenario.train_stream)[t], eval_streams=[])


def test_icarl_total_memory_form_and_merged_training_data(feature_setup):
    make, scenario = feature_setup
    s = make("icarl", **{"memory.per_class": "null", "memory.total": 12})
    train_steps(s, scenario, 1)
    assert {c: len(r) for c, (_, r) in s.memory.store.items()} == {0: 6, 1: 6}  # 12 // 2
    first = list(s.memory.store[0][1])
    train_steps_from(s, scenario, 1)
    assert {c: len(r) for c, (_, r) in s.memory.store.items()} == {0: 3, 1: 3, 2: 3, 3: 3}  # 12 // 4
    assert s.memory.store[0][1] == first[:3]
    assert len(s.memory) == 12
    # experience 1 was trained on its 24 clips + the 12 exemplars of classes 0 and 1
    s.experience = list(scenario.train_stream)[2]
    s.train_dataset_adaptation()
    assert len(s.adapted_dataset) == 24 + 12


# ---- IL2M ----------------------------------------------------------------------------------------
def test_il2m_rectifies_only_old_class_scores_of_new_predictions():
    scores = torch.tensor(
        [
            [1.0, 2.0, 3.0, 0.5],  # top-1 = class 2 (new): old scores rectified
            [4.0, 1.0, 3.0, 0.5],  # top-1 = class 0 (old): unchanged
            [1.0, 1.5, 0.0, 2.5],
        ]
    )  # top-1 = class 3 (new)
    factors = torch.tensor([2.0, 0.5])
    out = il2m_rectify(scores, num_old=2, factors=factors)
    assert out.tolist() == [[2.0, 1.0, 3.0, 0.5], [4.0, 1.0, 3.0, 0.5], [2.0, 0.75, 0.0, 2.5]]
    assert torch.equal(out[:, 2:], scores[:, 2:])  # new-class scores never change
    assert out.argmax(1).tolist() == [2, 0, 3]


def test_il2m_statistics_and_factors_hand_computed(feature_setup):
    scores = torch.tensor([[5.0, 1.0, 0.0], [3.0, 2.0, 1.0], [0.0, 1.0, 4.0], [1.0, 0.0, 2.0]])
    y = torch.tensor([0, 0, 2, 2])
    init, conf, cur = class_statistics(scores, y, num_old=1)
    assert init == {2: 3.0} and cur == {0: 4.0}
    assert conf == pytest.approx(3.0)  # mean of the top-1 scores of the new-class clips (4, 2)
    make, _ = feature_setup
    s = make("il2m")
    s.num_old, s.task_id, s.stats_state = 2, 1, 1
    s.init_mean, s.cur_mean = {0: 6.0, 1: 2.0}, {0: 3.0, 1: 4.0}
    s.class_state, s.confidence = {0: 0, 1: 0}, {0: 4.0, 1: 2.0}
    # init / cur * conf[now] / conf[then]
    assert s.rectification_factors().tolist() == [6 / 3 * 2 / 4, 2 / 4 * 2 / 4]
    s.cur_mean[1] = -1.0  # a non-positive statistic leaves the factor at 1
    assert s.rectification_factors().tolist() == [1.0, 1.0] and s.skipped_factors == 1


def test_il2m_dual_memory_after_two_experiences(feature_setup):
    make, scenario = feature_setup
    s = train_steps(make("il2m"), scenario, 2)
    assert sorted(s.init_mean) == [0, 1, 2, 3]  # every class's statistic from when it was new
    assert s.class_state == {0: 0, 1: 0, 2: 1, 3: 1}
    assert sorted(s.confidence) == [0, 1]
    assert sorted(s.cur_mean) == [0, 1]  # old classes, measured on their exemplars in state 1
    assert {c: len(r) for c, (_, r) in s.memory.store.items()} == {0: 3, 1: 3, 2: 3, 3: 3}
    x, _ = first_batch(scenario, t=1, n=12)
    s.model.eval()
    raw = s.model(x)[:, :4].float()
    out = s.predict(x)["audio-visual"]
    assert torch.equal(out[:, 2:], raw[:, 2:])
    new_top = raw.argmax(1) >= 2
    assert torch.allclose(out[new_top, :2], raw[new_top, :2] * s.rectification_factors())
    assert torch.equal(out[~new_top], raw[~new_top])


# ---- BiC -----------------------------------------------------------------------------------------
def test_bic_layer_touches_only_new_class_logits():
    layers = BiasLayers()
    layers.add(0, 2)
    layers.add(2, 4)
    with torch.no_grad():
        layers.alpha[1].fill_(2.0)
        layers.beta[1].fill_(-1.0)
    z = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert layers(z).tolist() == [[1.0, 2.0, 5.0, 7.0]]
    assert layers(z[:, :2]).tolist() == [[1.0, 2.0]]  # an old model's logits: nothing to correct


def test_bic_stage2_removes_bias_towards_new_classes():
    torch.manual_seed(0)
    n, C = 64, 4
    y = torch.arange(n) % C
    logits = torch.randn(n, C) * 0.3 + 2.0 * F.one_hot(y, C)
    logits[:, 2:] += 3.0  # new classes (2, 3) dominate
    layers = BiasLayers()
    layers.add(0, 2)
    layers.add(2, 4)
    before = (layers(logits).argmax(1) == y).float().mean().item()
    losses = fit_bias_layer(layers, 1, logits, y, BiasStage(epochs=100, lr=0.1, batch_size=32))
    after_logits = layers(logits).detach()
    after = (after_logits.argmax(1) == y).float().mean().item()
    assert before < 0.6 and after > 0.9
    assert losses[-1] < losses[0]
    assert layers.beta[1].item() < 0
    assert torch.equal(after_logits[:, :2], logits[:, :2])  # old-class logits untouched
    assert layers.alpha[0].item() == 1.0 and layers.beta[0].item() == 0.0  # other layers frozen


def test_bic_distillation_hand_computed():
    new = torch.tensor([[0.0, 2.0]])
    old = torch.tensor([[2.0, 0.0]])
    p = [math.e / (math.e + 1), 1 / (math.e + 1)]  # softmax(old / 2)
    q = [1 / (1 + math.e), math.e / (1 + math.e)]  # softmax(new / 2)
    assert bic_distillation(new, old, 2.0).item() == pytest.approx(-(p[0] * math.log(q[0]) + p[1] * math.log(q[1])))


def test_bic_validation_split_and_two_stages(feature_setup):
    make, scenario = feature_setup
    s = train_steps(make("bic"), scenario, 1)
    # budget 3 per class = 2 training exemplars + ceil(0.1 * 3) = 1 validation exemplar
    assert {c: len(r) for c, (_, r) in s.memory.store.items()} == {0: 2, 1: 2}
    assert {c: len(r) for c, (_, r) in s.val_store.items()} == {0: 1, 1: 1}
    assert len(s.memory) == 6  # training + validation exemplars: the run's buffer size
    val0 = {c: s.val_store[c][1][0] for c in (0, 1)}
    assert all(val0[c] not in s._train_rows for c in (0, 1))  # held out of stage-1 training
    for c in (0, 1):  # training exemplars come from the clips trained on (rows of the experience)
        assert set(s.memory.store[c][1]) <= set(s._train_rows)
    train_steps_from(s, scenario, 1)
    exp1 = list(scenario.train_stream)[1]
    assert len(s._train_rows) == 24 - 2  # one held-out clip per new class
    # stage 1 of experience 1 trained on its 22 clips + the 4 training exemplars
    assert s.stage2_losses and len(s.stage2_losses[0]) == 200
    assert (s.bias.alpha[1].item(), s.bias.beta[1].item()) != (1.0, 0.0)
    assert (s.bias.alpha[0].item(), s.bias.beta[0].item()) == (1.0, 0.0)
    s.experience = exp1
    val = s.validation_dataset()
    assert sorted(val.targets) == [0, 1, 2, 3]  # balanced: one per class, old from memory, new held out
    # stage-1 loss: lambda = n / (n + m) = 2 / 4, distillation on the bias-corrected old outputs
    x, y = first_batch(scenario, t=1)
    assert (s.task_id, s.num_old, s.num_seen) == (1, 2, 4)
    s.mbatch = [x, y, torch.zeros_like(y)]
    s.mb_output = s.forward()
    old = s.bias(s.previous.model(x)[:, :2].float())
    expected = 0.5 * bic_distillation(s.mb_output[:, :2], old, 2.0) + 0.5 * F.cross_entropy(s.mb_output[:, :4], y)
    assert s.criterion().item() == pytest.approx(expected.item(), rel=1e-5)
    # prediction applies the trained layer to the new classes' logits only
    s.model.eval()
    raw = s.model(x)[:, :4].float()
    pred = s.predict(x)["audio-visual"]
    assert torch.equal(pred[:, :2], raw[:, :2])
    assert torch.allclose(pred[:, 2:], s.bias.alpha[1] * raw[:, 2:] + s.bias.beta[1])


# ---- parts: previous model, exemplar memory, class means ----------------------------------------
def test_parts_save_and_restore_themselves(feature_setup):
    """iCaRL lists no attribute for checkpoints: its memory (rows and random stream), class means
    and previous model come back from the parts' own state."""
    import io

    make, scenario = feature_setup
    train = list(scenario.train_stream)
    s = train_steps(make("icarl", **{"strategy.selection": "random"}), scenario, 1)
    assert type(s).checkpoint_attrs == () and set(s.parts) == {"memory", "class_means", "previous"}
    buf = io.BytesIO()
    torch.save(s.checkpoint_state(), buf)
    buf.seek(0)
    r = make("icarl", **{"strategy.selection": "random"})
    r.load_checkpoint_state(torch.load(buf, weights_only=True), train)
    assert {c: rows for c, (_, rows) in r.memory.store.items()} == {c: rows for c, (_, rows) in s.memory.store.items()}
    assert all(r.memory.store[c][0] is train[0].dataset for c in r.memory.store)
    assert r.memory.rng.randint(10**6) == s.memory.rng.randint(10**6)  # the same random stream goes on
    assert torch.equal(r.class_means.means, s.class_means.means)
    # the previous model is copied when the next experience starts, from the restored model
    r.train(train[1], eval_streams=[])
    for k, v in r.previous.model.state_dict().items():
        assert torch.equal(v, s.model.state_dict()[k]), k


def test_previous_model_is_the_model_that_ended_the_previous_experience(feature_setup):
    make, scenario = feature_setup
    s = train_steps(make("ssil"), scenario, 1)
    assert s.previous.model is None  # nothing to distil from during the first experience
    ended = {k: v.clone() for k, v in s.model.state_dict().items()}
    train_steps_from(s, scenario, 1)
    assert ended.keys() == s.previous.model.state_dict().keys()
    assert all(torch.equal(v, ended[k]) for k, v in s.previous.model.state_dict().items())
    assert not any(p.requires_grad for p in s.previous.model.parameters()) and not s.previous.model.training


def test_paired_replay_draws_exemplars_as_a_separate_batch(feature_setup):
    from avcl_bench.data.loading import PairedReplayLoader
    from avcl_bench.runner import _buffer_size

    make, scenario = feature_setup
    s = train_steps(make("ssil", **{"strategy.replay_batch_size": 5, "train.batch_size": 8}), scenario, 1)
    assert _buffer_size(s) == len(s.memory) == 6  # 2 classes x memory.per_class 3
    s.experience = list(scenario.train_stream)[1]
    s.train_dataset_adaptation()
    assert len(s.adapted_dataset) == 24  # the new data only: exemplars are not merged into it
    s.make_train_dataloader()
    assert isinstance(s.dataloader, PairedReplayLoader) and len(s.dataloader) == 3
    y = next(iter(s.dataloader))[1]
    assert len(y) == 8 + 5 and set(y[:8].tolist()) <= {2, 3} and set(y[8:].tolist()) <= {0, 1}
    assert _buffer_size(make("lwf")) == 0  # no memory part


def test_checkpoint_without_parts_is_refused_in_one_line(feature_setup):

    make, scenario = feature_setup
    s = make("lwf")
    old_format = {k: v for k, v in s.checkpoint_state().items() if k != "parts"}
    with pytest.raises(ConfigError, match="predates strategy parts"):
        s.load_checkpoint_state(old_format, list(scenario.train_stream))


def test_declared_choices_are_checked_when_the_strategy_is_built(feature_setup):

    make, _ = feature_setup
    with pytest.raises(ConfigError, match=r"strategy\.kd .cosine. \(known: taskwise, global\)"):
        make("lwf", **{"strategy.kd": "cosine"})


# ---- smoke runs ----------------------------------------------------------------------------------
STRATEGIES = ["ewc", "lwf", "icarl", "il2m", "bic"]


@pytest.mark.parametrize("modality", ["audio", "visual", "audio-visual"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_smoke_features_every_modality(run_tiny, strategy, modality):
    m = run_tiny(strategy, modality, "features", SMALL_ARGS)
    assert set(m["modalities"]) == {modality}
    assert m["run"]["input"] == "features"
    res = m["modalities"][modality]
    assert 0.0 <= res["avg_acc"] <= 100.0
    # replay methods keep the protocol's memory (3 per class x 8 classes), the others none
    assert m["run"]["buffer_size"] == (24 if strategy in ("icarl", "il2m", "bic") else 0)


#: smaller encoders than the synth-av CPU configuration, for the raw-clip smoke runs
CLIP_ARGS = ["--set", "model.encoder_width=8", "--set", "model.dim=32", "--set", "model.heads=2"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_smoke_raw_clips(run_tiny, strategy):
    m = run_tiny(strategy, "audio-visual", "clips", CLIP_ARGS)
    assert m["run"]["input"] == "clips" and set(m["modalities"]) == {"audio-visual"}
    # tiny synth-av: 8 classes, memory 10 per class (4 of its 10 training clips per class remain new-only)
    assert m["run"]["buffer_size"] == (80 if strategy in ("icarl", "il2m", "bic") else 0)


@pytest.mark.parametrize("strategy", ["icarl", "il2m", "bic"])
def test_smoke_total_memory_form(run_tiny, strategy):
    extra = SMALL_ARGS + ["--set", "memory.per_class=null", "--set", "memory.total=20"]
    m = run_tiny(strategy, "audio", "features", extra)
    assert m["run"]["buffer_size"] == 16  # 20 // 8 = 2 per class after the last task


# ---- the previous model's outputs, computed once per experience ----------------------------------
@pytest.mark.parametrize("name", ["av-cil", "lwf", "ssil", "icarl", "cign"])
def test_cached_previous_outputs_equal_the_per_batch_forward(feature_setup, name):
    """Every training batch of the second experience reads from the cache what one forward of the
    frozen model on that batch gives (AV-CIL's attention maps for the batch's exemplars only, the
    only items its exemplar term reads; CIGN's per-branch logits with old_class_distillation)."""
    make, scenario = feature_setup
    extra = {"strategy.old_class_distillation": "kd"} if name == "cign" else {}
    s = make(name, **{"train.epochs": 2, "memory.per_class": "null", "memory.total": 12, **extra})
    cached = s.previous.outputs
    seen = []

    def checked(strategy):
        got = cached(strategy)
        with torch.no_grad():
            want = strategy.previous.outputs_fn(strategy.previous.model, strategy.mb_x)
        exemplar = strategy.mb_y < strategy.num_old
        from_cache = strategy.cfg["train"]["cache_previous_outputs"]
        if from_cache:  # every item of the batch is in the cache
            assert strategy.previous._cache.lookup(strategy.mb_keys, exemplar) is not None
        for key, value in want.items():
            if key in strategy.previous.exemplar_only:  # the batch's exemplars only, in batch order
                value = value[exemplar]
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
        seen.append((int(exemplar.sum()), int((~exemplar).sum()), sorted(got)))
        return got

    s.previous.outputs = checked
    train_steps(s, scenario, 2)
    assert s.previous._cache is not None and s.previous._cache.available
    assert seen and all(new > 0 for _, new, _ in seen)
    if name != "lwf":  # the exemplars are read from the cache too
        assert sum(old for old, _, _ in seen) > 0
    keys = {"av-cil": ["alpha", "beta", "logits"], "cign": ["audio", "visual"]}
    assert seen[0][2] == keys.get(name, ["logits"])
    # without the cache, the same outputs come from one forward per batch
    s.cfg["train"]["cache_previous_outputs"] = False
    s.previous._cache, n = None, len(seen)
    train_steps_from(s, scenario, 1)
    assert s.previous._cache is None and len(seen) > n


def test_previous_output_cache_lookup_by_key():
    """Hand-built cache: two data items and two exemplars; a batch gets its rows in batch order,
    the exemplar-only output for its exemplars only; an unknown key or an "exemplar" outside the
    memory gives None (the strategy then runs the previous model on the batch)."""
    from avcl_bench.strategies.base import PreviousOutputCache

    cache = PreviousOutputCache(exemplar_only=("maps",))
    cache.add(torch.tensor([30, 10]), {"logits": torch.tensor([[3.0], [1.0]]), "maps": torch.zeros(2, 2)}, False)
    cache.add(
        torch.tensor([20, 40]), {"logits": torch.tensor([[2.0], [4.0]]), "maps": torch.tensor([[2.0, 2], [4, 4]])}, True
    )
    cache.finish()
    found = cache.lookup(torch.tensor([40, 10, 20]), torch.tensor([True, False, True]))
    assert found["logits"].flatten().tolist() == [4.0, 1.0, 2.0]
    assert found["maps"].tolist() == [[4.0, 4.0], [2.0, 2.0]]  # items 40 and 20, in batch order
    assert cache.lookup(torch.tensor([10, 99]), torch.tensor([False, False])) is None  # unknown key
    assert cache.lookup(torch.tensor([10]), torch.tensor([True])) is None  # not in the memory
