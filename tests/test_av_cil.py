"""AV-CIL: attention, each loss term against hand-computed values, and end-to-end runs (generated
AV-CIL-format features, the official AVE-CI layout through the CLI, raw clips)."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from avcl_bench.cli import main
from avcl_bench.models.avcil import AVCILNet
from avcl_bench.paths import DATASETS_DIR
from avcl_bench.strategies.av_cil import AVCIL, class_contrastive, instance_contrastive, visual_attention_distillation
from avcl_bench.strategies.base import epochs_for_modality
from avcl_bench.strategies.losses import separated_ce, taskwise_kd


def tiny_cfg(audio_dim=4, visual_shape=(3, 5, 4), modality="audio-visual", dim=8):
    return {
        "input": "features",
        "modality": modality,
        "model": {"dim": dim},
        "features": {"audio_dim": audio_dim, "visual_shape": list(visual_shape)},
    }


# ----------------------------------------------------------------------------- attention


def test_attention_shapes_and_softmax_axes():
    torch.manual_seed(0)
    net = AVCILNet(tiny_cfg())  # audio and visual widths agree: identity tokens (the release)
    B, (T, P, D) = 2, (3, 5, 4)
    x = (torch.randn(B, D), torch.randn(B, T, P, D))
    out = net.forward_all(x)
    assert out["alpha"].shape == (B, T, P, D)  # element-wise per channel
    assert out["beta"].shape == (B, T, D)
    assert out["v"].shape == (B, D) and out["logits"].shape == (B, 0)
    # alpha sums to one over the patches (axis 2), beta over the frames (axis 1) ...
    assert torch.allclose(out["alpha"].sum(2), torch.ones(B, T, D), atol=1e-6)
    assert torch.allclose(out["beta"].sum(1), torch.ones(B, D), atol=1e-6)
    # ... and not over the other axes
    assert not torch.allclose(out["alpha"].sum(1), torch.ones(B, P, D), atol=1e-3)
    assert not torch.allclose(out["alpha"].sum(3), torch.ones(B, T, P), atol=1e-3)
    net.grow(3)
    assert net(x).shape == (B, 3)
    # a width mismatch falls back to the suite's linear feature encoders (to model.dim)
    net2 = AVCILNet(tiny_cfg(audio_dim=6))
    assert net2.dim == 8 and net2.forward_all((torch.randn(B, 6), torch.randn(B, T, P, D)))["alpha"].shape == (
        B,
        T,
        P,
        8,
    )


def test_pooled_feature_on_hand_built_example():
    """T=2 frames, P=2 patches, D=2 channels; W_a, W_v set so that a' and V' are chosen numbers."""
    net = AVCILNet(tiny_cfg(audio_dim=2, visual_shape=(2, 2, 2)))
    with torch.no_grad():
        net.attn_audio_proj.weight.zero_()
        net.attn_audio_proj.bias.copy_(torch.atanh(torch.tensor([0.5, 0.0])))  # a' = [0.5, 0]
        net.attn_visual_proj.weight.copy_(torch.eye(2))
        net.attn_visual_proj.bias.zero_()  # V' = tanh(V)
    pv = [[0.8, -0.4], [0.2, 0.6]]  # V' of channel 0: frame t, patch p
    V = torch.zeros(1, 2, 2, 2)
    V[0, :, :, 0] = torch.atanh(torch.tensor(pv))
    V[0, :, :, 1] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = net.forward_all((torch.zeros(1, 2), V))

    # channel 0 by hand: alpha_tp = exp(0.5 V'_tp) / sum_p ...
    alpha = [[math.exp(0.5 * pv[t][p]) / sum(math.exp(0.5 * q) for q in pv[t]) for p in range(2)] for t in range(2)]
    frame = [sum(alpha[t][p] * pv[t][p] for p in range(2)) for t in range(2)]
    beta = [math.exp(0.5 * frame[t]) / sum(math.exp(0.5 * f) for f in frame) for t in range(2)]
    rawV = [[math.atanh(v) for v in row] for row in pv]
    v0 = sum(beta[t] * sum(alpha[t][p] * rawV[t][p] for p in range(2)) for t in range(2))
    assert out["alpha"][0, :, :, 0].flatten().tolist() == pytest.approx(sum(alpha, []), rel=1e-5)
    assert out["beta"][0, :, 0].tolist() == pytest.approx(beta, rel=1e-5)
    assert out["v"][0, 0].item() == pytest.approx(v0, rel=1e-5)
    # channel 1 has a' = 0: uniform attention, so its pooled value is the token mean of raw V
    assert out["alpha"][0, :, :, 1].flatten().tolist() == pytest.approx([0.5] * 4)
    assert out["v"][0, 1].item() == pytest.approx(2.5, rel=1e-6)


def test_single_modality_variants():
    torch.manual_seed(0)
    x = (torch.randn(3, 4), torch.randn(3, 3, 5, 4))
    audio = AVCILNet(tiny_cfg(modality="audio"))
    out = audio.forward_all(x)
    assert torch.allclose(out["fused"], F.relu(audio.audio_proj(x[0])))
    visual = AVCILNet(tiny_cfg(modality="visual"))
    out = visual.forward_all(x)
    assert torch.allclose(out["fused"], F.relu(visual.visual_proj(x[1].mean(dim=(1, 2)))), atol=1e-6)
    assert out["alpha"] is None and not hasattr(visual, "attn_audio_proj")


# ----------------------------------------------------------------------------- loss terms


def test_instance_contrastive_hand_computed():
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zv = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # S = za zv^T / 0.5 = [[2, 1.2], [0, 1.6]]; target = diagonal
    expected = 0.5 * (
        -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))
    )
    assert instance_contrastive(za, zv, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_class_contrastive_hand_computed_both_forms():
    za = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    zv = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    tau = 1.0
    # rows of S: [1, 0, 0], [1, 0, 0], [0, 1, 1]
    lse_a = math.log(math.exp(1) + 2)
    lse_c = math.log(1 + 2 * math.e)
    logp = [[1 - lse_a, -lse_a, -lse_a], [1 - lse_a, -lse_a, -lse_a], [-lse_c, 1 - lse_c, 1 - lse_c]]
    pos = [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    code = -sum(logp[i][j] * pos[i][j] for i in range(3) for j in range(3)) / 9  # release: mean over i, j
    eq7 = -sum(sum(logp[i][j] * pos[i][j] for j in range(3)) / sum(pos[i]) for i in range(3)) / 3
    assert class_contrastive(za, zv, y, tau).item() == pytest.approx(code, rel=1e-6)
    assert class_contrastive(za, zv, y, tau, per_positive=True).item() == pytest.approx(eq7, rel=1e-6)
    assert code != pytest.approx(eq7)


def test_vad_hand_computed_and_zero_when_attentions_agree():
    # two exemplars, T=2, P=2, D=1
    a_old = torch.tensor([0.5, 0.5]).view(1, 1, 2, 1).expand(2, 2, 2, 1).clone()
    a_new = a_old.clone()
    a_new[0, 0, :, 0] = torch.tensor([0.25, 0.75])
    b_old = torch.tensor([0.5, 0.5]).view(1, 2, 1).expand(2, 2, 1).clone()
    b_new = b_old.clone()
    b_new[1, :, 0] = torch.tensor([0.9, 0.1])
    kl_s = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # one (exemplar, frame, channel) differs
    kl_t = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    lam = 0.3
    expected = lam * kl_s / 2 + (1 - lam) * kl_t / 2  # divided by the number of exemplars
    assert visual_attention_distillation(a_new, a_old, b_new, b_old, lam).item() == pytest.approx(expected, rel=1e-5)
    torch.manual_seed(0)
    alpha = torch.softmax(torch.randn(3, 2, 4, 5), dim=2)
    beta = torch.softmax(torch.randn(3, 2, 5), dim=1)
    assert visual_attention_distillation(alpha, alpha.clone(), beta, beta.clone(), 0.5).item() == pytest.approx(
        0.0, abs=1e-6
    )
    assert visual_attention_distillation(alpha[:0], alpha[:0], beta[:0], beta[:0]).item() == 0.0


def _fake_strategy(**switches):
    scfg = {
        "lam_I": 0.5,
        "lam_C": 1.0,
        "lam": 0.5,
        "tau_I": 0.05,
        "tau_C": 0.05,
        "kd_T": 2.0,
        "instance_contrastive": True,
        "class_contrastive": True,
        "attention_distillation": True,
        "class_contrastive_per_positive": False,
    }
    scfg.update(switches)
    return SimpleNamespace(
        scfg=scfg, num_seen=6, num_old=4, classes_per_task=2, model=SimpleNamespace(modality="audio-visual")
    )


def _fake_outputs(seed):
    g = torch.Generator().manual_seed(seed)
    B, T, P, D = 5, 2, 3, 4
    return {
        "logits": torch.randn(B, 6, generator=g),
        "f_a": torch.rand(B, D, generator=g),
        "f_v": torch.rand(B, D, generator=g),
        "alpha": torch.softmax(torch.randn(B, T, P, D, generator=g), 2),
        "beta": torch.softmax(torch.randn(B, T, D, generator=g), 1),
    }


def test_total_loss_is_the_sum_of_the_terms_and_switches_remove_them():
    out, old_all = _fake_outputs(0), _fake_outputs(1)
    y = torch.tensor([0, 3, 4, 5, 5])  # two exemplars (classes 0, 3), three new samples
    ex = y < 4
    # the previous model's attention maps come for the exemplars only (PreviousModel.outputs)
    old = {**old_all, "alpha": old_all["alpha"][ex], "beta": old_all["beta"][ex]}
    terms = AVCIL.loss_terms(_fake_strategy(), out, old, y)
    za, zv = F.normalize(out["f_a"], dim=1), F.normalize(out["f_v"], dim=1)
    expected = {
        "ce": separated_ce(out["logits"], y, 4, 6),
        "kd": taskwise_kd(out["logits"], old["logits"][:, :4], 2, 4, 2.0),
        "instance": 0.5 * instance_contrastive(za, zv, 0.05),
        "class": 1.0 * class_contrastive(za, zv, y, 0.05),
        "vad": visual_attention_distillation(
            out["alpha"][ex], old_all["alpha"][ex], out["beta"][ex], old_all["beta"][ex], 0.5
        ),
    }
    assert set(terms) == set(expected)
    for k in expected:
        assert terms[k].item() == pytest.approx(expected[k].item(), rel=1e-6), k
        assert terms[k].item() > 0, k
    off = AVCIL.loss_terms(
        _fake_strategy(instance_contrastive=False, class_contrastive=False, attention_distillation=False), out, old, y
    )
    assert set(off) == {"ce", "kd"}
    single = _fake_strategy()
    single.model.modality = "audio"
    assert set(AVCIL.loss_terms(single, out, old, y)) == {"ce", "kd"}


def test_epochs_by_modality():
    cfg = {
        "modality": "audio",
        "train": {"epochs": 7},
        "strategy": {"epochs_by_modality": {"audio": 300, "visual": None, "audio-visual": 150}},
    }
    assert epochs_for_modality(cfg) == 300
    cfg["modality"] = "visual"
    assert epochs_for_modality(cfg) == 7
    cfg["strategy"]["epochs_by_modality"] = None
    cfg["modality"] = "audio"
    assert epochs_for_modality(cfg) == 7


# ----------------------------------------------------------------------------- end to end


def _run(args):
    code = main(["run", "--quiet"] + args)
    assert code == 0
    return code


def _metrics(rd):
    return json.loads((rd / "metrics.json").read_text())


@pytest.mark.slow
def test_av_cil_forgets_less_than_finetuning(tmp_path, total_memory_benchmark):
    bench = total_memory_benchmark
    common = [
        "--benchmark",
        str(bench),
        "--results-dir",
        str(tmp_path / "runs"),
        "--set",
        "train.epochs=10",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.lr=0.01",
        "--set",
        "model.dim=32",
    ]
    _run(["--strategy", "finetune", "--run-id", "ft"] + common)
    _run(["--strategy", "av-cil", "--run-id", "av", "--set", "strategy.exemplar_batch_size=16"] + common)
    ft = _metrics(tmp_path / "runs" / "ft")
    av = _metrics(tmp_path / "runs" / "av")
    f, a = ft["modalities"]["audio-visual"], av["modalities"]["audio-visual"]
    assert av["run"]["buffer_size"] == 48  # 6 per class over 8 classes (total 48)
    assert f["avcil_forgetting"] > 80  # fine-tuning loses the old tasks
    assert a["avcil_forgetting"] < f["avcil_forgetting"] - 25
    assert a["forgetting"] < f["forgetting"] - 25
    assert a["step_acc"][-1] > f["step_acc"][-1] + 20


def test_cli_on_the_official_ave_ci_layout(tmp_path):
    """All 4079 AVE-CI ids in the official feature layout (npy dicts) at tiny dimensions, through
    the ave-ci manifest (its counts check, 28 classes, 4 tasks, memory total 340)."""
    from avcl_bench.data.features import AUDIO_FILE, VISUAL_NPY_FILE, write_avcil_features

    splits = pd.read_csv(DATASETS_DIR / "ave-ci" / "splits.csv", dtype=str, keep_default_na=False)
    classes = pd.read_csv(DATASETS_DIR / "ave-ci" / "classes.csv", dtype=str, keep_default_na=False)
    index = dict(zip(classes["name"], classes["index"].astype(int)))
    assert len(splits) == 4079
    root = tmp_path / "AVE"
    write_avcil_features(
        root, splits["id"].tolist(), [index[n] for n in splits["label"]], 8, (2, 3, 8), visual_format="npy", seed=1
    )
    assert (root / AUDIO_FILE).is_file() and (root / VISUAL_NPY_FILE).is_file()
    _run(
        [
            "--strategy",
            "av-cil",
            "--benchmark",
            "ave-ci",
            "--data-root",
            str(root),
            "--results-dir",
            str(tmp_path / "runs"),
            "--run-id",
            "ave",
            "--set",
            "features.audio_dim=8",
            "--set",
            "features.visual_shape=[2,3,8]",
            "--set",
            "strategy.epochs_by_modality.audio-visual=1",
            "--set",
            "train.batch_size=512",
            "--set",
            "train.eval_batch_size=512",
        ]
    )
    rd = tmp_path / "runs" / "ave"
    m = _metrics(rd)
    av = m["modalities"]["audio-visual"]
    assert m["run"]["num_classes"] == 28 and m["run"]["num_tasks"] == 4
    assert sum(m["run"]["test_clips_per_task"]) == 394
    assert m["run"]["buffer_size"] == (340 // 28) * 28  # the fixed total over all 28 classes
    assert len(av["step_acc"]) == 4 and np.isfinite(av["avcil_forgetting"])
    assert m["run"]["classes"][:2] == ["Acoustic guitar", "Cat"]
    cfg = (rd / "config.yaml").read_text()
    assert "total: 340" in cfg and "seed: 42" in cfg


@pytest.mark.slow
def test_av_cil_runs_on_raw_clips(run_tiny):
    m = run_tiny("av-cil", "audio-visual", "clips", ["--set", "strategy.exemplar_batch_size=8"])
    av = m["modalities"]["audio-visual"]
    assert m["run"]["input"] == "clips" and len(av["step_acc"]) == 4
    assert m["run"]["buffer_size"] > 0
