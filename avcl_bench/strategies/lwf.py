"""LwF: Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2018), audio-visual, no exemplars.

At experience t > 0 a frozen copy of the model after experience t-1 gives the old logits of every
new sample; the loss is

    L = L_new + lambda_o * L_old,

- ``L_new``: cross-entropy of the new data. ``ce: new`` (default) restricts it to the logits of the
  current experience's classes — LwF's "new task head" and what the AV-CIL release calls "CE on
  new logits"; ``ce: all`` uses every seen logit (the class-incremental fine-tuning form).
- ``L_old``: knowledge distillation with temperature T = 2. ``kd: taskwise`` (default) applies
  :func:`losses.taskwise_kd`: one softmax per old experience's logit slice, KL * T^2 summed over
  experiences. This is the AV-CIL release's LwF (its KD is the SS-IL task-wise form, T = 2) and it
  is also Li & Hoiem's original, where every old task has its own head and its own softmax.
  ``kd: global`` applies :func:`losses.kd_loss` to all old logits under one softmax.

Nothing of the old data is kept (``buffer_size`` is 0). Prediction: argmax over all seen logits.
Not implemented: LwF's optional warm-up of the new head with a frozen body (the AV-CIL release
does not use it either).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import AVCLStrategy, PreviousModel
from .losses import kd_loss, taskwise_kd


def lwf_loss(
    logits: torch.Tensor,
    old_logits: torch.Tensor | None,
    y: torch.Tensor,
    num_old: int,
    num_seen: int,
    classes_per_task: int,
    T: float = 2.0,
    lambda_old: float = 1.0,
    ce: str = "new",
    kd: str = "taskwise",
) -> torch.Tensor:
    """LwF loss of one minibatch (``logits`` over at least ``num_seen`` classes)."""
    logits = logits[:, :num_seen].float()
    if ce == "new" and num_old > 0:
        loss = F.cross_entropy(logits[:, num_old:num_seen], y - num_old)
    else:
        loss = F.cross_entropy(logits, y)
    if old_logits is None or num_old == 0:
        return loss
    old = old_logits[:, :num_old].float()
    if kd == "taskwise":
        dist = taskwise_kd(logits[:, :num_old], old, classes_per_task, num_old, T)
    else:
        dist = kd_loss(logits[:, :num_old], old, T)
    return loss + lambda_old * dist


@register("lwf")
class LwF(AVCLStrategy):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.previous = self.add_part("previous", PreviousModel())

    def old_logits(self):
        if self.previous.model is None or self.num_old == 0:
            return None
        return self.previous.outputs(self)["logits"]

    def criterion(self):
        s = self.scfg
        return lwf_loss(
            self.mb_output,
            self.old_logits(),
            self.mb_y,
            self.num_old,
            self.num_seen,
            self.classes_per_task,
            T=s["T"],
            lambda_old=s["lambda_old"],
            ce=s["ce"],
            kd=s["kd"],
        )
