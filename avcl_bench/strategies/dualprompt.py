"""DualPrompt — Complementary Prompting for Rehearsal-free Continual Learning (Wang et al.,
ECCV 2022), audio-visual.

Mechanism (DualPrompt, method section):
- a G(eneral)-prompt g, shared by all tasks, attached to the shallow blocks ``strategy.g_layers``;
- one E(xpert)-prompt e_t per task, attached to the deeper blocks ``strategy.e_layers``, each with
  a learnable task key k_t;
- both attached by prefix tuning: a prompt is a pair (p_k, p_v) of Lp tokens each, prepended to
  the keys and values of the block's self-attention (``AVNet.forward_features(prefixes=...)``);
- training on task t uses e_t (the task identity is known in training) and the matching loss
  gamma(q(x), k_t) = 1 - cos pulls k_t to the queries of task t (DualPrompt's matching loss);
- inference: the query q(x) (the frozen backbone's CLS feature of the same modality tokens,
  without prompts) picks the task t* = argmax_t cos(q(x), k_t) over the tasks seen so far, and
  the model runs with g and e_{t*};
- the classifier reads the CLS output; as the DualPrompt release, the training CE masks the
  logits of classes outside the current task (``strategy.train_mask``). Rehearsal-free.

Layer mapping: the paper attaches g to blocks 1-2 and e to blocks 3-5 of a 12-block ViT-B. The
suite's fusion transformer is shallow (``model.fusion_depth`` = 2 by default), so the defaults
are g on block 0 and e on block 1 (shallow / deep, the same split in spirit).

Pretrained backbone: as L2P (see ``l2p.py``): ``strategy.backbone_checkpoint`` or, by default,
pretraining on the first experience and freezing afterwards.
"""

from __future__ import annotations

import torch

from ..models.prompts import DualPrompts
from . import register
from .l2p import FrozenBackbonePromptStrategy


@register("dualprompt")
class DualPrompt(FrozenBackbonePromptStrategy):
    def build_prompt(self):
        s = self.scfg
        return DualPrompts(
            self.model.dim,
            self.num_tasks,
            s["g_layers"],
            s["e_layers"],
            s["g_length"],
            s["e_length"],
            len(self.model.blocks),
        ).to(self.device)

    def make_optimizer(self, **kwargs):
        if self.is_training and self.experience is not None:
            self.model.prompt.set_task(self.task_id)  # only e_t and k_t (and g) train on task t
        super().make_optimizer(**kwargs)

    def num_tasks_seen(self) -> int:
        return self.task_id + 1

    def prompted_features(self, x, task=None):
        """``task`` (B,) = the known task in training; None = match the task key (inference)."""
        model = self.model
        with torch.no_grad():
            tokens = model.tokens(x)
        query = model.query(x, tokens=tokens)
        aux = None
        if task is None:
            task, _ = model.prompt.match(query, self.num_tasks_seen())
        else:
            aux = model.prompt.matching_loss(query, task)
        self.last_task = task
        prefixes = {
            i: (pk.to(tokens.dtype), pv.to(tokens.dtype)) for i, (pk, pv) in model.prompt.prefixes(task).items()
        }
        return model.forward_features(x, prefixes=prefixes, tokens=tokens), aux
