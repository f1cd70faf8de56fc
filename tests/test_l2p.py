"""L2P: top-N prompt selection by cosine, the surrogate loss, the frozen pretrained backbone."""

import math

import pytest
import torch

from avcl_bench.errors import ConfigError
from avcl_bench.models.prompts import PromptPool, batch_majority

#: the paper-level model (D = 512) is not needed to exercise the feature path
SMALL_FEATURES = ["--set", "model.dim=32", "--set", "model.heads=4"]


def test_prompt_pool_picks_top_n_keys_by_cosine():
    pool = PromptPool(pool_size=4, length=2, dim=2, top_n=2)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[10.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7]]))
        pool.prompts.copy_(torch.arange(16, dtype=torch.float32).view(4, 2, 2))
    query = torch.tensor([[1.0, 0.1], [-1.0, 0.2]])
    tokens, idx, surrogate = pool(query)
    cos = lambda q, k: (q @ k) / (q.norm() * k.norm())  # noqa: E731
    keys = pool.keys.detach()
    # sample 0: cos to keys = (0.995, 0.0995, -0.995, 0.774) -> keys 0 then 3 (key norms do not matter)
    # sample 1: (-0.981, 0.196, 0.981, -0.555) -> keys 2 then 1
    assert idx.tolist() == [[0, 3], [2, 1]]
    assert torch.equal(tokens[0], torch.cat([pool.prompts[0], pool.prompts[3]]).detach())
    assert torch.equal(tokens[1], torch.cat([pool.prompts[2], pool.prompts[1]]).detach())
    assert tokens.shape == (2, 4, 2)  # N * Lp prompt tokens per sample
    hand = (
        (1 - cos(query[0], keys[0]))
        + (1 - cos(query[0], keys[3]))
        + (1 - cos(query[1], keys[2]))
        + (1 - cos(query[1], keys[1]))
    ) / 2
    assert surrogate.item() == pytest.approx(hand.item(), rel=1e-5)
    assert cos(query[0], keys[0]).item() == pytest.approx(1 / math.sqrt(1.01), rel=1e-5)
    # the surrogate loss pulls the selected keys (only) towards the queries
    surrogate.backward()
    assert pool.keys.grad[[0, 1, 2, 3]].abs().sum(1).gt(0).tolist() == [True, True, True, True]
    q2 = torch.tensor([[1.0, 0.1]])
    pool.keys.grad = None
    pool(q2)[2].backward()
    assert pool.keys.grad[1].abs().sum() == 0 and pool.keys.grad[2].abs().sum() == 0
    with pytest.raises(ConfigError):
        PromptPool(pool_size=3, length=1, dim=2, top_n=4)


def test_batch_majority_hand_value():
    # per-sample top-2 ids; counts: id 0 -> 2, id 1 -> 3, id 2 -> 2, id 3 -> 1, id 4 -> 0
    idx = torch.tensor([[0, 1], [1, 2], [1, 3], [2, 0]])
    # the most frequent first (1), then the tie between 0 and 2 goes to the lower id (the release's
    # jax.lax.top_k over jnp.unique's sorted ids)
    assert batch_majority(idx, pool_size=5).tolist() == [[1, 0]] * 4


def test_prompt_pool_batchwise_selects_one_set_for_the_batch():
    pool = PromptPool(pool_size=4, length=2, dim=2, top_n=2, batchwise=True)
    keys = torch.tensor([[10.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7]])
    with torch.no_grad():
        pool.keys.copy_(keys)
    query = torch.tensor([[1.0, 0.1], [-1.0, 0.2], [0.9, 0.5]])
    # per sample: [0, 3], [2, 1], [3, 0] (third: cos = 0.874, 0.486, -0.874, 0.960) -> 0 and 3 twice
    tokens, idx, surrogate = pool(query)
    assert idx.tolist() == [[0, 3]] * 3
    assert all(torch.equal(t, torch.cat([pool.prompts[0], pool.prompts[3]]).detach()) for t in tokens)
    cos = lambda q, k: float((q @ k) / (q.norm() * k.norm()))  # noqa: E731
    hand = sum((1 - cos(q, keys[0])) + (1 - cos(q, keys[3])) for q in query) / 3
    assert surrogate.item() == pytest.approx(hand, rel=1e-5)


@pytest.mark.parametrize("strategy", ["l2p", "dualprompt"])
def test_learning_rate_scaled_by_batch_over_256(build_strategy, strategy):
    over = {"model": {"dim": 16, "heads": 2}, "train": {"batch_size": 32, "lr": 0.01}}
    s = build_strategy(strategy, over, seed=0)
    assert s.learning_rate() == pytest.approx(0.01 * 32 / 256)  # release train_continual.py
    assert all(g["lr"] == pytest.approx(0.00125) for g in s.optimizer.param_groups)
    s = build_strategy(strategy, {**over, "strategy": {"lr_batch_scaling": False}}, seed=0)
    assert all(g["lr"] == pytest.approx(0.01) for g in s.optimizer.param_groups)


@pytest.fixture
def l2p(build_strategy):
    return build_strategy("l2p", {"model": {"dim": 16, "heads": 2}}, seed=0)


def test_l2p_query_is_the_unprompted_cls_and_selected_prompts_are_prepended(l2p):
    model = l2p.model
    model.grow(2)
    model.eval()
    x = [torch.randn(3, 32), torch.randn(3, 2, 4, 16)]
    query = model.query(x)
    assert torch.allclose(query, model.forward_features(x))  # CLS feature without prompts
    logits, surrogate = l2p.forward_with_aux(x)
    idx, _ = model.prompt.select(query)
    assert torch.equal(l2p.last_selection, idx)
    prompts = model.prompt.prompts[idx].reshape(3, -1, model.dim)
    _, blocks = model.forward_features(x, prompts=prompts, return_blocks=True)
    n = prompts.shape[1]
    expected = model.classifier(model.norm(blocks[-1][:, 1 : 1 + n]).mean(1))  # L2P's head
    assert torch.allclose(logits, expected, atol=1e-6)
    assert surrogate.item() > 0


def test_backbone_checkpoint_is_loaded_and_frozen(tmp_path, feature_benchmark, build_strategy):
    from avcl_bench.models.avnet import AVNet
    from avcl_bench.runner import build_config

    over = {"model": {"dim": 16, "heads": 2}}
    cfg, _ = build_config("l2p", str(feature_benchmark), over)
    torch.manual_seed(1)
    src = AVNet(cfg)
    path = tmp_path / "avnet.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    s = build_strategy("l2p", {**over, "strategy": {"backbone_checkpoint": str(path)}})
    assert s.model.backbone_frozen
    for name, p in s.model.backbone_named_parameters():
        assert torch.equal(p, src.state_dict()[name]) and not p.requires_grad
    bad = tmp_path / "bad.pt"
    torch.save({"blocks.0.norm1.weight": torch.ones(3)}, bad)
    with pytest.raises(ConfigError, match="lacks"):
        build_strategy("l2p", {**over, "strategy": {"backbone_checkpoint": str(bad)}})
    with pytest.raises(ConfigError, match="not found"):
        build_strategy("l2p", {**over, "strategy": {"backbone_checkpoint": str(tmp_path / "missing.pt")}})


def test_frozen_backbone_stays_in_eval_mode():
    from avcl_bench.models.prompts import PromptedAVNet
    from avcl_bench.runner import build_config

    cfg, _ = build_config("l2p", None, {"synth": {"size": "tiny"}, "input": "clips"})
    model = PromptedAVNet(cfg)
    model.train()
    assert model.encoders.training
    model.freeze_backbone()
    model.train()
    bns = [m for m in model.encoders.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # BatchNorm statistics cannot move
    assert not model.blocks.training and model.classifier.training


@pytest.mark.parametrize("strategy", ["l2p", "dualprompt"])
def test_backbone_pretrained_on_first_experience_then_gets_no_gradient(feature_benchmark, strategy, build_strategy):
    from avcl_bench.data.datasets import load_data
    from avcl_bench.data.streams import make_streams
    from avcl_bench.runner import build_config

    over = {
        "model": {"dim": 16, "heads": 2},
        "train": {"epochs": 1, "batch_size": 16},
        "strategy": {"pretrain_epochs": 2},
        "progress": False,
    }
    cfg, manifest = build_config(strategy, str(feature_benchmark), over)
    manifest.materialize(cfg)
    scenario = make_streams(load_data(manifest, cfg), cfg["num_tasks"], manifest.name)
    train = list(scenario.train_stream)
    torch.manual_seed(0)
    s = build_strategy(strategy, over)
    init = {n: p.detach().clone() for n, p in s.model.backbone_named_parameters()}
    s.train(train[0], eval_streams=[])
    assert len(s.pretrain_history) == 2  # default backbone: pretrained on the first experience ...
    backbone = dict(s.model.backbone_named_parameters())
    assert any(not torch.equal(init[n], p) for n, p in backbone.items())
    assert s.model.backbone_frozen and not any(p.requires_grad for p in backbone.values())  # ... then frozen
    after_first = {n: p.detach().clone() for n, p in backbone.items()}
    prompts_first = {n: p.detach().clone() for n, p in s.model.prompt.named_parameters()}
    s.train(train[1], eval_streams=[])
    assert len(s.pretrain_history) == 2  # no second pretraining
    for n, p in s.model.backbone_named_parameters():
        assert p.grad is None and not p.requires_grad
        assert torch.equal(p, after_first[n]), n
    optimised = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in backbone.values()}
    changed = [n for n, p in s.model.prompt.named_parameters() if not torch.equal(p, prompts_first[n])]
    assert changed  # the prompts (and keys) keep learning
    res = s.evaluate_experiences(list(scenario.test_stream)[:2])[cfg["modality"]]
    assert len(res) == 2 and all(total > 0 for _, total in res)


@pytest.mark.parametrize("input", [pytest.param("clips", marks=pytest.mark.slow), "features"])
@pytest.mark.parametrize("modality", ["audio", "visual", "audio-visual"])
def test_l2p_smoke(run_tiny, modality, input, tmp_path):
    from avcl_bench.reporting.embeddings import load_npz

    m = run_tiny("l2p", modality, input, SMALL_FEATURES if input == "features" else [])
    # embeddings.npz holds the prompted feature the classifier sees, not the frozen query feature
    assert load_npz(tmp_path / f"l2p-{modality}-{input}" / "embeddings.npz")["meta"]["source"] == "strategy.embed"
    assert set(m["modalities"]) == {modality}
    assert 0.0 <= m["modalities"][modality]["avg_acc"] <= 100.0
    assert m["run"]["buffer_size"] == 0  # rehearsal-free
