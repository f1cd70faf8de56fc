"""SS-IL — Separated Softmax for Incremental Learning (Ahn et al., ICCV 2021), audio-visual.

Mechanism (SS-IL, method section), on the shared AVNet of the run's modality:
- replay drawn in *separate* mini-batches: every step concatenates a batch of the new task's data
  (``train.batch_size``) with an independently drawn batch of exemplars
  (``strategy.replay_batch_size``), cycling through the exemplar memory (:class:`PairedReplayLoader`);
  an epoch is one pass over the new data;
- separated softmax (SS-IL Eq. 4, ``losses.separated_ce``): new-task samples get a softmax over
  the new classes' logits only, exemplars a softmax over the old classes' logits only, so the new
  data never pushes old-class logits down;
- task-wise knowledge distillation (SS-IL Eq. 5, ``losses.taskwise_kd``): for every old task, KL
  between the previous model's and the current model's softmax over that task's logit slice
  (temperature T), on the whole batch (new data and exemplars);
- exemplars drawn at random per class (SS-IL; the AV-CIL release), in the run's memory form
  (``memory.per_class`` for CIGN protocols, ``memory.total`` split over the seen classes for the
  AV-CIL ones), shrunk to the quota as classes arrive;
- inference: argmax over all seen classes (one softmax).
The first task is plain cross-entropy over its classes (separated CE with no old classes).
"""

from __future__ import annotations

from . import register
from .base import AVCLStrategy, PreviousModel
from .losses import separated_ce, taskwise_kd
from .memory import ExemplarMemory


@register("ssil")
class SSIL(AVCLStrategy):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.memory = self.add_part(
            "memory", ExemplarMemory.from_config(self.cfg, replay="paired", batch_size=self.scfg["replay_batch_size"])
        )
        self.previous = self.add_part("previous", PreviousModel(memory=self.memory))

    def criterion(self):
        logits = self.mb_output.float()
        loss = separated_ce(logits, self.mb_y, self.num_old, self.num_seen)
        if self.previous.model is not None and self.num_old > 0:
            old_logits = self.previous.outputs(self)["logits"]
            kd = taskwise_kd(
                logits[:, : self.num_old],
                old_logits[:, : self.num_old].float(),
                self.classes_per_task,
                self.num_old,
                T=self.scfg["temperature"],
            )
            loss = loss + self.scfg["kd_weight"] * kd
        return loss
