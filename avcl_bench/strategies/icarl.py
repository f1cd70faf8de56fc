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
  seen logits plus the BCE distillation term on the old logits.
- Classification (Alg. 1): nearest-mean-of-exemplars (``classifier: nme``): the class means are
  the renormalised means of the normalised exemplar features, a sample goes to the class whose
  mean is nearest to its normalised feature; ``classifier: fc`` keeps the trained linear head
  (the AV-CIL release reports both).

The BCE terms are averaged over samples and classes (the paper sums over classes; the factor
1/num_seen is the only difference). Avalanche's ICaRL reads ``mb_x.shape`` and needs
``nc_benchmark``; this is a separate implementation on the audio-visual base.

:class:`ExemplarRehearsal` (exemplars merged into the training data, features for herding) is
shared with IL2M and BiC.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from avalanche.benchmarks.utils import concat_datasets

from ..errors import ConfigError
from . import register
from .base import AVCLStrategy, to_device
from .memory import ExemplarMemory


class ExemplarRehearsal(AVCLStrategy):
    """Base of the rehearsal methods: an :class:`ExemplarMemory` in the run's protocol form whose
    exemplars are concatenated with each new experience's training data."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        selection = self.scfg.get("selection", "random")
        if selection not in ("random", "herding"):
            raise ConfigError(f"config key 'strategy.selection' must be random or herding, got {selection!r}")
        self.memory = ExemplarMemory.from_config(self.cfg, selection=selection)
        if self.memory is None:
            raise ConfigError(f"strategy '{self.name}' needs an exemplar memory: set memory.per_class or memory.total")

    def buffer_len(self) -> int:
        return len(self.memory)

    def exemplar_dataset(self):
        return self.memory.dataset() if len(self.memory) else None

    def new_training_data(self):
        """The current experience's data used for training (BiC holds part of it out)."""
        return self.experience.dataset

    def train_dataset_adaptation(self, **kwargs):
        parts = [self.new_training_data()]
        ex = self.exemplar_dataset()
        if ex is not None:
            parts.append(ex)
        self.adapted_dataset = (concat_datasets(parts) if len(parts) > 1 else parts[0]).train()

    @torch.no_grad()
    def dataset_logits(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over the seen classes (n, num_seen) and labels (n,) of a dataset, in eval mode."""
        was_training = self.model.training
        self.model.eval()
        logits, labels = [], []
        for batch in self._loader(dataset.eval()):
            with self.autocast():
                logits.append(self.model(to_device(batch[0], self.device))[:, : self.num_seen].float().cpu())
            labels.append(batch[1].cpu())
        self.model.train(was_training)
        return torch.cat(logits), torch.cat(labels)

    def update_memory(self, dataset=None) -> None:
        """Add the current experience's classes (herding or random) and cut old classes to the quota."""
        feature_fn = self.extract_features if self.memory.selection == "herding" else None
        self.memory.update(dataset if dataset is not None else self.experience.dataset, self.num_seen, feature_fn)


def icarl_loss(logits: torch.Tensor, y: torch.Tensor, old_logits: torch.Tensor | None, num_old: int, num_seen: int,
               variant: str = "bce") -> torch.Tensor:
    """iCaRL Alg. 3 (``bce``) or the AV-CIL release's CE + BCE distillation (``ce_bce``)."""
    logits = logits[:, :num_seen].float()
    distill = old_logits is not None and num_old > 0
    if variant == "bce":
        targets = F.one_hot(y, num_seen).float()
        if distill:
            targets[:, :num_old] = torch.sigmoid(old_logits[:, :num_old].float())
        return F.binary_cross_entropy_with_logits(logits, targets)
    loss = F.cross_entropy(logits, y)
    if distill:
        loss = loss + F.binary_cross_entropy_with_logits(logits[:, :num_old],
                                                         torch.sigmoid(old_logits[:, :num_old].float()))
    return loss


def nme_scores(features: torch.Tensor, class_means: torch.Tensor) -> torch.Tensor:
    """Scores of the nearest-mean-of-exemplars rule: minus the squared distance between the
    L2-normalised feature and each class mean (argmax = nearest mean)."""
    f = F.normalize(features.float(), dim=1)
    return -torch.cdist(f, class_means.to(f), p=2).pow(2)


@register("icarl")
class ICaRL(ExemplarRehearsal):
    #: saved in run checkpoints besides the model (``--resume``); the previous model is the
    #: restored model itself, copied when the next experience starts
    checkpoint_attrs = ("memory", "class_means")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.scfg["loss"] not in ("bce", "ce_bce"):
            raise ConfigError(f"config key 'strategy.loss' must be bce or ce_bce, got {self.scfg['loss']!r}")
        if self.scfg["classifier"] not in ("nme", "fc"):
            raise ConfigError(f"config key 'strategy.classifier' must be nme or fc, got {self.scfg['classifier']!r}")
        self.old_model = None
        #: (num_classes, D) renormalised exemplar means, recomputed after each experience
        self.class_means: torch.Tensor | None = None

    def _before_training_exp(self, **kwargs):
        if self.experience.current_experience > 0:
            self.old_model = self.frozen_copy()
        super()._before_training_exp(**kwargs)

    def criterion(self):
        old = None
        if self.old_model is not None and self.num_old > 0:
            with torch.no_grad(), self.autocast():
                old = self.old_model(self.mb_x)
        return icarl_loss(self.mb_output, self.mb_y, old, self.num_old, self.num_seen, self.scfg["loss"])

    def _after_training_exp(self, **kwargs):
        super()._after_training_exp(**kwargs)
        self.update_memory()
        self.compute_class_means()

    @torch.no_grad()
    def compute_class_means(self) -> None:
        """mu_y = normalise(mean over the exemplars P_y of normalise(phi(p))) (Alg. 1)."""
        means = torch.zeros(self.num_seen, self.model.dim)
        for c in self.memory.classes:
            feats = F.normalize(self.extract_features(self.memory.class_dataset(c)), dim=1)
            means[c] = F.normalize(feats.mean(0), dim=0)
        self.class_means = means.to(self.device)

    def predict(self, x) -> dict:
        use_nme = (self.scfg["classifier"] == "nme" and self.class_means is not None
                   and self.class_means.shape[0] >= self.num_seen)
        if not use_nme:
            # FC head; also while an experience is being trained (the new classes have no
            # exemplars yet, e.g. for best-epoch selection on validation data)
            return super().predict(x)
        with self.autocast():
            feats = self.model.forward_features(x)
        return {self.modality: nme_scores(feats, self.class_means[: self.num_seen])}
