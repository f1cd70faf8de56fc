"""AFC (Kang, Park, Han, "Class-Incremental Learning by Knowledge Distillation with Adaptive Feature
Consolidation", CVPR 2022) as the AV-CIL release runs it as a baseline.

Specification: ``shared/spec/av-cil.md`` (baseline table; release ``AFC/train_incremental_afc.py``,
``model/layers.py``); independent implementation on :class:`avcl_bench.models.avcil.AVCILNet`.

- **Classifier** — :class:`LSCClassifier`, PODNet's local similarity classifier (Douillard et al.
  2020, Sec. 3.2): K = 10 proxies per class; a class's similarity is the softmax-weighted sum of
  its proxies' similarities ``-||x_hat - w_hat||^2``. Proxies of earlier steps are frozen (release:
  their parameter group has lr 0); a fresh learnable scale per step (release: ``factor = 1``).
- **Loss** — :func:`nca_loss` in the release's form (``AFC/train_incremental_afc.py`` ``nca()``,
  PODNet's release ``nca()``: margin 0.6 on every similarity, where it cancels; the target's slot
  of the denominator exp(0) after the max shift; bounded below by 0) over all seen classes, on the
  new data with the exemplars merged into it, plus from step 1 on
  ``lam_disc * sqrt(step + 1) * L_disc`` (release: ``lam_disc = 0.5``, ``lam_t = (step+1)**0.5``).
- **Importance-weighted feature distillation** — :func:`feature_distillation` on the
  L2-normalised features the release distils (audio-visual: audio feature ``f_a``, visual feature
  ``f_v`` and the pooled visual feature ``v``; one modality: its feature), weighted by the
  importance of each channel for the previous model (:func:`channel_importance`): the gradient of
  the previous model's NCA loss w.r.t. each channel (AFC Sec. 3: the loss increase of the old tasks
  is bounded by importance x feature discrepancy).
- **Weight imprinting** — new proxies = k-means centres (:func:`kmeans`) of the new classes'
  normalised features, scaled by the mean norm of the old proxies (release ``imprint_weights``).
- **Memory** — herding (iCaRL) on normalised features, a fixed total over the seen classes,
  exemplars merged into the training data (release ``gen_step_exemplar_set``).
- **Variants** — ``strategy.classifier: nme`` (nearest mean of exemplars over normalised features,
  the release's default) or ``lsc`` (the proxy classifier's scores).

Deviations (also in ``strategies/afc.yaml``): the release weighs three feature groups per sample
by their gradient norms on each batch, taking the gradient through a copy of the grown model
(random new proxies included); here the importance is per channel (AFC's formulation), computed
once per step with the previous model on its own classes over the exemplar memory, and the group
weights are its per-group norms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.avcil import AVCILNet
from . import register
from .base import AVCLStrategy, PreviousModel, frozen_copy, to_device
from .losses import nca_loss, proxy_attention_pool
from .memory import ClassMeans, ExemplarMemory

# ----------------------------------------------------------------------------- classifier


class LSCClassifier(nn.Module):
    """PODNet's local similarity classifier with K proxies per class (AFC's LSC).

    ``old_weight`` (frozen) holds the proxies of earlier steps, ``new_weight`` those of the current
    step; :meth:`grow` freezes every current proxy and adds K fresh ones per new class, and resets
    the learnable ``scale`` used by the NCA loss (the release builds a new classifier with
    ``factor = 1`` at every step).
    """

    def __init__(self, in_features: int, proxies_per_class: int = 10):
        super().__init__()
        self.in_features = in_features
        self.K = int(proxies_per_class)
        self.old_weight = nn.Parameter(torch.empty(0, in_features), requires_grad=False)
        self.new_weight = nn.Parameter(torch.empty(0, in_features))
        self.scale = nn.Parameter(torch.tensor(1.0))

    @property
    def num_classes(self) -> int:
        return (self.old_weight.shape[0] + self.new_weight.shape[0]) // self.K

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.old_weight, self.new_weight])

    @torch.no_grad()
    def grow(self, num_classes: int) -> bool:
        cur = self.num_classes
        if num_classes <= cur:
            return False
        dev = self.new_weight.device
        self.old_weight = nn.Parameter(self.weight.detach().clone(), requires_grad=False)
        fresh = torch.empty((num_classes - cur) * self.K, self.in_features, device=dev)
        nn.init.kaiming_normal_(fresh, nonlinearity="linear")  # release LSCLinear init
        self.new_weight = nn.Parameter(fresh)
        self.scale = nn.Parameter(torch.tensor(1.0, device=dev))
        return True

    def proxy_similarities(self, x: torch.Tensor) -> torch.Tensor:
        """-||x_hat - w_hat||^2 = 2 cos - 2 for every proxy: (B, C*K)."""
        xn = F.normalize(x.float(), dim=-1)
        wn = F.normalize(self.weight.float(), dim=-1)
        return 2.0 * xn @ wn.t() - 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return proxy_attention_pool(self.proxy_similarities(x).view(x.shape[0], -1, self.K))  # PODNet Eq. 7


# ----------------------------------------------------------------------------- loss terms


#: The features AFC distils per modality (release ``AFC_train_out``): audio-visual the pooled visual
#: feature ``v``, the audio feature ``f_a`` and the visual feature ``f_v``; one modality its feature.
GROUPS = {"audio-visual": ("v", "f_a", "f_v"), "audio": ("f_a",), "visual": ("f_v",)}


def feature_groups(out: dict, modality: str) -> dict:
    """{group: feature} of a ``forward_all`` output (see :data:`GROUPS`)."""
    return {n: out[n] for n in GROUPS[modality]}


def feature_gradients(model: AVCILNet, x, y: torch.Tensor, num_classes: int, margin: float = 0.6) -> dict:
    """Per-sample gradients of ``model``'s NCA loss (summed over the batch, over its first
    ``num_classes`` classes) w.r.t. each distilled feature group: {group: (B, C)}."""
    with torch.no_grad():
        a, V = model.encode(x)
        v = None
        if model.modality == "audio-visual":
            v = model.pool(V, *model.attention(a, V))
        elif model.modality == "visual":
            v = V.mean(dim=(1, 2))
        f_a = F.relu(model.audio_proj(a)) if a is not None else None
    with torch.enable_grad():
        leaves = {}
        if f_a is not None:
            f_a = leaves["f_a"] = f_a.detach().float().requires_grad_(True)
        if v is not None:
            v = leaves["v"] = v.detach().float().requires_grad_(True)
        f_v, fused = model.head(f_a, v)
        if f_v is not None:
            leaves["f_v"] = f_v
        sims = model.classifier(fused)[:, :num_classes]
        loss = nca_loss(sims, y, model.classifier.scale.detach(), margin, reduction="sum")  # release nca()
        names = GROUPS[model.modality]
        grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(leaves[n])).detach() for n, g in zip(names, grads)}


def channel_importance(grads: dict) -> dict:
    """Importance of every channel of every group: the root mean square over samples of the
    gradient of the previous model's loss w.r.t. that channel, {group: (C,)} (AFC Sec. 3)."""
    return {n: g.float().pow(2).mean(0).sqrt() for n, g in grads.items()}


def sample_importance_weights(grads: dict) -> dict:
    """The AV-CIL release's per-sample group weights (AFC/train_incremental_afc.py l.334-353):
    ``I_g(x) = ||dL/df_g(x)||``, ``w_g(x) = I_g(x) / sum_h I_h(x)``; {group: ((B,), None)}. One group
    (audio or visual only): weight 1, the release's unweighted distance (l.355-356)."""
    if len(grads) == 1:
        (n, g), = grads.items()
        return {n: (torch.ones(g.shape[0], device=g.device), None)}
    norms = {n: g.float().norm(dim=1) for n, g in grads.items()}
    total = sum(norms.values()).clamp_min(1e-12)
    return {n: (v / total, None) for n, v in norms.items()}


def importance_weights(importance: dict | None, dims: dict) -> dict:
    """{group: (w_g, c_g)}: group weights ``w_g = ||I_g|| / sum_h ||I_h||`` (sum 1, as the release
    normalises its group importances) and channel weights ``c_g = I_g^2 / mean(I_g^2)`` (mean 1, so
    uniform importance gives the plain distance). Uniform when ``importance`` is None or zero."""
    G = len(dims)
    if importance is None or not any(float(i.abs().sum()) > 0 for i in importance.values()):
        return {n: (1.0 / G, None) for n in dims}
    norms = {n: float(importance[n].norm()) for n in dims}
    total = sum(norms.values())
    out = {}
    for n in dims:
        sq = importance[n].float().pow(2)
        c = sq / sq.mean() if float(sq.mean()) > 0 else None
        out[n] = (norms[n] / total, c)
    return out


def feature_distillation(new: dict, old: dict, weights: dict, eps: float = 1e-12) -> torch.Tensor:
    """Importance-weighted feature distillation (AFC's discrepancy loss, as the release on
    normalised features):

        L_disc = mean_x sum_g w_g * sqrt( sum_k c_{g,k} (f_hat_{g,k}(x) - f_hat'_{g,k}(x))^2 )

    with ``f_hat`` / ``f_hat'`` the L2-normalised features of the current / previous model and
    ``(w_g, c_g)`` from :func:`importance_weights` (``c_g = None``: all ones). ``eps`` keeps the
    gradient finite where the features still agree.
    """
    total = None
    for n, (w, c) in weights.items():
        d = F.normalize(new[n].float(), dim=1) - F.normalize(old[n].float().detach(), dim=1)
        sq = d.pow(2) if c is None else d.pow(2) * c.to(d.device)
        term = (w * torch.sqrt(sq.sum(1) + eps)).mean()  # w: a number, or one per sample
        total = term if total is None else total + term
    return total


def kmeans(x: torch.Tensor, k: int, iters: int = 100, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding (deterministic from ``seed``): (k, D) centres.
    With fewer than k points the points are repeated."""
    x = x.float()
    n = x.shape[0]
    if n <= k:
        return x[torch.arange(k) % n].clone()
    g = torch.Generator().manual_seed(int(seed))
    centres = [x[torch.randint(n, (1,), generator=g)].squeeze(0)]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).pow(2).min(1).values
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full((n,), 1.0 / n)
        centres.append(x[torch.multinomial(probs, 1, generator=g)].squeeze(0))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        new = c.clone()
        for j in range(k):
            members = x[assign == j]
            if len(members):
                new[j] = members.mean(0)
        if torch.allclose(new, c):
            break
        c = new
    return c


# ----------------------------------------------------------------------------- strategy


@register("afc")
class AFC(AVCLStrategy):
    """AFC with the LSC proxy classifier, NME or LSC prediction (``strategy.classifier``)."""

    #: the release's network with the LSC proxy classifier, always; the release's drop_last=True
    #: is train.drop_last, set in strategies/afc.yaml
    networks = ("avcil",)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        nme = self.scfg["classifier"] == "nme"  # NME cannot predict without exemplars
        # herding and class means on the normalised fused features; release: means not renormalised
        self.memory = self.add_part(
            "memory",
            ExemplarMemory.from_config(
                self.cfg, "selection", required_by=self.name if nme else None, feature_fn=self.normalised_features
            ),
        )
        self.class_means = self.add_part(
            "class_means",
            None
            if self.memory is None
            else ClassMeans(self.memory, features=self.normalised_features, renormalise=False),
        )
        self.previous = self.add_part("previous", PreviousModel())
        #: channel importance of the previous model, computed when a step starts
        self.importance = None
        #: strategy.importance release: the grown model as the step starts, random new proxies
        #: included, before imprinting (the release's old_model)
        self.grown_copy = None

    @classmethod
    def build_model(cls, cfg: dict):
        k = cfg["strategy"]["proxies_per_class"]
        return AVCILNet(
            cfg, feature_encoder=cfg["strategy"]["feature_encoder"], classifier=lambda d: LSCClassifier(d, k)
        )

    # ---- start of a step: importance (previous model, memory) and weight imprinting ----------
    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)  # grows the classifier (old proxies frozen)
        if self.task_id > 0:
            if self.scfg["importance"] == "release":
                self.grown_copy = frozen_copy(self.model)  # release train_incremental_afc.py l.257/272, before l.275
            else:
                self.importance = self.compute_importance()
            self.imprint()

    @torch.no_grad()
    def features(self, dataset, model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised fused features, labels) of a dataset, eval mode."""
        model = self.model if model is None else model
        was = model.training
        model.eval()
        feats, labels = [], []
        for batch in self._loader(dataset):
            with self.autocast():
                f = model.forward_all(to_device(batch[0], self.device))["fused"].float()
            feats.append(F.normalize(f, dim=1).cpu())
            labels.append(batch[1])
        model.train(was)
        return torch.cat(feats), torch.cat(labels)

    def normalised_features(self, dataset) -> torch.Tensor:
        return self.features(dataset)[0]

    def compute_importance(self) -> dict | None:
        """Channel importance of the previous model over the exemplar memory (old classes)."""
        mem = self.memory.dataset() if self.memory is not None else None
        if self.previous.model is None or mem is None or not len(mem):
            return None
        s = self.scfg
        sq = None
        n = 0
        for batch in self._loader(mem):
            x, y = to_device(batch[0], self.device), batch[1].to(self.device)
            grads = feature_gradients(self.previous.model, x, y, self.num_old, s["nca_margin"])
            part = {k: g.pow(2).sum(0) for k, g in grads.items()}
            sq = part if sq is None else {k: sq[k] + part[k] for k in sq}
            n += y.numel()
        return {k: (v / max(1, n)).sqrt() for k, v in sq.items()}  # = channel_importance over the memory

    @torch.no_grad()
    def imprint(self) -> None:
        """New proxies = k-means centres of each new class's normalised features x the mean norm of
        the old proxies (release ``imprint_weights``, K clusters per class)."""
        clf = self.model.classifier
        feats, labels = self.features(self.experience.dataset)
        norm = clf.old_weight.norm(dim=1).mean() if clf.old_weight.shape[0] else torch.tensor(1.0)
        rows = []
        for c in range(self.num_old, self.num_seen):
            centres = kmeans(feats[labels == c], clf.K, seed=self.cfg["seed"] * 1000 + c)
            rows.append(centres * norm.cpu())
        clf.new_weight.data.copy_(torch.cat(rows).to(clf.new_weight.device))

    # ---- forward and loss ------------------------------------------------------------------
    def forward(self):
        with self.autocast():
            self._out = self.model.forward_all(self.mb_x)
        return self._out["logits"]

    def loss_terms(self, out: dict, old: dict | None, y: torch.Tensor) -> dict:
        s = self.scfg
        sims = out["logits"][:, : self.num_seen]
        # AV-CIL release AFC/train_incremental_afc.py nca(): bounded, >= 0 (losses.nca_loss "release")
        terms = {"nca": nca_loss(sims, y, self.model.classifier.scale, s["nca_margin"])}
        if old is not None:
            groups = feature_groups(out, self.model.modality)
            if self.scfg["importance"] == "release":
                grads = feature_gradients(self.grown_copy, self.mb_x, y, self.num_seen, s["nca_margin"])
                weights = sample_importance_weights(grads)
            else:
                weights = importance_weights(self.importance, groups)
            lam_t = math.sqrt(self.task_id + 1)  # release: lam_t = (step + 1) ** 0.5
            terms["disc"] = (
                s["lam_disc"] * lam_t * feature_distillation(groups, feature_groups(old, self.model.modality), weights)
            )
        return terms

    def criterion(self):
        old = None
        if self.previous.model is not None and self.num_old > 0:
            with torch.no_grad(), self.autocast():
                old = self.previous.model.forward_all(self.mb_x)  # = grown_copy's features (same backbone)
        terms = self.loss_terms(self._out, old, self.mb_y)
        return sum(terms.values())

    # ---- prediction: NME or LSC -----------------------------------------------------------------
    def predict(self, x) -> dict:
        if self.scfg["classifier"] == "lsc" or self.class_means is None or self.class_means.means is None:
            return super().predict(x)
        with self.autocast():
            f = F.normalize(self.model.forward_all(x)["fused"].float(), dim=1)
        means = self.class_means.means[: self.num_seen].to(f.device)
        return {self.modality: -torch.cdist(f, means)}  # nearest mean of exemplars

    @torch.no_grad()
    def _after_training_epoch(self, **kwargs):
        if self.scfg["classifier"] == "nme" and self.cfg["train"]["select_best_on_val"] and self.val_experiences:
            # the release's NME validation after every epoch (AFC/train_incremental_afc.py)
            self.class_means.means = self.class_means.compute_with_current_classes(self)
        super()._after_training_epoch(**kwargs)

    def load_checkpoint_state(self, state: dict, train_experiences) -> None:
        # proxies of earlier steps are a separate (frozen) tensor: regrow in two stages
        self.model.grow(state["num_old"])
        super().load_checkpoint_state(state, train_experiences)
