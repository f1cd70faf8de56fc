"""IL2M: Class Incremental Learning with Dual Memory (Belouadah & Popescu, ICCV 2019), audio-visual.

Training is fine-tuning with a bounded exemplar memory (the first memory): the exemplars of the
old classes are merged into the new data and the loss is plain cross-entropy over every seen
class — no distillation (the paper finds it hurts when a memory is allowed).

The second memory holds class statistics. After experience (state) N, on its training data:

- ``init_mean[c]`` for each new class c: the mean score of class c over c's training clips, i.e.
  the class's statistic "when it was new" (kept for ever);
- ``conf[N]``: the model's confidence in state N, the mean top-1 score over the new classes'
  training clips;
- ``cur_mean[c]`` for each old class c: the mean score of class c over its exemplars in state N.

At inference in state N, for a clip whose top-1 class is a new class, the scores of the old
classes are rectified (the paper's Eq. 1)

    s'(c) = s(c) * init_mean[c] / cur_mean[c] * conf[N] / conf[state(c)],

and nothing changes when the top-1 class is an old class or for the new classes' scores.

Scores (``strategy.scores``): ``logits`` (default) are the raw outputs of the classifier, as the
official release rectifies them; ``softmax`` uses probabilities over the seen classes. A factor
whose statistics are not all positive (possible with raw logits) is left at 1 and counted in
``self.skipped_factors``.
"""

from __future__ import annotations

import torch

from . import register
from .base import AVCLStrategy
from .memory import ExemplarMemory


def il2m_rectify(scores: torch.Tensor, num_old: int, factors: torch.Tensor) -> torch.Tensor:
    """Multiply the old-class scores of the rows whose top-1 class is new by ``factors`` (num_old,)."""
    if num_old == 0:
        return scores
    out = scores.clone()
    predicted_new = scores.argmax(1) >= num_old
    out[predicted_new, :num_old] = scores[predicted_new, :num_old] * factors.to(scores)
    return out


def class_statistics(scores: torch.Tensor, y: torch.Tensor, num_old: int) -> tuple[dict, float, dict]:
    """(init_mean of the new classes, confidence over new-class clips, cur_mean of the old classes)."""
    init_mean, cur_mean = {}, {}
    for c in torch.unique(y).tolist():
        mean = float(scores[y == c, c].mean())
        (cur_mean if c < num_old else init_mean)[c] = mean
    new = y >= num_old
    conf = float(scores[new].max(1).values.mean()) if bool(new.any()) else float("nan")
    return init_mean, conf, cur_mean


@register("il2m")
class IL2M(AVCLStrategy):
    #: the second memory, saved in run checkpoints (``--resume``; the exemplar memory saves itself)
    checkpoint_attrs = ("init_mean", "class_state", "confidence", "cur_mean", "stats_state")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.memory = self.add_part("memory", ExemplarMemory.from_config(self.cfg, "selection", required_by=self.name))
        self.init_mean: dict[int, float] = {}  # class -> mean score when the class was new
        self.class_state: dict[int, int] = {}  # class -> the state in which it was learned
        self.confidence: dict[int, float] = {}  # state -> mean top-1 score on its new classes
        self.cur_mean: dict[int, float] = {}  # old class -> mean score on its exemplars, current state
        self.stats_state = -1  # the state the statistics describe
        self.skipped_factors = 0

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits[:, : self.num_seen].float()
        return logits.softmax(1) if self.scfg["scores"] == "softmax" else logits

    def _after_training_exp(self, **kwargs):
        super()._after_training_exp(**kwargs)  # best-on-val weights restored, the exemplar memory updated
        self.compute_statistics()  # on the data trained on, so on the exemplars before this update

    @torch.no_grad()
    def compute_statistics(self) -> None:
        """Statistics of state N on its training data: new-class clips and old-class exemplars."""
        logits, y = self.dataset_logits(
            self.adapted_dataset if self.adapted_dataset is not None else self.experience.dataset
        )
        init_mean, conf, cur_mean = class_statistics(self.scores(logits), y, self.num_old)
        self.init_mean.update(init_mean)
        for c in init_mean:
            self.class_state[c] = self.task_id
        self.confidence[self.task_id] = conf
        self.cur_mean = cur_mean
        self.stats_state = self.task_id

    def rectification_factors(self) -> torch.Tensor:
        """init_mean[c] / cur_mean[c] * conf[N] / conf[state(c)] for every old class c."""
        n = self.stats_state
        factors = torch.ones(self.num_old)
        self.skipped_factors = 0
        for c in range(self.num_old):
            stats = (
                self.init_mean.get(c),
                self.cur_mean.get(c),
                self.confidence.get(n),
                self.confidence.get(self.class_state.get(c)),
            )
            if any(v is None or not v > 0 for v in stats):
                self.skipped_factors += 1
                continue
            init, cur, conf_now, conf_then = stats
            factors[c] = init / cur * conf_now / conf_then
        return factors

    def predict(self, x) -> dict:
        with self.autocast():
            s = self.scores(self.model(x))
        if self.num_old and self.stats_state == self.task_id:
            # (while an experience is being trained its statistics do not exist yet: no rectification)
            s = il2m_rectify(s, self.num_old, self.rectification_factors().to(s.device))
        return {self.modality: s}
