"""iCaRL: Incremental Classifier and Representation Learning (Rebuffi et al., CVPR 2017), audio-visual.

- Exemplars (Alg. 4-5): after each experience, herding on the L2-normalised CLS features of the
  fused audio-visual (or single-modality) model picks the class's exemplars in priority order (the
  first is the one nearest to the class mean); the quota is the run's memory protocol
  (``memory.per_class`` = m per class, CIGN; ``memory.total`` = M split over the seen classes,
  AV-CIL) and older classes are cut to the quota keeping their best-ranked exemplars.
- Representation learning (Alg. 3): the exemplars are merged into the new training data; the loss
  is binary cross-entropy on sigmoid outputs over every seen class, with one-hot targets for the
  new classes and the previous model's sigmoid outputs as targets for the old classes
  (``loss: bce``, the paper). ``loss: ce_bce`` is the AV-CIL release's form: cross-entropy over all
  seen logits plus the BCE distillation term on the old logits, with ONE sigmoid; the release
  (``iCaRL/train_incremental_icarl.py`` l.60) passes ``sigmoid(logits)`` to
  ``binary_cross_entropy_with_logits``, which applies a second one (a bug there; the named variant
  ``distill_sigmoid: twice`` reproduces it).
- Classification (Alg. 1): nearest-mean-of-exemplars (``classifier: nme``): the class means are
  the renormalised means of the normalised exemplar features (``class_mean: plain``, a named
  variant: the plain means, as the AV-CIL release computes them), a sample goes to the class whose
  mean is nearest to its normalised feature; ``classifier: fc`` keeps the trained linear head
  (the AV-CIL release reports both).
- Model selection (``train.select_best_on_val``) with the classifier that is reported: with NME,
  after every epoch the current classes' exemplars are herded with that epoch's model and the
  validation accuracy is the NME rule's with those means (the AV-CIL release,
  ``iCaRL/train_incremental_icarl.py`` l.235-286); the kept epoch's model herds the same exemplars
  again after the experience (herding is deterministic), so the memory is the kept epoch's.

The BCE terms are averaged over samples and classes (the paper sums over classes; the factor
1/num_seen is the only difference). Avalanche's ICaRL reads ``mb_x.shape`` and needs
``nc_benchmark``; this is a separate implementation on the audio-visual base. Its parts: the
exemplar memory, the exemplars' class means and the previous model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from . import register
from .base import AVCLStrategy, PreviousModel
from .losses import bce_targets
from .memory import ClassMeans, ExemplarMemory


def icarl_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    old_logits: torch.Tensor | None,
    num_old: int,
    num_seen: int,
    variant: str = "bce",
    distill_sigmoid: str = "once",
) -> torch.Tensor:
    """iCaRL Alg. 3 (``bce``) or the AV-CIL release's CE + BCE distillation (``ce_bce``);
    ``distill_sigmoid: twice`` feeds sigmoid(logits) to the BCE-with-logits of ``ce_bce``'s
    distillation as the release does (its l.60), a second sigmoid."""
    logits = logits[:, :num_seen].float()
    distill = old_logits is not None and num_old > 0
    if variant == "bce":
        targets = bce_targets(y, num_seen, old_logits[:, :num_old] if distill else None)  # iCaRL Alg. 3
        return F.binary_cross_entropy_with_logits(logits, targets)
    loss = F.cross_entropy(logits, y)
    if distill:
        # AV-CIL release iCaRL/train_incremental_icarl.py l.55-61; its l.60 applies two sigmoids (``twice``)
        student = logits[:, :num_old]
        if distill_sigmoid == "twice":
            student = torch.sigmoid(student)
        loss = loss + F.binary_cross_entropy_with_logits(student, torch.sigmoid(old_logits[:, :num_old].float()))
    return loss


def nme_scores(features: torch.Tensor, class_means: torch.Tensor) -> torch.Tensor:
    """Scores of the nearest-mean-of-exemplars rule: minus the squared distance between the
    L2-normalised feature and each class mean (argmax = nearest mean)."""
    f = F.normalize(features.float(), dim=1)
    return -torch.cdist(f, class_means.to(f), p=2).pow(2)


@register("icarl")
class ICaRL(AVCLStrategy):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.scfg["distill_sigmoid"] == "twice" and self.scfg["loss"] != "ce_bce":
            raise ConfigError(
                "config key 'strategy.distill_sigmoid' is 'twice', which only exists in loss ce_bce "
                f"(the AV-CIL release's); strategy.loss is {self.scfg['loss']!r}"
            )
        self.memory = self.add_part("memory", ExemplarMemory.from_config(self.cfg, "selection", required_by=self.name))
        #: (num_classes, D) renormalised exemplar means, recomputed after each experience
        self.class_means = self.add_part(
            "class_means", ClassMeans(self.memory, renormalise=self.scfg["class_mean"] == "renormalised")
        )
        self.previous = self.add_part("previous", PreviousModel(memory=self.memory))

    def criterion(self):
        old = None
        if self.previous.model is not None and self.num_old > 0:
            old = self.previous.outputs(self)["logits"]
        s = self.scfg
        return icarl_loss(self.mb_output, self.mb_y, old, self.num_old, self.num_seen, s["loss"], s["distill_sigmoid"])

    def _after_training_epoch(self, **kwargs):
        if self.scfg["classifier"] == "nme" and self.cfg["train"]["select_best_on_val"] and self.val_experiences:
            # validate with the NME rule over the exemplars this epoch's model would keep (release l.235-238)
            self.class_means.means = self.class_means.compute_with_current_classes(self)
        super()._after_training_epoch(**kwargs)

    def predict(self, x) -> dict:
        means = self.class_means.means
        if self.scfg["classifier"] != "nme" or means is None or means.shape[0] < self.num_seen:
            # FC head; also before the first experience's exemplars exist without per-epoch selection
            return super().predict(x)
        with self.autocast():
            feats = self.model.forward_features(x)
        return {self.modality: nme_scores(feats, means[: self.num_seen])}
