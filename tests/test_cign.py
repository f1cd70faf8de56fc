"""CIGN (Mo, Pian, Tian, ICCV 2023): network shapes, every loss term against hand-computed values,
gradient flow, the ablation switches, and end-to-end runs on both input forms and all modalities."""

import copy
import math

import pytest
import torch

from avcl_bench.models.cign import CIGNNet
from avcl_bench.strategies.losses import bce_heads, cign_loss_terms, continual_grouping_loss, token_ce, token_kl

# Small sizes for the unit tests (the model shapes, not its quality, are under test here).
SMALL = {"model": {"dim": 16, "heads": 2, "encoder_width": 4}, "strategy": {"depth": 1}}


@pytest.fixture
def cfg(feature_benchmark):
    from avcl_bench.runner import build_config

    c, _ = build_config("cign", str(feature_benchmark), copy.deepcopy(SMALL))
    return c


def _features_batch(cfg, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = cfg["features"]
    return [torch.randn(n, f["audio_dim"], generator=g), torch.randn(n, *f["visual_shape"], generator=g)]


def _frozen(model):
    old = copy.deepcopy(model).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("num_tasks,C", [(1, 8), (2, 8), (4, 8), (10, 20)])
def test_forward_shapes_and_losses_over_tasks(cfg, num_tasks, C):
    torch.manual_seed(0)
    D = cfg["model"]["dim"]
    T, P, _ = cfg["features"]["visual_shape"]
    k = C // num_tasks
    model, prev = CIGNNet(cfg), None
    x = _features_batch(cfg, n=2 * k + 2)
    for t in range(num_tasks):
        num_old, num_seen = t * k, (t + 1) * k
        kept = model.class_tokens.weight.detach().clone()
        model.grow(num_seen)
        assert model.class_tokens.weight.shape == (num_seen, D)
        assert torch.equal(model.class_tokens.weight[:num_old].detach(), kept)  # old tokens kept
        assert model.token_fc.weight.shape == (num_seen, D)
        out = model(x)
        B = x[0].shape[0]
        for b in ("audio", "visual"):
            assert out[b].shape == (B, num_seen)
            assert out["g_" + b].shape == (B, num_seen, D)
        # the transformer sees L + K tokens per modality: 1 audio token, T * P visual tokens
        f_hat, c_hat = model.transformers["visual"](model.modality_tokens(x)["visual"], model.class_tokens())
        assert f_hat.shape == (B, T * P, D) and c_hat.shape == (B, num_seen, D)
        y = torch.arange(B) % num_seen  # old and new classes in the batch
        terms = cign_loss_terms(model, prev, x, y, out, num_old, num_seen, cfg["strategy"])
        expected = {"bce_audio", "bce_visual", "token_ce"}
        if t > 0:
            expected |= {"token_kl", "cg_audio", "cg_visual"}
        assert set(terms) == expected
        loss = sum(terms.values())
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        model.zero_grad()
        prev = _frozen(model)


def test_clip_input_shapes(feature_benchmark):
    """Raw-clip encoders: one max-pooled audio token, T * h * w visual tokens."""
    from avcl_bench.runner import build_config

    cfg, _ = build_config("cign", "synth-av", copy.deepcopy(SMALL))
    assert cfg["input"] == "clips"
    torch.manual_seed(0)
    model = CIGNNet(cfg)
    model.grow(3)
    spec = torch.randn(2, 1, 64, 64)
    frames = torch.randint(0, 255, (2, 2, 3, 64, 64), dtype=torch.uint8)
    tokens = model.modality_tokens([spec, frames])
    assert tokens["audio"].shape == (2, 1, 16) and tokens["visual"].shape == (2, 2 * 2 * 2, 16)
    out = model([spec, frames])
    assert out["audio"].shape == (2, 3) and out["g_visual"].shape == (2, 3, 16)


def test_single_modality_model_has_one_branch(cfg):
    model = CIGNNet(cfg, modality="audio")
    model.grow(2)
    out = model([torch.randn(3, cfg["features"]["audio_dim"]), None])  # vision never encoded
    assert model.branches == ("audio",) and set(out) == {"audio", "g_audio"}


def test_audio_grouping_with_one_token_is_value_projection(cfg):
    """CIGN Eq. 7 with L = 1: the weights cancel, g_a,i = c^_a,i + W_o W_v f^_a."""
    torch.manual_seed(0)
    grp = CIGNNet(cfg).grouping["audio"]
    f, c = torch.randn(2, 1, 16), torch.randn(2, 5, 16)
    expected = c + grp.o(grp.v(f))
    assert torch.allclose(grp(f, c), expected, atol=1e-5)


def test_grouping_matches_eq6_eq7_by_hand(cfg):
    torch.manual_seed(0)
    grp = CIGNNet(cfg).grouping["visual"]
    f, c = torch.randn(1, 3, 16), torch.randn(1, 2, 16)
    A = torch.softmax(grp.q(f)[0] @ grp.k(c)[0].t() / 4.0, dim=1)  # (P, K), softmax over classes; 1/sqrt(16)
    vf = grp.v(f)[0]
    for i in range(2):
        pooled = (A[:, i : i + 1] * vf).sum(0) / A[:, i].sum()
        assert torch.allclose(grp(f, c)[0, i], c[0, i] + grp.o(pooled), atol=1e-5)


# ------------------------------------------------------------------ loss terms by hand
def test_token_kl_hand_computed():
    cur = torch.tensor([[0.0, math.log(2.0)], [1.0, 1.0]])  # softmax: (1/3, 2/3), (1/2, 1/2)
    prev = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # softmax: (1/2, 1/2), (1/4, 3/4)
    kl1 = (1 / 3) * math.log((1 / 3) / (1 / 2)) + (2 / 3) * math.log((2 / 3) / (1 / 2))
    kl2 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert token_kl(cur, prev).item() == pytest.approx(kl1 + kl2, rel=1e-5)
    # the printed direction KL(c^t || c^{t-1}), not the reverse
    rev = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))
    assert token_kl(prev[:1], cur[:1]).item() == pytest.approx(rev, rel=1e-5)
    assert rev != pytest.approx(kl1, rel=1e-3)
    # temperature divides the tokens before the softmax over the embedding dimension
    assert token_kl(2 * cur, 2 * prev, temperature=2.0).item() == pytest.approx(kl1 + kl2, rel=1e-5)
    assert token_kl(cur[:0], prev[:0]).item() == 0.0


def test_token_ce_hand_computed():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(4.0)]])  # e = (3/4, 1/4), (1/5, 4/5)
    assert token_ce(logits, torch.tensor([0, 1])).item() == pytest.approx(-math.log(0.75) - math.log(0.8), rel=1e-5)


def test_bce_heads_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0), 5.0], [math.log(3.0), 0.0, -5.0]])
    y = torch.tensor([0, 1])
    # sample 1: -log sig(0) - log(1 - sig(ln 3)) = ln 2 + ln 4; sample 2: -log(1 - 3/4) - log sig(0) = ln 4 + ln 2
    # (the third column is not a seen class: num_seen = 2)
    assert bce_heads(logits, y, 2).item() == pytest.approx(math.log(2) + math.log(4), rel=1e-5)


def test_bce_heads_with_previous_model_targets_hand_computed():
    # old_class_distillation: bce -- class 0 is old; its target is sigmoid(previous logit) (iCaRL Alg. 3)
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    old = torch.tensor([[math.log(3.0)], [0.0]])  # targets 3/4 and 1/2 for class 0
    y = torch.tensor([1, 1])
    # sample 1: class 0 p = 1/2, q = 3/4: -(3/4 ln 1/2 + 1/4 ln 1/2) = ln 2; class 1 target 1, p = 3/4: ln 4/3
    # sample 2: class 0 p = 3/4, q = 1/2: -(1/2 ln 3/4 + 1/2 ln 1/4) = ln 4 - 1/2 ln 3; class 1: ln 2
    expected = (math.log(2) + math.log(4 / 3) + math.log(4) - 0.5 * math.log(3) + math.log(2)) / 2
    assert bce_heads(logits, y, 2, old).item() == pytest.approx(expected, rel=1e-5)
    # the one-hot form would use target 0 for class 0 on both samples
    assert bce_heads(logits, y, 2).item() != pytest.approx(expected, rel=1e-3)


def test_continual_grouping_loss_hand_computed():
    anchor = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    positive = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos 1 and 1/sqrt(2)
    negatives = torch.tensor([[0.0, 3.0], [-1.0, 0.0]])  # shared: cos (0, -1) and (1, 0)
    tau = 0.5
    l1 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-2)))
    l2 = -math.log(math.exp(math.sqrt(0.5) / tau) / (math.exp(math.sqrt(0.5) / tau) + math.exp(2) + math.exp(0)))
    assert continual_grouping_loss(anchor, positive, negatives, tau).item() == pytest.approx((l1 + l2) / 2, rel=1e-5)
    # per-anchor negatives (N, M, D) give the same value when they are the same rows
    per_anchor = negatives.unsqueeze(0).expand(2, -1, -1)
    assert continual_grouping_loss(anchor, positive, per_anchor, tau).item() == pytest.approx((l1 + l2) / 2, rel=1e-5)
    # InfoNCE form: the positive is in the denominator (above: the e^2 term), so without negatives the loss is 0
    assert continual_grouping_loss(anchor, positive, negatives[:0], tau).item() == pytest.approx(0.0, abs=1e-6)
    assert continual_grouping_loss(anchor[:0], positive[:0], negatives, tau).item() == 0.0


# ------------------------------------------------------------------ the method's wiring
def _task2_state(cfg, seed=0):
    """A model at task 2 of 4 (8 classes), its frozen task-1 model, and a batch of old + new samples."""
    torch.manual_seed(seed)
    model = CIGNNet(cfg)
    model.grow(2)
    prev = _frozen(model)
    model.grow(4)
    with torch.no_grad():  # the old tokens have moved since task 1
        model.class_tokens.weight[:2] += 0.5 * torch.randn(2, cfg["model"]["dim"])
    x = _features_batch(cfg, n=6, seed=seed)
    y = torch.tensor([0, 1, 2, 3, 2, 0])  # old-class samples (< 2): positions 0, 1, 5
    return model, prev, x, y


def test_continual_grouping_selects_anchor_positive_negatives(cfg):
    model, prev, x, y = _task2_state(cfg)
    for mode in ("batch", "classes"):
        scfg = dict(cfg["strategy"], cg_negatives=mode)
        out = model(x)
        terms = cign_loss_terms(model, prev, x, y, out, 2, 4, scfg)
        old = torch.tensor([0, 1, 5])
        new = torch.tensor([2, 3, 4])
        for b in ("audio", "visual"):
            g_prev = prev([t[old] for t in x])["g_" + b]
            anchor = g_prev[torch.arange(3), y[old]]  # g^{t-1} of the ground-truth old class
            positive = out["g_" + b][old, y[old]]  # g^t of the same class
            if mode == "batch":
                negatives = out["g_" + b][new, y[new]]  # new-class samples at their classes
            else:
                negatives = out["g_" + b][old][:, 2:4]  # the sample's new-class embeddings
            want = continual_grouping_loss(anchor, positive, negatives, cfg["strategy"]["tau"])
            assert terms["cg_" + b].item() == pytest.approx(want.item(), rel=1e-5)


def test_gradients_flow_only_where_the_method_allows(cfg):
    model, prev, x, y = _task2_state(cfg)
    scfg = cfg["strategy"]
    w = model.class_tokens.weight

    terms = cign_loss_terms(model, prev, x, y, model(x), 2, 4, scfg)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in prev.parameters())  # the previous model is frozen
    assert w.grad is not None and bool((w.grad[:2] != 0).any())  # old tokens still learn (KL, BCE)

    # token CE touches only the new tokens; token KL only the old ones
    model.zero_grad()
    token_terms = cign_loss_terms(model, prev, x, y, model(x), 2, 4, scfg)
    token_terms["token_ce"].backward()
    assert torch.count_nonzero(w.grad[:2]) == 0 and torch.count_nonzero(w.grad[2:]) > 0
    model.zero_grad()
    token_terms = cign_loss_terms(model, prev, x, y, model(x), 2, 4, scfg)
    token_terms["token_kl"].backward()
    assert torch.count_nonzero(w.grad[2:]) == 0 and torch.count_nonzero(w.grad[:2]) > 0
    assert all(p.grad is None for p in prev.parameters())

    # Eq. 9: gradient reaches the current model (positive and negatives), never the anchor's model
    model.zero_grad()
    terms = cign_loss_terms(model, prev, x, y, model(x), 2, 4, scfg)
    (terms["cg_audio"] + terms["cg_visual"]).backward()
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.grouping.parameters())
    assert all(p.grad is None for p in prev.parameters())


@pytest.mark.parametrize("switch,removed", [("avctd", {"token_kl", "token_ce"}), ("avcg", {"cg_audio", "cg_visual"})])
def test_ablation_switch_removes_exactly_its_terms(cfg, switch, removed):
    model, prev, x, y = _task2_state(cfg)
    out = model(x)
    full = cign_loss_terms(model, prev, x, y, out, 2, 4, cfg["strategy"])
    off = cign_loss_terms(model, prev, x, y, out, 2, 4, dict(cfg["strategy"], **{switch: False}))
    assert set(full) - set(off) == removed and set(off) <= set(full)
    for k, v in off.items():
        assert v.item() == pytest.approx(full[k].item(), rel=1e-6)
        assert v.item() > 0


@pytest.mark.parametrize("form", ["none", "bce", "kd"])
def test_old_class_distillation_forms(cfg, form):
    """none: the paper's terms; bce: the old classes' BCE targets are the previous model's sigmoid
    outputs; kd: one added LwF term per branch on the old classes' logits, T = kd_T."""
    model, prev, x, y = _task2_state(cfg)
    out = model(x)
    with torch.no_grad():
        prev_out = prev(x)
    prev_logits = {b: prev_out[b] for b in model.branches}
    scfg = dict(cfg["strategy"], old_class_distillation=form, kd_T=2.0)
    paper = cign_loss_terms(model, prev, x, y, out, 2, 4, cfg["strategy"])
    terms = cign_loss_terms(model, prev, x, y, out, 2, 4, scfg, prev_logits)
    for b in model.branches:
        want = bce_heads(out[b], y, 4, prev_out[b][:, :2] if form == "bce" else None)
        assert terms["bce_" + b].item() == pytest.approx(want.item(), rel=1e-6)
        if form == "kd":  # sum_i p_old log(p_old / p_new) over the 2 old classes at T = 2, times T^2
            p_old = torch.softmax(prev_out[b][:, :2].double() / 2, 1)
            p_new = torch.softmax(out[b][:, :2].detach().double() / 2, 1)
            kd = (p_old * (p_old / p_new).log()).sum(1).mean() * 4
            assert kd.item() > 0 and terms["kd_" + b].item() == pytest.approx(kd.item(), rel=1e-3, abs=1e-7)
    assert set(terms) - set(paper) == ({"kd_audio", "kd_visual"} if form == "kd" else set())
    if form != "bce":
        assert terms["bce_audio"].item() == pytest.approx(paper["bce_audio"].item(), rel=1e-6)


def test_cign_is_the_printed_loss_in_every_profile_and_the_old_class_term_a_named_variant(monkeypatch):
    """A profile changes sizes, never the loss: CIGN runs Eq. 10 as printed in the quick and the
    paper profile; the old-class distillation is a named variant that every output names."""
    import copy

    from avcl_bench import config
    from avcl_bench.errors import ConfigError
    from avcl_bench.runner import build_config, describe_method

    for bench in ("synth-av", "vggsound-100"):  # quick (the embedded benchmark's default), paper
        cfg, manifest = build_config("cign", bench, {})
        assert cfg["strategy"]["old_class_distillation"] == "none"
        assert describe_method(cfg, manifest)["method"] == "CIGN"
    cfg, manifest = build_config("cign", "synth-av", {"strategy": {"old_class_distillation": "bce"}})
    named = describe_method(cfg, manifest)
    assert named["method"] == "CIGN + old-class BCE"
    assert named["variant"] == {"old_class_distillation": "bce"} and named["variant_name"] == "+ old-class BCE"
    cfg, manifest = build_config("cign", "synth-av", {"strategy": {"avctd": False, "avcg": False}})
    assert describe_method(cfg, manifest)["method"] == "CIGN w/o AVCTD, w/o AVCG"
    # a profile that sets a variant parameter is refused, naming the key
    doc = copy.deepcopy(config.load_strategy_yaml("cign"))
    doc["profiles"]["quick"]["strategy"]["old_class_distillation"] = "bce"
    monkeypatch.setattr(config, "load_strategy_yaml", lambda name: doc)
    with pytest.raises(ConfigError, match="profiles.quick sets strategy.old_class_distillation, which changes the method"):
        build_config("cign", "synth-av", {})


def test_ten_task_protocol_resolves():
    """The 10-task VGGSound-100 run: --benchmark vggsound-100 --set protocol=cign-10."""
    from avcl_bench.runner import build_config

    c, _ = build_config("cign", "vggsound-100", {"protocol": "cign-10"})
    assert c["num_tasks"] == 10 and c["memory"]["per_class"] == 50  # CIGN Sec. 4.1 buffer
    assert (
        c["model"]["dim"],
        c["strategy"]["depth"],
        c["train"]["epochs"],
        c["train"]["batch_size"],
        c["train"]["lr"],
    ) == (512, 3, 100, 128, 1e-4)  # CIGN Sec. 4.1


def test_ablation_rows_are_set_options(feature_benchmark):
    from avcl_bench.runner import build_config

    for avctd in (True, False):
        for avcg in (True, False):
            c, _ = build_config("cign", str(feature_benchmark), {"strategy": {"avctd": avctd, "avcg": avcg}})
            assert (c["strategy"]["avctd"], c["strategy"]["avcg"]) == (avctd, avcg)


# ------------------------------------------------------------------ strategy: prediction, buffer
def test_predict_three_modalities_with_product_rule(cfg, build_strategy):
    torch.manual_seed(0)
    st = build_strategy("cign", SMALL)
    st.model.grow(4)
    st.num_seen = 4
    st.model.eval()
    x = _features_batch(cfg, n=5)
    with torch.no_grad():
        scores, out = st.predict(x), st.model(x)
    assert st.reported_modalities() == ["audio", "visual", "audio-visual"] == list(scores)
    p_av = torch.sigmoid(out["audio"]) * torch.sigmoid(out["visual"])  # p_av,i = p_a,i * p_v,i
    assert torch.allclose(scores["audio-visual"].exp(), p_av, atol=1e-6)
    assert torch.equal(scores["audio-visual"].argmax(1), p_av.argmax(1))
    assert scores["audio"].shape == (5, 4)


@pytest.mark.parametrize("modality", ["audio", "visual"])
def test_single_modality_strategy_reports_that_modality(cfg, modality, build_strategy):
    st = build_strategy("cign", {**SMALL, "modality": modality})
    st.model.grow(2)
    st.num_seen = 2
    assert st.model.branches == (modality,) and st.reported_modalities() == [modality]
    assert list(st.predict(_features_batch(cfg, n=2))) == [modality]


def test_buffer_form(cfg, build_strategy):
    assert build_strategy("cign", SMALL).memory.per_class == cfg["memory"]["per_class"] == 3  # the protocol's memory
    fallback = build_strategy("cign", {**SMALL, "memory": {"per_class": None, "total": None}}).memory
    assert fallback.per_class == 50  # CIGN Sec. 4.1 where the protocol declares none
    assert build_strategy("cign", {**SMALL, "memory": {"per_class": None, "total": 40}}).memory.total == 40
    assert build_strategy("cign", {**SMALL, "memory": {"per_class": 0, "total": None}}).memory is None


def test_replay_form(cfg, build_strategy):
    assert build_strategy("cign", SMALL).memory.replay == "concat"  # the default: exemplars merged into the data
    paired = build_strategy("cign", {**SMALL, "strategy": {"depth": 1, "replay": "paired"}}).memory
    assert paired.replay == "paired" and paired.batch_size == cfg["train"]["batch_size"]  # null -> train.batch_size
    sized = build_strategy("cign", {**SMALL, "strategy": {"depth": 1, "replay": "paired", "replay_batch_size": 5}})
    assert sized.memory.batch_size == 5


def test_unknown_negatives_form_is_a_config_error(build_strategy):
    from avcl_bench.errors import ConfigError

    with pytest.raises(ConfigError, match="cg_negatives"):
        build_strategy("cign", {**SMALL, "strategy": {**SMALL["strategy"], "cg_negatives": "others"}})


# ------------------------------------------------------------------ end to end
FAST = ["--set", "model.dim=32", "--set", "model.heads=4", "--set", "strategy.depth=1"]


@pytest.mark.slow
def test_end_to_end_clips_reports_three_modalities(run_tiny, tmp_path):
    from avcl_bench.reporting.embeddings import load_npz

    m = run_tiny("cign", "audio-visual", "clips")
    assert set(m["modalities"]) == {"audio", "visual", "audio-visual"}
    assert m["run"]["buffer_size"] == 8 * 10  # tiny synth-av: 10 per class, 10 train clips per class
    # CIGN Fig. 3: the class-aware embedding g of each first-task test clip's true class, per modality
    emb = load_npz(tmp_path / "cign-audio-visual-clips" / "embeddings.npz")
    assert set(emb["embeddings"]) == {"audio", "visual"} and emb["meta"]["source"] == "embed(x, y)"
    n = len(emb["labels"])
    assert n > 0 and set(emb["labels"].tolist()) == {0, 1} and len(emb["class_names"]) == 2
    assert emb["embeddings"]["audio"].shape == (n, 64)  # D of the synth-av CPU config


def test_end_to_end_single_modalities(run_tiny):
    a = run_tiny("cign", "audio", "features", FAST)
    assert set(a["modalities"]) == {"audio"}
    v = run_tiny("cign", "visual", "clips")
    assert set(v["modalities"]) == {"visual"}


@pytest.mark.slow
def test_forgets_less_than_finetuning_on_features(run_tiny):
    # Seeds 0-6 of this setting: CIGN forgetting <= 42 (audio-visual), <= 59 (visual), <= 30 (audio),
    # average accuracy >= 68 (audio-visual); fine-tuning forgetting >= 95, average accuracy <= 25.
    # Same model sizes for both.
    sizes = ["--set", "model.dim=64", "--set", "model.heads=4"]
    extra = ["--set", "train.epochs=8", "--set", "train.lr=0.003"] + sizes
    cign = run_tiny("cign", "audio-visual", "features", extra + ["--set", "strategy.depth=1"])
    ft = run_tiny("finetune", "audio-visual", "features", extra)["modalities"]["audio-visual"]
    assert cign["run"]["buffer_size"] == 8 * 3  # 3 per class (the feature benchmark's protocol)
    assert ft["forgetting"] > 60
    for mod in ("audio", "visual", "audio-visual"):
        assert cign["modalities"][mod]["forgetting"] < ft["forgetting"] - 30
    assert cign["modalities"]["audio-visual"]["avg_acc"] > ft["avg_acc"] + 30
