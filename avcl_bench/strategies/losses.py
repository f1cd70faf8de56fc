"""Loss terms shared by several methods (one implementation each).

- :func:`kd_loss` — Hinton et al. 2015 distillation with temperature (LwF, Li & Hoiem 2017).
- :func:`taskwise_kd` — SS-IL's task-wise distillation (Ahn et al. 2021, Eq. 5), also the KD term
  of AV-CIL's release: one softmax per old task's logit slice.
- :func:`separated_ce` — SS-IL's separated softmax (Ahn et al. 2021, Eq. 4), also AV-CIL's CE.
- :func:`nca_loss`, :func:`proxy_attention_pool` — PODNet's NCA loss with margin (Douillard et al.
  2020, Eq. 8) and local-similarity-classifier pooling (Eq. 7); PODNet's and AFC's classifiers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(new_logits: torch.Tensor, old_logits: torch.Tensor, T: float = 2.0) -> torch.Tensor:
    """KL(softmax(old/T) || softmax(new/T)) * T^2, averaged over the batch (Hinton et al. 2015)."""
    if new_logits.numel() == 0:
        return new_logits.sum() * 0.0
    log_p_new = F.log_softmax(new_logits.float() / T, dim=1)
    p_old = F.softmax(old_logits.float() / T, dim=1)
    return F.kl_div(log_p_new, p_old, reduction="batchmean") * (T * T)


def taskwise_kd(new_logits: torch.Tensor, old_logits: torch.Tensor, classes_per_task: int, num_old: int,
                T: float = 2.0) -> torch.Tensor:
    """Sum over old tasks t of KD on the logit slice [t*k, (t+1)*k) (SS-IL Eq. 5; AV-CIL: T=2,
    KL * T^2 summed over tasks)."""
    total = new_logits.sum() * 0.0
    for start in range(0, num_old, classes_per_task):
        sl = slice(start, start + classes_per_task)
        total = total + kd_loss(new_logits[:, sl], old_logits[:, sl], T)
    return total


def separated_ce(logits: torch.Tensor, y: torch.Tensor, num_old: int, num_seen: int,
                 is_old: torch.Tensor | None = None) -> torch.Tensor:
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


def nca_loss(similarities: torch.Tensor, y: torch.Tensor, scale=1.0, margin: float = 0.6,
             margin_mode: str = "target", reduction: str = "mean", hinge: bool = False) -> torch.Tensor:
    """NCA loss with margin (PODNet Eq. 8; AFC's classification loss):

        l_i = -log( exp(eta (s_{i,y_i} - delta)) / sum_{j != y_i} exp(eta s_{i,j}) )

    ``margin_mode='target'`` subtracts delta from the target similarity only (the paper);
    ``'all'`` subtracts it from every similarity, where it cancels (AFC release's ``nca()``).
    ``scale`` is eta (a tensor for the learnable scale). ``hinge`` clamps each l_i at 0 (PODNet's
    ``[.]_+``). ``reduction``: mean | sum | none.
    """
    if margin_mode not in ("target", "all"):
        raise ValueError(f"margin_mode must be 'target' or 'all', got {margin_mode!r}")
    s = similarities.float()
    onehot = F.one_hot(y, s.shape[1]).bool()
    s = s - margin * onehot if margin_mode == "target" else s - margin
    s = scale * s
    pos = s.gather(1, y[:, None]).squeeze(1)
    if s.shape[1] < 2:  # no negative class: nothing to separate
        losses = pos * 0.0
    else:
        losses = torch.logsumexp(s.masked_fill(onehot, float("-inf")), dim=1) - pos
    if hinge:
        losses = torch.clamp(losses, min=0.0)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


def proxy_attention_pool(sims: torch.Tensor) -> torch.Tensor:
    """Class similarity from its K proxies' similarities (B, C, K): sum_k softmax_k(s) s_k (PODNet Eq. 7)."""
    return (torch.softmax(sims, dim=-1) * sims).sum(-1)
