"""AV-CIL (Pian, Mo, Guo, Tian, "Audio-Visual Class-Incremental Learning", ICCV 2023).

Specification: ``shared/spec/av-cil.md`` (facts read from the official release
weiguoPian/AV-CIL_ICCV2023, ``ours/train_incremental_ours.py``); independent implementation.

Network: :class:`avcl_bench.models.avcil.AVCILNet` (audio-guided spatial + temporal attention).

Loss at step 0: cross-entropy over the logits of the seen classes. From step 1 on, on a batch of
new-class samples plus a separate batch of exemplars (the release zips the training loader with
a cycled exemplar loader, 256 + 128):

    L = L_SCE + L_KD + lam_I * L_I + lam_C * L_C + [lam * VAD_spatial + (1 - lam) * VAD_temporal]

- ``L_SCE`` — separated cross-entropy (SS-IL Eq. 4), :func:`losses.separated_ce`;
- ``L_KD`` — task-wise distillation (SS-IL Eq. 5, T = 2, KL * T^2 summed over old tasks) on every
  sample of the batch, :func:`losses.taskwise_kd`;
- ``L_I`` — :func:`instance_contrastive`, ``L_C`` — :func:`class_contrastive` (the paper's D-AVSC,
  class term = Eq. 7), on every sample, with the L2-normalised audio and visual features;
- VAD — :func:`visual_attention_distillation` on the exemplars only.

Memory: :class:`ExemplarMemory` with a fixed total split equally over the classes seen so far
(``memory.total``: AVE 340 -> 48/24/16 per class), **random** selection as the release
(``ours/dataloader_ours.py``: ``random.sample`` per new class, old classes truncated to the new
quota). Model selection: the epoch with the best validation accuracy over all seen classes
(``train.select_best_on_val``). Epochs: ``train.epochs`` (the release's per-dataset values in
``strategies/av-cil.yaml`` ``protocols: av-cil:``; ``strategy.epochs_by_modality`` overrides one
modality, :func:`avcl_bench.config.epochs_for_modality`). Ablation switches: ``strategy.instance_contrastive``,
``strategy.class_contrastive``, ``strategy.attention_distillation``.

The cross-modal terms (L_I, L_C, VAD) need both modalities: with ``--modality audio|visual``
they are off and the method reduces to separated CE + task-wise KD + random exemplars (the
release runs AV-CIL on audio-visual only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.avcil import AVCILNet
from . import register
from .base import AVCLStrategy, PreviousModel
from .losses import separated_ce, taskwise_kd
from .memory import ExemplarMemory

# ----------------------------------------------------------------------------- loss terms


def instance_contrastive(za: torch.Tensor, zv: torch.Tensor, tau: float) -> torch.Tensor:
    """Instance-aware audio-visual similarity (AV-CIL D-AVSC, instance term; release
    ``cal_contrastive_loss``): cross-entropy over the rows of ``S = za zv^T / tau`` with the
    diagonal (audio and visual of the same clip) as the target, averaged over the batch.

    ``za``, ``zv``: (B, D) L2-normalised audio and visual features."""
    s = za.float() @ zv.float().t() / tau
    return F.cross_entropy(s, torch.arange(s.shape[0], device=s.device))


def class_contrastive(
    za: torch.Tensor, zv: torch.Tensor, y: torch.Tensor, tau: float, per_positive: bool = False
) -> torch.Tensor:
    """Class-aware audio-visual similarity (AV-CIL D-AVSC, class term, paper Eq. 7).

    With ``log p_ij = log softmax_j(za_i . zv_j / tau)`` and ``M_ij = 1(y_i = y_j)``:

    - ``per_positive=False`` (the release's code): ``-mean_{i,j} M_ij log p_ij`` (the sum over j is
      divided by the batch size B);
    - ``per_positive=True`` (Eq. 7 as printed): ``-mean_i (sum_j M_ij log p_ij / sum_j M_ij)``.
    """
    logp = F.log_softmax(za.float() @ zv.float().t() / tau, dim=1)
    pos = (y[:, None] == y[None, :]).to(logp.dtype)
    if per_positive:
        return -((logp * pos).sum(1) / pos.sum(1)).mean()
    return -(logp * pos).mean()


def _kl_sum(p_old: torch.Tensor, p_new: torch.Tensor) -> torch.Tensor:
    """sum over all entries of p_old * (log p_old - log p_new): the sum of KL(old || new) over every
    distribution of the tensor, whatever axis each is normalised over (``F.kl_div(log new, old,
    reduction='sum')``)."""
    p_old, p_new = p_old.float(), p_new.float()
    tiny = torch.finfo(p_new.dtype).tiny
    return (torch.xlogy(p_old, p_old) - p_old * torch.log(p_new.clamp_min(tiny))).sum()


def visual_attention_distillation(
    alpha_new: torch.Tensor, alpha_old: torch.Tensor, beta_new: torch.Tensor, beta_old: torch.Tensor, lam: float = 0.5
) -> torch.Tensor:
    """AV-CIL's Visual Attention Distillation on the exemplars (paper Sec. 3, VAD; release
    ``attn_score_distil``).

    Spatial: KL(old alpha || new alpha) over the P patches, summed over every (exemplar, frame,
    channel) and divided by the number of exemplars; temporal: KL(old beta || new beta) over the T
    frames, summed over every (exemplar, channel), divided likewise. Returns
    ``lam * spatial + (1 - lam) * temporal``; zero when the attentions agree.

    ``alpha_*``: (N, T, P, D), ``beta_*``: (N, T, D), N exemplars.
    """
    n = alpha_new.shape[0]
    if n == 0:
        return alpha_new.sum() * 0.0
    spatial = _kl_sum(alpha_old, alpha_new) / n
    temporal = _kl_sum(beta_old, beta_new) / n
    return lam * spatial + (1.0 - lam) * temporal


# ----------------------------------------------------------------------------- strategy


def previous_outputs(model, x) -> dict:
    """What AV-CIL reads from the previous model: logits (KD) and the attention maps (VAD)."""
    out = model.forward_all(x)
    return {k: out[k] for k in ("logits", "alpha", "beta") if out[k] is not None}


@register("av-cil")
class AVCIL(AVCLStrategy):
    """AV-CIL: separated CE + task-wise KD + D-AVSC (L_I, L_C) + VAD, random exemplars."""

    #: the release's network, always (models/avcil.py); its loaders' drop_last=True with the batch
    #: capped by the data (the training loader zipped with a cycled exemplar loader) is
    #: train.drop_last, set in strategies/av-cil.yaml
    networks = ("avcil",)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        s = self.scfg
        # new samples + a separate exemplar batch (herding, when chosen, on the fused features)
        self.memory = self.add_part(
            "memory",
            ExemplarMemory.from_config(self.cfg, "selection", replay="paired", batch_size=s["exemplar_batch_size"]),
        )
        # its logits on every sample, its attention maps on the exemplars (read by VAD only)
        self.previous = self.add_part(
            "previous", PreviousModel(previous_outputs, exemplar_only=("alpha", "beta"), memory=self.memory)
        )

    @classmethod
    def build_model(cls, cfg: dict):
        return AVCILNet(cfg, feature_encoder=cfg["strategy"]["feature_encoder"])

    # ---- forward and loss --------------------------------------------------------------------
    def forward(self):
        with self.autocast():
            self._out = self.model.forward_all(self.mb_x)
        return self._out["logits"]

    def loss_terms(self, out: dict, old: dict, y: torch.Tensor) -> dict:
        """Every term of the step >= 1 loss, already weighted; ``out``: forward_all of the current
        model on the batch; ``old``: the previous model's logits on the batch and attention maps on
        its exemplars (the items of old classes), :meth:`PreviousModel.outputs`."""
        s = self.scfg
        logits = out["logits"][:, : self.num_seen].float()
        is_old = y < self.num_old  # exemplars (new data holds new classes only)
        terms = {
            "ce": separated_ce(logits, y, self.num_old, self.num_seen, is_old),
            "kd": taskwise_kd(
                logits, old["logits"][:, : self.num_old].float(), self.classes_per_task, self.num_old, s["kd_T"]
            ),
        }
        if self.model.modality == "audio-visual":
            za, zv = F.normalize(out["f_a"].float(), dim=1), F.normalize(out["f_v"].float(), dim=1)
            if s["instance_contrastive"]:
                terms["instance"] = s["lam_I"] * instance_contrastive(za, zv, s["tau_I"])
            if s["class_contrastive"]:
                terms["class"] = s["lam_C"] * class_contrastive(
                    za, zv, y, s["tau_C"], s["class_contrastive_per_positive"]
                )
            if s["attention_distillation"]:
                terms["vad"] = visual_attention_distillation(  # old: the exemplars' maps only
                    out["alpha"][is_old], old["alpha"], out["beta"][is_old], old["beta"], s["lam"]
                )
        return terms

    def criterion(self):
        y = self.mb_y
        if self.previous.model is None or self.num_old == 0:
            return F.cross_entropy(self.mb_output[:, : self.num_seen].float(), y)
        return sum(self.loss_terms(self._out, self.previous.outputs(self), y).values())
