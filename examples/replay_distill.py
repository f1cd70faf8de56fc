"""Replay + distillation: a method outside the package, in one file. Exemplars of the old
classes (the run's memory protocol, random selection) are trained with the new data, and the previous
model's old-class logits are distilled into the current model's (LwF's term in Hinton's KD form,
``kd_loss``):  L = CE(all seen logits) + lambda_kd * KD_T(old logits).

    avcl-bench run --strategy examples/replay_distill.py:ReplayDistill --set synth.size=tiny
"""

import torch

from avcl_bench.config import PAPER_DEFAULTS
from avcl_bench.strategies.base import AVCLStrategy, PreviousModel
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
        "params": {
            "T": {"type": "float", "default": 2.0, "exclusive_min": 0, "source": "Li & Hoiem Sec. 3: T = 2"},
            "lambda_kd": {"type": "float", "default": 1.0, "min": 0, "source": "Li & Hoiem Sec. 3: lambda_o = 1"},
        },
        "defaults": PAPER_DEFAULTS,  # the papers' training settings (CIGN Sec. 4.1), as the built-in methods
        "profiles": {  # --profile quick (the embedded benchmark's default): CPU-sized
            "quick": {
                "train": {"epochs": 10, "batch_size": 32, "lr": 1.0e-3},
                "model": {"dim": 64, "encoder_width": 16, "fusion_depth": 1, "heads": 4},
            }
        },
    }

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # parts save and restore their own state on --resume; the memory is merged into the new data
        self.memory = self.add_part("memory", ExemplarMemory.from_config(self.cfg))  # None: no exemplars
        self.previous = self.add_part("previous", PreviousModel())

    def criterion(self):
        loss = super().criterion()  # cross-entropy over every seen class
        if self.previous.model is None or self.num_old == 0:
            return loss
        with torch.no_grad(), self.autocast():
            old = self.previous.model(self.mb_x)[:, : self.num_old]
        return loss + self.scfg["lambda_kd"] * kd_loss(self.mb_output[:, : self.num_old], old, self.scfg["T"])
