"""EWC: Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017), audio-visual, in the form of
the FACIL survey's implementation (Masana et al., TPAMI 2022; mmasana/FACIL src/approach/ewc.py),
where the default lambda = 5000 comes from.

After each experience the diagonal of the Fisher information is estimated on that experience's
training data, and every later experience adds the quadratic penalty of Kirkpatrick et al. Eq. 3,

    L(theta) = L_CE(theta) + (lambda / 2) * sum_i F_i * (theta_i - theta*_i)^2.

The defaults are FACIL's (``ewc.py`` line numbers of commit e09d2c8):

- **Fisher** (``strategy.fisher_form: batch``, ``compute_fisher_matrix_diag`` l.65-98): per
  minibatch, the squared gradient of the batch-MEAN cross-entropy, multiplied by the batch size and
  averaged over the samples. A batch-mean gradient averages per-sample gradients before squaring,
  so this Fisher is smaller than the per-sample one by up to the batch size; lambda = 5000 is sized
  for it. ``sample`` is the per-sample Fisher of Kirkpatrick et al. (mean of squared per-sample
  gradients).
- **Target** (``strategy.fisher_target``): ``max_pred`` = the model's arg-max prediction (FACIL's
  default ``fi_sampling_type``), ``sampled`` = drawn from the predictive distribution (the paper's
  Fisher), ``label`` = the ground truth (the empirical Fisher).
- **Merging** (``strategy.mode``): ``merged`` (FACIL ``post_train_process`` l.117-132) keeps one
  Fisher, F <- alpha * F + (1 - alpha) * F_t starting from F = 0, anchored at the parameters after
  the latest experience; ``separate`` keeps one (Fisher, anchor) pair per experience (the paper's
  "separate penalty for each previous task"); ``online`` is Schwarz et al. 2018's
  F <- gamma * F + F_t with one anchor.
- **Heads** (``strategy.old_heads``): ``frozen`` (FACIL without exemplars) leaves the classifier out
  of the Fisher and the penalty (l.26-32, l.67, l.140) and trains the cross-entropy over the current
  experience's classes only (l.147), so the old classes' rows get no gradient (FACIL also keeps
  them out of the optimizer, l.56-63; here they stay in it with zero gradient, which is the same
  without weight decay); ``penalised`` puts every parameter in the Fisher (an old experience's
  penalty covering the classifier rows that existed then) and trains the cross-entropy over every
  seen class.

The Fisher is computed in eval mode (FACIL: train mode; see the YAML's deviations). Avalanche's
own EWC moves ``mb_x`` with ``.to`` and cannot take our multimodal minibatches; this is a separate
implementation on the audio-visual base.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import AVCLStrategy, to_device

#: parameter-name prefix of the classifier ("the heads" FACIL keeps out of the Fisher)
HEAD_PREFIX = "classifier."


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


def merge_fisher(old: dict, new: dict, w_old: float, w_new: float) -> dict:
    """w_old * old + w_new * new per parameter; a grown parameter's old Fisher covers its leading
    rows (FACIL ewc.py l.132 with w = (alpha, 1 - alpha); online EWC with (gamma, 1))."""
    merged = {}
    for n, f in new.items():
        f = w_new * f
        prev = old.get(n)
        if prev is not None:
            f[: prev.shape[0]] += w_old * prev
        merged[n] = f
    return merged


def fisher_targets(logp: torch.Tensor, y: torch.Tensor, how: str, generator: torch.Generator) -> torch.Tensor:
    """The classes whose log-likelihood gradient enters the Fisher: the arg-max prediction
    (``max_pred``, FACIL ewc.py l.80-82), a draw from p(.|x) (``sampled``) or the label (``label``)."""
    if how == "max_pred":
        return logp.argmax(1)
    if how == "sampled":
        return torch.multinomial(logp.detach().exp().cpu(), 1, generator=generator).view(-1).to(logp.device)
    return y


@register("ewc")
class EWC(AVCLStrategy):
    """Fine-tuning plus the EWC quadratic penalty towards the parameters of earlier experiences."""

    #: saved in run checkpoints besides the model (``--resume``)
    checkpoint_attrs = ("penalties", "_gen")  # _gen: the labels sampled for the Fisher

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        s = self.scfg
        self.ewc_lambda = s["lambda"]
        #: one (fisher, anchor) pair per earlier experience ("separate"), or one running pair ("merged", "online")
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
        if self.scfg["old_heads"] == "frozen":
            # FACIL ewc.py l.147 (no exemplars): cross-entropy over the current experience's classes only
            out = self.mb_output[:, self.num_old : self.num_seen].float()
            loss = F.cross_entropy(out, self.mb_y - self.num_old)
        else:
            loss = super().criterion()
        if self.penalties and self.ewc_lambda:
            loss = loss + self.ewc_penalty()
        return loss

    # ---- the Fisher ---------------------------------------------------------------------------
    def fisher_parameters(self) -> dict:
        """The parameters the Fisher covers: all trainable ones, without the classifier when the old
        heads are frozen (FACIL ewc.py l.26-32: "we only keep importance weights for the model, but
        not for the heads")."""
        skip_heads = self.scfg["old_heads"] == "frozen"
        return {
            n: p
            for n, p in self.model.named_parameters()
            if p.requires_grad and not (skip_heads and n.startswith(HEAD_PREFIX))
        }

    def compute_fisher(self, dataset) -> dict:
        """Diagonal Fisher per parameter name: the mean over samples of the squared gradient of
        log p(target | x), per sample (``fisher_form: sample``) or of the batch-mean log-likelihood
        times the batch size (``batch``, FACIL ewc.py l.88-97)."""
        s = self.scfg
        params = self.fisher_parameters()
        fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        cap = s["fisher_max_samples"]
        per_sample = s["fisher_form"] == "sample"
        was_training = self.model.training
        self.model.eval()
        count = 0
        batch_size = s["fisher_batch_size"] or self.cfg["train"]["batch_size"]
        for batch in self._loader(dataset.eval(), batch_size=batch_size):
            x, y = to_device(batch[0], self.device), batch[1].to(self.device)
            n = y.shape[0] if cap is None else min(y.shape[0], int(cap) - count)
            if n <= 0:
                break
            x, y = [t[:n] for t in x], y[:n]
            groups = [([t[i : i + 1] for t in x], y[i : i + 1]) for i in range(n)] if per_sample else [(x, y)]
            for xg, yg in groups:
                with self.autocast():
                    logp = F.log_softmax(self.model(xg)[:, : self.num_seen].float(), dim=1)
                target = fisher_targets(logp, yg, s["fisher_target"], self._gen)
                mean_ll = logp.gather(1, target.view(-1, 1)).mean()  # FACIL l.88: the batch-mean loss
                grads = torch.autograd.grad(mean_ll, list(params.values()), allow_unused=True)
                for name, g in zip(params, grads):
                    if g is not None:
                        fisher[name] += g.detach().float().pow(2) * len(yg)  # FACIL l.94: x batch size
            count += n
        self.model.train(was_training)
        return {name: f / max(1, count) for name, f in fisher.items()}  # FACIL l.96-97: mean over samples

    def _after_training_exp(self, **kwargs):
        super()._after_training_exp(**kwargs)  # restores the best-on-val weights when configured
        self.consolidate(self.compute_fisher(self.experience.dataset))

    def consolidate(self, fisher: dict) -> None:
        """Store the experience's Fisher with the current parameters as its anchor."""
        anchor = {n: p.detach().clone().float() for n, p in self.model.named_parameters() if n in fisher}
        mode = self.scfg["mode"]
        if mode == "separate":
            self.penalties.append((fisher, anchor))
            return
        old = self.penalties[0][0] if self.penalties else {}
        if mode == "merged":
            # FACIL ewc.py l.132: F <- alpha * F + (1 - alpha) * F_t, F = 0 before the first experience
            alpha = self.scfg["alpha"]
            merged = merge_fisher(old, fisher, alpha, 1.0 - alpha)
        else:
            # online EWC (Schwarz et al. 2018): F <- gamma * F + F_t
            merged = merge_fisher(old, fisher, self.scfg["gamma"], 1.0)
        self.penalties = [(merged, anchor)]
