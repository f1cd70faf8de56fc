"""Loss terms shared by several methods (one implementation each).

- :func:`kd_loss` — Hinton et al. 2015 distillation with temperature (LwF, Li & Hoiem 2017).
- :func:`taskwise_kd` — SS-IL's task-wise distillation (Ahn et al. 2021, Eq. 5), also the KD term
  of AV-CIL's release: one softmax per old task's logit slice.
- :func:`separated_ce` — SS-IL's separated softmax (Ahn et al. 2021, Eq. 4), also AV-CIL's CE.
- :func:`nca_loss`, :func:`proxy_attention_pool` — PODNet's NCA loss (the releases' bounded
  ``nca()``, or Eq. 8 of Douillard et al. 2020) and local-similarity-classifier pooling (Eq. 7);
  PODNet's and AFC's classifiers.
- CIGN's terms (Eq. 8-10): :func:`bce_heads`, :func:`token_kl`, :func:`token_ce`,
  :func:`continual_grouping_loss` and :func:`cign_loss_terms`, kept here (pure torch, no Avalanche)
  so that ``perf/bench_cign.py`` runs on a machine with torch alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..models.cign import CIGNNet


def kd_loss(new_logits: torch.Tensor, old_logits: torch.Tensor, T: float = 2.0) -> torch.Tensor:
    """KL(softmax(old/T) || softmax(new/T)) * T^2, averaged over the batch (Hinton et al. 2015)."""
    if new_logits.numel() == 0:
        return new_logits.sum() * 0.0
    log_p_new = F.log_softmax(new_logits.float() / T, dim=1)
    p_old = F.softmax(old_logits.float() / T, dim=1)
    return F.kl_div(log_p_new, p_old, reduction="batchmean") * (T * T)


def taskwise_kd(
    new_logits: torch.Tensor, old_logits: torch.Tensor, classes_per_task: int, num_old: int, T: float = 2.0
) -> torch.Tensor:
    """Sum over old tasks t of KD on the logit slice [t*k, (t+1)*k) (SS-IL Eq. 5; AV-CIL: T=2,
    KL * T^2 summed over tasks)."""
    total = new_logits.sum() * 0.0
    for start in range(0, num_old, classes_per_task):
        sl = slice(start, start + classes_per_task)
        total = total + kd_loss(new_logits[:, sl], old_logits[:, sl], T)
    return total


def separated_ce(
    logits: torch.Tensor, y: torch.Tensor, num_old: int, num_seen: int, is_old: torch.Tensor | None = None
) -> torch.Tensor:
    """SS-IL Eq. 4: samples of new classes get CE over the new-class logits only, exemplars of
    old classes CE over the old-class logits only; the two means are weighted by their counts.

    ``is_old`` defaults to ``y < num_old``.
    """
    is_old = (y < num_old) if is_old is None else is_old
    new, old = ~is_old, is_old
    n_new, n_old = int(new.sum()), int(old.sum())
    loss = logits.sum() * 0.0
    if n_new:
        loss = loss + F.cross_entropy(logits[new, num_old:num_seen].float(), y[new] - num_old, reduction="sum")
    if n_old:
        loss = loss + F.cross_entropy(logits[old, :num_old].float(), y[old], reduction="sum")
    return loss / max(1, n_new + n_old)


#: the forms of :func:`nca_loss`
NCA_FORMS = ("release", "paper")


def nca_loss(
    similarities: torch.Tensor,
    y: torch.Tensor,
    scale=1.0,
    margin: float = 0.6,
    form: str = "release",
    reduction: str = "mean",
) -> torch.Tensor:
    """NCA classification loss over class similarities s with scale eta (PODNet's, AFC's).

    ``release`` (the default): the releases' ``nca()``, bounded below by 0,

        z_j = eta (s_j - delta) - max_k eta (s_k - delta)
        l   = -z_y + log( exp(0) + sum_{j != y} exp(z_j) )

    The margin is subtracted from every similarity, so it cancels; after the max shift the
    target's own slot of the denominator holds exp(0) = 1 (the release zeroes it; its gradient is
    0). So l >= 0, l is the softmax cross-entropy of eta*s when the target scores highest, and its
    gradient vanishes as the target pulls ahead. When another class scores highest, l =
    eta (s_max - s_y) + log(1 + sum_{j != y} exp(eta (s_j - s_max))). The max is not detached (the
    release's autograd runs through it).

    ``paper``: PODNet Eq. 8, the margin on the target and a hinge, the positive excluded:

        l = [ -log( exp(eta (s_y - delta)) / sum_{j != y} exp(eta s_j) ) ]_+

    ``scale`` is eta (a tensor for the learnable scale). ``reduction``: mean | sum | none.
    """
    if form not in NCA_FORMS:
        raise ValueError(f"form must be one of {NCA_FORMS}, got {form!r}")
    s = similarities.float()
    onehot = F.one_hot(y, s.shape[1]).bool()
    if form == "release":
        # PODNet release inclearn/lib/losses/base.py nca() (exclude_pos_denominator, no hinge) =
        # AV-CIL release AFC/train_incremental_afc.py nca()
        z = scale * (s - margin)
        z = z - z.max(1, keepdim=True).values
        pos = z.gather(1, y[:, None]).squeeze(1)
        losses = torch.logsumexp(z.masked_fill(onehot, 0.0), dim=1) - pos
    else:
        # PODNet Eq. 8
        z = scale * (s - margin * onehot)
        pos = z.gather(1, y[:, None]).squeeze(1)
        if s.shape[1] < 2:  # no negative class: nothing to separate
            losses = pos * 0.0
        else:
            losses = torch.clamp(torch.logsumexp(z.masked_fill(onehot, float("-inf")), dim=1) - pos, min=0.0)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


def proxy_attention_pool(sims: torch.Tensor) -> torch.Tensor:
    """Class similarity from its K proxies' similarities (B, C, K): sum_k softmax_k(s) s_k (PODNet Eq. 7)."""
    return (torch.softmax(sims, dim=-1) * sims).sum(-1)


# ---------------------------------------------------------------- CIGN (Mo, Pian, Tian 2023)


def bce_targets(y: torch.Tensor, num_seen: int, old_logits: torch.Tensor | None = None) -> torch.Tensor:
    """One-hot targets over the seen classes; with ``old_logits`` (B, num_old), the old classes'
    targets are the previous model's sigmoid outputs (iCaRL Alg. 3: q_i^y = sigmoid(previous logit))."""
    target = F.one_hot(y, num_seen).float()
    if old_logits is not None:
        target[:, : old_logits.shape[1]] = torch.sigmoid(old_logits.float())
    return target


def bce_heads(
    logits: torch.Tensor, y: torch.Tensor, num_seen: int, old_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """CIGN Eq. 8 (third sum): sum_i BCE(y_i, sigmoid(logit_i)) over the seen classes, mean over the batch.

    With ``old_logits`` (the previous model's logits of this head, (B, num_old)), the targets of
    the old classes are the previous model's sigmoid outputs instead of 0/1 (iCaRL Alg. 3's
    distillation; a deviation, ``strategy.old_class_distillation: bce``)."""
    logits = logits[:, :num_seen].float()
    target = bce_targets(y, num_seen, old_logits)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / max(1, logits.shape[0])


def token_distribution(tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log of a token's distribution: log softmax over its embedding dimension."""
    return F.log_softmax(tokens.float() / temperature, dim=-1)


def token_kl(current: torch.Tensor, previous: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """CIGN Eq. 8 (first sum): sum_i KL(c_i^t || c_i^{t-1}) over old tokens (rows), each token a
    softmax over its D dimensions; ``previous`` is detached."""
    if current.shape[0] == 0:
        return current.sum() * 0.0
    log_p = token_distribution(current, temperature)
    log_q = token_distribution(previous.detach(), temperature)
    return (log_p.exp() * (log_p - log_q)).sum()


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CIGN Eq. 8 (second sum): sum_i CE(h_i, e_i), e_i = softmax(FC(c_i)), over new tokens."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def continual_grouping_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, tau: float
) -> torch.Tensor:
    """CIGN Eq. 9 for one modality, InfoNCE form:

    -1/N sum_n log exp(sim(a_n, p_n)/tau) / (exp(sim(a_n, p_n)/tau) + sum_m exp(sim(a_n, q_nm)/tau))

    anchor, positive (N, D); negatives (N, M, D) or (M, D) shared by all anchors; sim = cosine.
    The anchor is detached (it is the previous model's). Returns 0 when N = 0.
    """
    if anchor.shape[0] == 0:
        return positive.sum() * 0.0
    a = F.normalize(anchor.detach().float(), dim=-1)
    pos = (a * F.normalize(positive.float(), dim=-1)).sum(-1, keepdim=True) / tau  # (N, 1)
    neg = F.normalize(negatives.float(), dim=-1)
    if neg.dim() == 2:
        neg_sim = a @ neg.t() / tau  # (N, M)
    else:
        neg_sim = torch.einsum("nd,nmd->nm", a, neg) / tau
    logits = torch.cat([pos, neg_sim], 1)  # positive first: standard InfoNCE denominator
    return -(pos.squeeze(1) - torch.logsumexp(logits, dim=1)).mean()


def _rows(x, mask):
    """The rows ``mask`` of a multimodal batch ``[audio, visual]``."""
    return [t[mask] if torch.is_tensor(t) else t for t in x]


def cign_loss_terms(
    model: CIGNNet,
    prev_model: CIGNNet | None,
    x,
    y: torch.Tensor,
    out: dict,
    num_old: int,
    num_seen: int,
    scfg: dict,
    prev_logits: dict | None = None,
) -> dict:
    """Every term of CIGN Eq. 10 for one batch, by name (see the module docstring).

    ``out`` is ``model(x)``; ``prev_model`` the frozen model of task t-1 (None at the first task).
    ``prev_logits``: the previous model's per-branch logits on the batch, given with
    ``strategy.old_class_distillation`` ``bce`` (they become the old classes' BCE targets) or
    ``kd`` (a distillation term ``kd_<branch>`` on the old classes' logits).
    A term switched off (``scfg['avctd']``, ``scfg['avcg']``) or without data is absent.
    """
    terms = {}
    distill = scfg.get("old_class_distillation", "none") if prev_logits is not None and num_old else "none"
    for b in model.branches:  # CIGN Eq. 8: BCE over all seen classes, audio and visual
        old_logits = prev_logits[b][:, :num_old] if distill != "none" else None
        terms["bce_" + b] = bce_heads(out[b], y, num_seen, old_logits if distill == "bce" else None)
        if distill == "kd":  # LwF (Li & Hoiem 2016) Eq. 2 on the old classes' logits, not in CIGN
            terms["kd_" + b] = kd_loss(out[b][:, :num_old], old_logits, scfg["kd_T"])
    tokens = model.class_tokens()
    if scfg["avctd"]:
        if num_old and prev_model is not None:  # CIGN Eq. 8: KL(c_i^t || c_i^{t-1}), old tokens
            terms["token_kl"] = token_kl(tokens[:num_old], prev_model.class_tokens()[:num_old], scfg["kl_temperature"])
        new = torch.arange(num_old, num_seen, device=tokens.device)  # CIGN Eq. 8: CE(h_i, e_i), new tokens
        terms["token_ce"] = token_ce(model.token_logits(slice(num_old, num_seen))[:, :num_seen], new)
    if scfg["avcg"] and num_old and prev_model is not None:
        old = y < num_old
        if bool(old.any()):
            with torch.no_grad():
                prev_out = prev_model(_rows(x, old))
            y_old, y_new = y[old], y[~old]
            ar = torch.arange(int(old.sum()), device=y.device)
            for b in model.branches:
                g = out["g_" + b]
                anchor = prev_out["g_" + b][ar, y_old]  # g^{t-1}_{b,n}
                positive = g[old][ar, y_old]  # g^t_{b,n}
                if scfg["cg_negatives"] == "classes":
                    negatives = g[old][:, num_old:num_seen]  # (N, C_new, D)
                else:
                    negatives = g[~old][torch.arange(len(y_new), device=y.device), y_new]  # (M, D)
                # CIGN Eq. 9 (InfoNCE form, positive in the denominator)
                terms["cg_" + b] = continual_grouping_loss(anchor, positive, negatives, scfg["tau"])
    return terms
