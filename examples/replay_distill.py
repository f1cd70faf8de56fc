"""Replay + distillation: a method outside the package, in one file. Exemplars of the old
classes (the run's memory protocol, random selection) are trained with the new data, and the previous
model's old-class logits are distilled into the current model's (LwF's term in Hinton's KD form,
``kd_loss``):  L = CE(all seen logits) + lambda_kd * KD_T(old logits).

    avcl-bench run --strategy examples/replay_distill.py:ReplayDistill --set synth.size=tiny
"""

import torch
from avalanche.benchmarks.utils import concat_datasets

from avcl_bench.strategies.base import AVCLStrategy
from avcl_bench.strategies.losses import kd_loss
from avcl_bench.strategies.memory import ExemplarMemory


class ReplayDistill(AVCLStrategy):
    doc = {  # the strategy document, as a strategies/*.yaml file
        "name": "replay-distill",
        "display_name": "Replay + KD",
        "paper": "avcl-bench example: replay (Rebuffi et al. 2017) + distillation (Li & Hoiem 2016)",
        "tables": [],
        "modalities": ["audio-visual"],
        "description": "Exemplar replay merged into the new data plus KD of the previous model's old logits.",
        "defaults": {"strategy": {"T": 2.0,  # Li & Hoiem Sec. 3: T = 2
                                  "lambda_kd": 1.0}},  # Li & Hoiem Sec. 3: lambda_o = 1
        "benchmarks": {"synth-av": {"train": {"epochs": 10, "batch_size": 32, "lr": 1.0e-3},
                                    "model": {"dim": 64, "encoder_width": 16, "fusion_depth": 1, "heads": 4}}},
    }
    checkpoint_attrs = ("memory",)  # the previous model is re-copied at the next experience

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.memory = ExemplarMemory.from_config(self.cfg)  # None when the protocol keeps no exemplars
        self.old_model = None

    def train_dataset_adaptation(self, **kwargs):
        data = self.experience.dataset
        if self.memory is not None and len(self.memory):
            data = concat_datasets([data, self.memory.dataset()])
        self.adapted_dataset = data.train()

    def _before_training_exp(self, **kwargs):
        if self.experience.current_experience > 0:
            self.old_model = self.frozen_copy()  # before the classifier grows
        super()._before_training_exp(**kwargs)

    def criterion(self):
        loss = super().criterion()  # cross-entropy over every seen class
        if self.old_model is None or self.num_old == 0:
            return loss
        with torch.no_grad(), self.autocast():
            old = self.old_model(self.mb_x)[:, : self.num_old]
        return loss + float(self.scfg["lambda_kd"]) * kd_loss(self.mb_output[:, : self.num_old], old,
                                                             float(self.scfg["T"]))

    def _after_training_exp(self, **kwargs):
        super()._after_training_exp(**kwargs)
        if self.memory is not None:
            self.memory.update(self.experience.dataset, self.num_seen)
