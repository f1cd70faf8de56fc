"""BiC: Large Scale Incremental Learning with bias correction (Wu et al., CVPR 2019), audio-visual.

Per experience t (Fig. 2 of the paper):

1. Split (Sec. 3, 6.1). The exemplar budget of each class (the run's memory protocol:
   ``memory.per_class`` or ``memory.total`` over the seen classes) is divided into training
   exemplars and validation exemplars at ``1 - val_fraction : val_fraction`` (paper 9:1). At step
   t the same number of clips of every new class is held out of the new data. Validation
   exemplars of old classes + the held-out new clips form the balanced validation set; they are
   never trained on in stage 1. The held-out new clips become the new classes' validation
   exemplars, the training exemplars are chosen from the rest.
2. Stage 1 (Eq. 1-3): train on new data + training exemplars with
   ``L = lambda * L_d + (1 - lambda) * L_c``, ``lambda = n / (n + m)`` (n old, m new classes),
   ``L_d = sum_k -pi_hat_k(T) log pi_k(T)`` over the old classes' logits with T = 2 (old model's
   bias-corrected outputs as targets), ``L_c`` = cross-entropy over every seen class.
3. Stage 2 (Eq. 4-5): with the network frozen, a bias-correction layer ``q = alpha * o + beta``
   on the logits of the current experience's classes only is trained with cross-entropy over all
   seen classes on the validation set. Old-class logits are never changed by it.

Each experience keeps its own (alpha, beta) (identity for the first experience, which has no
stage 2); earlier layers stay frozen and are applied to their classes' logits in training,
distillation targets and prediction, as in the original implementation. Stage 2 runs on the
logits of the validation set computed once (the network is frozen), ``bias_epochs`` passes with
SGD (momentum 0.9, as the authors' code). Avalanche's BiC cannot take our datasets or the current
torch (see the Avalanche spec notes); this is a separate implementation on the audio-visual base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.benchmarks.utils import concat_datasets
from torch import nn

from . import register
from .base import AVCLStrategy, PreviousModel
from .memory import ExemplarMemory


class BiasLayers(nn.Module):
    """One (alpha, beta) pair per experience, applied to that experience's logit slice."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.ParameterList()
        self.beta = nn.ParameterList()
        self.slices: list[tuple[int, int]] = []

    def get_extra_state(self) -> dict:
        return {"slices": [list(sl) for sl in self.slices]}

    def set_extra_state(self, state: dict) -> None:
        """Grow to the saved number of layers (torch restores this before the parameter lists)."""
        for start, stop in state["slices"][len(self.slices) :]:
            self.add(start, stop)

    def add(self, start: int, stop: int) -> None:
        self.alpha.append(nn.Parameter(torch.ones(1), requires_grad=False))
        self.beta.append(nn.Parameter(torch.zeros(1), requires_grad=False))
        self.slices.append((start, stop))

    def forward(self, logits: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Bias-corrected logits: layer i rescales only the columns of experience i (< ``upto``)."""
        out = logits.float()
        cols = []
        pos = 0
        n = len(self.slices) if upto is None else upto
        for i in range(n):
            start, stop = self.slices[i]
            if start >= out.shape[1]:
                break
            stop = min(stop, out.shape[1])
            cols.append(out[:, pos:start])
            cols.append(self.alpha[i] * out[:, start:stop] + self.beta[i])
            pos = stop
        cols.append(out[:, pos:])
        return torch.cat(cols, 1)


def bic_distillation(logits_old_part: torch.Tensor, old_targets: torch.Tensor, T: float) -> torch.Tensor:
    """BiC Eq. 1: sum_k -softmax(o_hat / T)_k * log softmax(o / T)_k, averaged over the batch."""
    p_old = F.softmax(old_targets.float() / T, dim=1)
    return -(p_old * F.log_softmax(logits_old_part.float() / T, dim=1)).sum(1).mean()


@dataclass(frozen=True)
class BiasStage:
    """How stage 2 trains a bias layer: SGD with momentum (the authors' code), an optional L2 on
    beta, ``epochs`` shuffled passes of ``batch_size`` (BiC Sec. 4)."""

    epochs: int
    lr: float
    batch_size: int
    momentum: float = 0.9
    beta_l2: float = 0.0


def fit_bias_layer(
    layers: BiasLayers, index: int, logits: torch.Tensor, y: torch.Tensor, stage: BiasStage, seed: int = 0
) -> list[float]:
    """Stage 2: train (alpha, beta) of ``layers[index]`` on fixed logits (n, C) with CE over all
    classes; the other layers stay frozen. Returns the mean loss of each epoch."""
    alpha, beta = layers.alpha[index], layers.beta[index]
    start, stop = layers.slices[index]
    logits = logits.detach().float()
    y = y.to(logits.device)
    n = logits.shape[0]
    with torch.no_grad():  # the frozen layers' output, computed once; only the slice is trained
        fixed = layers(logits)
    z = logits[:, start:stop]
    before, after = fixed[:, :start], fixed[:, stop:]
    alpha.requires_grad_(True)
    beta.requires_grad_(True)
    opt = torch.optim.SGD([alpha, beta], lr=stage.lr, momentum=stage.momentum)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a two-parameter problem on small tensors: threads only add overhead
    try:
        for _ in range(int(stage.epochs)):
            total = 0.0
            for idx in torch.randperm(n, generator=gen).split(int(stage.batch_size)):
                idx = idx.to(logits.device)
                q = torch.cat([before[idx], alpha * z[idx] + beta, after[idx]], 1)
                loss = F.cross_entropy(q, y[idx])
                if stage.beta_l2:
                    loss = loss + stage.beta_l2 * beta.pow(2).sum() / 2
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / max(1, n))
    finally:
        torch.set_num_threads(threads)
        alpha.requires_grad_(False)
        beta.requires_grad_(False)
    return losses


class TrainingExemplars(ExemplarMemory):
    """The exemplar memory of BiC: the training part of each class's budget (budget minus its
    validation share ``val_count(budget)``) is replayed, the validation exemplars (``val_store``:
    class -> (dataset, rows)) are kept beside it and never trained on.

    ``len()`` counts the whole budget in use, training + validation exemplars, which is what a run
    reports as its buffer size."""

    def __init__(self, *args, val_count, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_count = val_count
        self.val_store: dict[int, tuple[object, list[int]]] = {}

    def budget(self, num_seen_classes: int) -> int:
        """A class's whole exemplar budget under the run's protocol."""
        return super().quota(num_seen_classes)

    def quota(self, num_seen_classes: int) -> int:
        q = self.budget(num_seen_classes)
        return max(0, q - self.val_count(q))

    def __len__(self) -> int:
        return self.replay_len() + sum(len(rows) for _, rows in self.val_store.values())

    def state_dict(self) -> dict:
        return {**super().state_dict(), "val_rows": {c: list(r) for c, (_, r) in self.val_store.items()}}

    def load_state_dict(self, state: dict, strategy, train_experiences) -> None:
        super().load_state_dict(state, strategy, train_experiences)
        self.val_store.clear()
        self.val_store.update(
            {
                int(c): (strategy.dataset_of_class(train_experiences, int(c)), list(r))
                for c, r in state["val_rows"].items()
            }
        )


@register("bic")
class BiC(AVCLStrategy):
    #: saved in run checkpoints besides the model and the parts (exemplar memory, previous model)
    checkpoint_attrs = ("stage2_losses", "bias", "_rng")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # the training exemplars keep the budget minus ceil(val_fraction * budget) per class
        self.memory = self.add_part(
            "memory",
            TrainingExemplars.from_config(self.cfg, "selection", required_by=self.name, val_count=self.val_count),
        )
        self.previous = self.add_part("previous", PreviousModel())
        self.bias = BiasLayers().to(self.device)
        self._heldout: dict[int, list[int]] = {}
        self._train_rows: list[int] | None = None
        self._rng = np.random.RandomState(self.cfg["seed"] + 1)
        self.stage2_losses: list[list[float]] = []

    @property
    def val_store(self) -> dict:
        """class -> (dataset, rows) of the validation exemplars."""
        return self.memory.val_store

    def val_count(self, budget: int) -> int:
        """Validation exemplars of a class out of its budget (paper: 1 in 10, at least 1)."""
        if budget <= 1:
            return 0
        return min(budget - 1, max(1, math.ceil(self.scfg["val_fraction"] * budget)))

    # ---- data: split of the new experience -----------------------------------------------------
    def _before_training_exp(self, **kwargs):
        exp = self.experience
        classes = exp.classes_in_this_experience
        n_val = self.val_count(self.memory.budget(max(classes) + 1))
        targets = np.asarray(list(exp.dataset.targets))
        self._heldout = {}
        train_rows = []
        for c in sorted(set(targets.tolist())):
            rows = np.flatnonzero(targets == c)
            k = min(n_val, len(rows) - 1)
            picked = self._rng.permutation(rows)[:k].tolist() if k > 0 else []
            self._heldout[c] = picked
            keep = set(picked)
            train_rows += [int(r) for r in rows if r not in keep]
        self._train_rows = sorted(train_rows)
        self.bias.add(min(classes), max(classes) + 1)
        self.bias.to(self.device)
        super()._before_training_exp(**kwargs)

    def new_training_data(self):
        return self.experience.dataset.subset(self._train_rows)

    # ---- stage 1 --------------------------------------------------------------------------------
    def forward(self):
        return self.bias(super().forward())

    def criterion(self):
        logits = self.mb_output[:, : self.num_seen].float()
        loss_c = F.cross_entropy(logits, self.mb_y)
        if self.previous.model is None or self.num_old == 0:
            return loss_c
        with torch.no_grad(), self.autocast():
            old = self.previous.model(self.mb_x)
        old = self.bias(old[:, : self.num_old].float(), upto=self.task_id)
        loss_d = bic_distillation(logits[:, : self.num_old], old, self.scfg["T"])
        lam = self.scfg["lambda"]
        lam = self.num_old / self.num_seen if lam is None else float(lam)
        return lam * loss_d + (1.0 - lam) * loss_c

    # ---- stage 2 and memory ---------------------------------------------------------------------
    def validation_dataset(self):
        """Validation exemplars of the old classes + the held-out clips of the new classes."""
        parts = []
        n_val = self.val_count(self.memory.budget(self.num_seen))
        for c in sorted(c for c in self.val_store if c < self.num_old):
            ds, rows = self.val_store[c]
            if rows[:n_val]:
                parts.append(ds.subset(rows[:n_val]))
        for rows in self._heldout.values():
            if rows:
                parts.append(self.experience.dataset.subset(rows))
        if not parts:
            return None
        return concat_datasets(parts) if len(parts) > 1 else parts[0]

    def _after_training_exp(self, **kwargs):
        # best-on-val weights restored; the memory took the training exemplars of the new classes
        # from the data trained on (``new_training_data``) and cut the old classes to the quota
        super()._after_training_exp(**kwargs)
        if self.task_id > 0:
            val = self.validation_dataset()
            if val is not None:
                logits, y = self.dataset_logits(val)
                s = self.scfg
                losses = fit_bias_layer(
                    self.bias,
                    self.task_id,
                    logits.to(self.device),
                    y.to(self.device),
                    BiasStage(s["bias_epochs"], s["bias_lr"], self.cfg["train"]["batch_size"], beta_l2=s["beta_l2"]),
                    seed=self.cfg["seed"] + self.task_id,
                )
                self.stage2_losses.append(losses)
        # the memory's rows of the new classes index the trained-on subset: re-linked to the
        # experience's dataset; the held-out clips become the new classes' validation exemplars
        full = self.experience.dataset
        for c in self._heldout:
            ds, rows = self.memory.store[c]
            self.memory.store[c] = (full, [self._train_rows[r] for r in rows])
        for c, rows in self._heldout.items():
            self.val_store[c] = (full, list(rows))
        n_val = self.val_count(self.memory.budget(self.num_seen))
        for c, (ds, rows) in list(self.val_store.items()):
            self.val_store[c] = (ds, rows[:n_val])

    def predict(self, x) -> dict:
        with self.autocast():
            out = self.model(x)
        return {self.modality: self.bias(out[:, : self.num_seen].float())}
