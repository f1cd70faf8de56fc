"""EWC: Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017), audio-visual.

After each experience the diagonal of the Fisher information of the model's predictive
distribution is estimated on that experience's training data, and every later experience adds
the quadratic penalty of Kirkpatrick et al. Eq. 3,

    L(theta) = L_CE(theta) + sum_t (lambda / 2) * sum_i F_t,i * (theta_i - theta*_t,i)^2,

to the cross-entropy over the logits of all classes seen so far (no exemplars).

Two forms of the penalty (``strategy.mode``):

- ``separate`` (default, the paper: "a separate penalty for each previous task"): one
  (Fisher, anchor) pair per earlier experience, all kept;
- ``online`` (Schwarz et al. 2018, "online EWC"): one running Fisher
  ``F <- gamma * F + F_t`` anchored at the parameters after the latest experience.

The Fisher diagonal is the mean over samples of the squared per-sample gradient of
``log p(y | x)``; ``y`` is drawn from the model's own prediction (``fisher_target: sampled``, the
Fisher of the paper) or is the ground-truth label (``label``, the "empirical Fisher" of most
class-incremental re-implementations). It is computed in eval mode (BatchNorm running
statistics, no dropout), over every parameter that requires a gradient. The classifier grows:
the penalty of an old experience covers the classifier rows that existed then, new rows are free.
Avalanche's own EWC moves ``mb_x`` with ``.to`` and cannot take our multimodal minibatches; this
is a separate implementation on the audio-visual base.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import AVCLStrategy, to_device


def _overlap(current: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """The part of ``current`` that corresponds to ``stored`` (a grown classifier keeps its old
    rows first, so the stored tensor is a leading slice along dim 0)."""
    if current.shape == stored.shape:
        return current
    if current.shape[1:] != stored.shape[1:] or current.shape[0] < stored.shape[0]:
        raise RuntimeError(f"EWC: parameter shape {tuple(current.shape)} cannot cover stored {tuple(stored.shape)}")
    return current[: stored.shape[0]]


def quadratic_penalty(named_params: dict, fisher: dict, anchor: dict) -> torch.Tensor:
    """sum_i F_i (theta_i - theta*_i)^2 over the parameters named in ``fisher`` (without lambda/2)."""
    total = None
    for name, f in fisher.items():
        p = named_params.get(name)
        if p is None:
            continue
        term = (f * (_overlap(p, f) - anchor[name]).pow(2)).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total


@register("ewc")
class EWC(AVCLStrategy):
    """Fine-tuning plus the EWC quadratic penalty towards the parameters of earlier experiences."""

    #: saved in run checkpoints besides the model (``--resume``)
    checkpoint_attrs = ("penalties", "_gen")  # _gen: the labels sampled for the Fisher

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        s = self.scfg
        self.ewc_lambda = s["lambda"]
        #: one (fisher, anchor) dict pair per earlier experience ("separate"), or a single running pair ("online")
        self.penalties: list[tuple[dict, dict]] = []
        self._gen = torch.Generator().manual_seed(self.cfg["seed"])

    def load_checkpoint_state(self, state: dict, train_experiences) -> None:
        super().load_checkpoint_state(state, train_experiences)
        self.penalties = [
            ({n: t.to(self.device) for n, t in f.items()}, {n: t.to(self.device) for n, t in a.items()})
            for f, a in (self.penalties or [])
        ]

    # ---- the penalty --------------------------------------------------------------------------
    def ewc_penalty(self) -> torch.Tensor:
        """(lambda / 2) * sum over stored (Fisher, anchor) pairs of sum_i F_i (theta_i - theta*_i)^2."""
        params = dict(self.model.named_parameters())
        total = torch.zeros((), device=self.device)
        for fisher, anchor in self.penalties:
            total = total + quadratic_penalty(params, fisher, anchor).to(self.device)
        return 0.5 * self.ewc_lambda * total

    def criterion(self):
        loss = super().criterion()
        if self.penalties and self.ewc_lambda:
            loss = loss + self.ewc_penalty()
        return loss

    # ---- the Fisher ---------------------------------------------------------------------------
    def compute_fisher(self, dataset) -> dict:
        """Diagonal Fisher: mean over samples of (d log p(y|x) / d theta)^2, per parameter name."""
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        cap = self.scfg["fisher_max_samples"]
        was_training = self.model.training
        self.model.eval()
        count = 0
        chunk = self.scfg["fisher_batch_size"]
        for batch in self._loader(dataset.eval(), batch_size=chunk):
            x, y = to_device(batch[0], self.device), batch[1].to(self.device)
            for i in range(y.shape[0]):
                if cap is not None and count >= int(cap):
                    break
                xi = [t[i : i + 1] for t in x]
                with self.autocast():
                    logits = self.model(xi)[:, : self.num_seen].float()
                logp = F.log_softmax(logits, dim=1)
                if self.scfg["fisher_target"] == "sampled":
                    target = int(torch.multinomial(logp.detach().exp().cpu()[0], 1, generator=self._gen))
                else:
                    target = int(y[i])
                grads = torch.autograd.grad(logp[0, target], list(params.values()), allow_unused=True)
                for (n, _), g in zip(params.items(), grads):
                    if g is not None:
                        fisher[n] += g.detach().float().pow(2)
                count += 1
            if cap is not None and count >= int(cap):
                break
        self.model.train(was_training)
        return {n: f / max(1, count) for n, f in fisher.items()}

    def _after_training_exp(self, **kwargs):
        super()._after_training_exp(**kwargs)  # restores the best-on-val weights when configured
        self.consolidate(self.compute_fisher(self.experience.dataset))

    def consolidate(self, fisher: dict) -> None:
        """Store the experience's Fisher with the current parameters as its anchor."""
        anchor = {n: p.detach().clone().float() for n, p in self.model.named_parameters() if n in fisher}
        if self.scfg["mode"] == "online" and self.penalties:
            # online EWC: F <- gamma * F_old + F_new (on the rows the old Fisher covers), one anchor
            gamma = self.scfg["gamma"]
            old_fisher, _ = self.penalties[0]
            merged = {}
            for n, f in fisher.items():
                prev = old_fisher.get(n)
                f = f.clone()
                if prev is not None:
                    f[: prev.shape[0]] += gamma * prev
                merged[n] = f
            self.penalties = [(merged, anchor)]
        else:
            self.penalties.append((fisher, anchor))
