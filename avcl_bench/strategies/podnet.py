"""PODNet — Pooled Outputs Distillation for Small-Tasks Incremental Learning (Douillard et al.,
ECCV 2020), audio-visual.

Mechanism (PODNet, method section), on the shared AVNet of the run's modality:

- **POD-spatial**: the outputs h_l of every stage l of the previous and the current
  model are sum-pooled along each of their two spatial axes, the two pooled maps concatenated and
  L2-normalised, and the Euclidean distance between old and new is averaged over the batch and
  over the stages. Activations are squared before pooling (an energy statistic; the transformer
  tokens are signed, so a plain sum could cancel; the PODNet release squares them as well).

  *Mapping to the suite's token layout.* A ResNet stage output is a (C, H, W) map: POD-width
  sums over H -> (C, W), POD-height sums over W -> (C, H). Here the stages are the encoders'
  token output (the input of the fusion transformer) and the output of every fusion block
  (CLS excluded: it becomes the flat embedding), and the channels are the D token features:

  | tokens | axis pooled away | result | analogue of |
  |---|---|---|---|
  | visual (T frames, P positions, D) | positions | (T, D) per-frame profile | POD-width |
  | visual (T, P, D) | frames | (P, D) per-position profile | POD-height |
  | audio (Na tokens, D), a 1 x Na map | the length-1 axis | (Na, D) the tokens | POD-width |
  | audio (Na, D) | tokens | (D) | POD-height |

  Each modality's pooled vector is normalised and compared on its own (so a modality with large
  activations does not hide the other); a stage's loss is the mean over the modalities present.

- **POD-flat**: 1 - cos(h^{t-1}, h^t) between the final embeddings (the CLS feature), the release's
  cosine embedding loss (``inclearn/lib/losses/base.py`` ``embeddings_similarity``); the paper
  writes a Euclidean distance, whose scale on unnormalised embeddings does not fit the release's
  weight ``lambda_flat``.
- **LSC**: a local similarity classifier with K proxies per class; the class score is the
  softmax(over the class's proxies)-weighted proxy similarity y_c = sum_k softmax_k(s_ck) s_ck
  (Eq. 7), with the proxy similarity s_ck of the normalised theta_ck and h given by
  ``strategy.lsc_similarity``: ``neg_stable_cosine_distance`` s = -||h_hat - theta_hat||^2 =
  2 cos - 2, in [-4, 0] (the release's ``classifier_config.distance`` in
  ``options/podnet/podnet_cnn_cifar100.yaml``, computed by ``inclearn/lib/network/classifiers.py``
  ``CosineClassifier.forward`` with ``inclearn/lib/distance.py`` ``stable_cosine_distance``), or
  ``cosine`` s = cos(theta_ck, h) (the paper's <theta, h>). Unset (null) it follows
  ``nca_form``: the release's distance with the release's loss, the cosine with Eq. 8.
- **NCA loss** (:func:`~avcl_bench.strategies.losses.nca_loss`, ``strategy.nca_form``) with a
  learned scale eta: ``release`` (default), the release's ``nca()`` (``inclearn/lib/losses/base.py``,
  ``exclude_pos_denominator`` on, ``hinge_proxynca`` off): z = eta (y - delta) - max eta (y - delta),
  L = -z_y + log(exp(0) + sum_{i != y} exp(z_i)): the margin cancels, the target's slot of the
  denominator is exp(0) after the max shift, so L >= 0, L is the softmax cross-entropy of eta*y
  when the target scores highest and its gradient vanishes as the target pulls ahead;
  ``paper``: Eq. 8, L = [ -log( exp(eta (y_y - delta)) / sum_{i != y} exp(eta y_i) ) ]_+ (the
  positive out of the denominator, the margin on the target, the hinge).
- Total: L_LSC + lambda_c * L_spatial + lambda_f * L_flat, both lambdas scaled by
  sqrt(#seen classes / #new classes) (the adaptive factor PODNet takes from LUCIR).
- New-class proxies imprinted from k-means centroids of the new classes' normalised features
  (``strategy.imprint``); exemplars selected by herding and merged with the new data; memory in
  the run's form (``memory.per_class`` for CIGN protocols, ``memory.total`` for AV-CIL ones).
- Prediction with the LSC (``strategy.classifier: lsc``, PODNet-CNN) or the nearest mean of
  exemplars (``nme``, PODNet-NME; cosine to the L2-normalised exemplar mean).

- Class-balanced fine-tuning of the LSC's proxies on the exemplar memory after every task but the
  first (the release's ``finetuning_config``; :meth:`PODNet.balanced_finetune`), with the LSC
  classifier (PODNet-CNN).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.avnet import GrowingRows
from . import register
from .base import AVCLStrategy, PreviousModel
from .losses import nca_loss, proxy_attention_pool
from .memory import ClassMeans, ExemplarMemory


# ---- POD: pooled outputs distillation -------------------------------------------------------------
def pod_pool(audio: torch.Tensor | None = None, visual: torch.Tensor | None = None, square: bool = True) -> dict:
    """Pooled, flattened maps of one stage: {'audio': (B, (Na+1)*D), 'visual': (B, (T+P)*D)}.

    ``audio`` is (B, Na, D), ``visual`` (B, T, P, D); see the module docstring for the mapping."""
    out = {}
    if visual is not None:
        v = visual.float()
        v = v * v if square else v
        per_frame = v.sum(2)  # (B, T, D): positions pooled away (POD-width analogue)
        per_position = v.sum(1)  # (B, P, D): frames pooled away (POD-height analogue)
        out["visual"] = torch.cat([per_frame.flatten(1), per_position.flatten(1)], 1)
    if audio is not None:
        a = audio.float()
        a = a * a if square else a
        out["audio"] = torch.cat([a.flatten(1), a.sum(1)], 1)
    return out


def pod_spatial_loss(old_stages: list[dict], new_stages: list[dict]) -> torch.Tensor:
    """PODNet POD-spatial: mean over stages (and modalities) of the batch-mean Euclidean distance
    between the L2-normalised pooled maps of the previous and the current model."""
    stage_losses = []
    for old, new in zip(old_stages, new_stages):
        dists = [
            torch.linalg.vector_norm(F.normalize(old[m], dim=1) - F.normalize(new[m], dim=1), dim=1).mean() for m in new
        ]
        stage_losses.append(torch.stack(dists).mean())
    return torch.stack(stage_losses).mean()


def pod_flat_loss(old_feat: torch.Tensor, new_feat: torch.Tensor) -> torch.Tensor:
    """PODNet POD-flat as the release computes it: batch mean of 1 - cos(h^{t-1}, h^t) on the final
    embedding (a cosine embedding loss with target +1, i.e. a distance between the normalised
    embeddings; inclearn/lib/losses/base.py embeddings_similarity, called on the raw features in
    inclearn/models/podnet.py _compute_loss)."""
    return (1.0 - F.cosine_similarity(old_feat.float(), new_feat.float(), dim=1)).mean()  # PODNet release


# ---- LSC: local similarity classifier ---------------------------------------------------------------
#: proxy similarities of :class:`LSCClassifier`
LSC_SIMILARITIES = ("neg_stable_cosine_distance", "cosine")


def lsc_similarity_for(nca_form: str, similarity: str | None = None) -> str:
    """``strategy.lsc_similarity``, or where unset the one that goes with ``nca_form``: the
    release's distance with the release's loss, the paper's cosine with Eq. 8."""
    if similarity is not None:
        return similarity
    return "neg_stable_cosine_distance" if nca_form == "release" else "cosine"


class LSCClassifier(GrowingRows):
    """K proxies per class (rows c*K .. c*K+K-1 of ``weight``) and a learned NCA scale ``eta``.

    ``forward`` returns the class similarities y_c (PODNet's LSC, Eq. 7): in [-4, 0] with
    ``similarity='neg_stable_cosine_distance'`` (the release's), in [-1, 1] with ``'cosine'``; the
    NCA loss applies eta. Grows like ``IncrementalLinear``."""

    def __init__(
        self, in_features: int, proxies: int, eta_init: float = 1.0, similarity: str = "neg_stable_cosine_distance"
    ):
        super().__init__()
        if similarity not in LSC_SIMILARITIES:
            raise ValueError(f"similarity must be one of {LSC_SIMILARITIES}, got {similarity!r}")
        self.similarity = similarity
        self.in_features, self.proxies = in_features, int(proxies)
        self.weight = nn.Parameter(torch.empty(0, in_features))
        self.eta = nn.Parameter(torch.tensor(float(eta_init)))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0] // self.proxies

    def fresh_rows(self, n: int) -> dict:
        fresh = torch.empty(n * self.proxies, self.in_features, device=self.weight.device)
        nn.init.kaiming_normal_(fresh, nonlinearity="linear")
        return {"weight": fresh}

    def proxy_similarities(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, C, K) similarities between features and proxies: cos, or -||h_hat - theta_hat||^2."""
        cos = F.normalize(feat.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()
        if self.similarity == "neg_stable_cosine_distance":
            # PODNet release inclearn/lib/network/classifiers.py CosineClassifier.forward, distance
            # neg_stable_cosine_distance: -||h_hat - theta_hat||^2 = 2 cos - 2 on unit vectors
            cos = 2.0 * cos - 2.0
        return cos.view(feat.shape[0], -1, self.proxies)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return proxy_attention_pool(self.proxy_similarities(feat))  # PODNet Eq. 7


@torch.no_grad()
def spherical_kmeans(feats: torch.Tensor, k: int, iters: int = 10, generator=None) -> torch.Tensor:
    """k unit-norm centroids of L2-normalised features (Lloyd iterations on cosine similarity)."""
    x = F.normalize(feats.float(), dim=1)
    n = x.shape[0]
    idx = torch.randperm(n, generator=generator)[:k] if n >= k else torch.randint(n, (k,), generator=generator)
    cent = x[idx].clone()
    if n < k:  # more proxies than samples: jitter the duplicates apart
        cent += 1e-3 * torch.randn(cent.shape, generator=generator)
    for _ in range(iters):
        assign = (x @ cent.t()).argmax(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                cent[j] = members.mean(0)
        cent = F.normalize(cent, dim=1)
    return cent


# ---- token layout --------------------------------------------------------------------------------
def tokens_and_layout(model, x):
    """The token sequence ``model.tokens(x)`` builds, plus (Na or None, (T, P) or None)."""
    audio, visual = x
    parts, na, tp = [], None, None
    if model.modality in ("audio", "audio-visual"):
        a = model.encoders.encode_audio(audio) + model.type_embed[0]
        na = a.shape[1]
        parts.append(a)
    if model.modality in ("visual", "audio-visual"):
        v = model.encoders.encode_visual(visual)
        tp = (v.shape[1], v.shape[2])
        parts.append(v.flatten(1, 2) + model.type_embed[1])
    return torch.cat(parts, 1), (na, tp)


def split_stage(seq: torch.Tensor, layout):
    """(B, L, D) modality tokens -> (audio (B, Na, D) | None, visual (B, T, P, D) | None)."""
    na, tp = layout
    audio = visual = None
    start = 0
    if na is not None:
        audio, start = seq[:, :na], na
    if tp is not None:
        visual = seq[:, start : start + tp[0] * tp[1]].reshape(seq.shape[0], tp[0], tp[1], seq.shape[-1])
    return audio, visual


def pod_forward(model, x, square: bool = True):
    """-> (final embedding (B, D), pooled stages [encoder tokens, block 1, ..., block L])."""
    seq, layout = tokens_and_layout(model, x)
    feat, blocks = model.forward_features(x, tokens=seq, return_blocks=True)
    stages = [pod_pool(*split_stage(seq, layout), square=square)]
    stages += [pod_pool(*split_stage(h[:, 1:], layout), square=square) for h in blocks]
    return feat, stages


@register("podnet")
class PODNet(AVCLStrategy):
    networks = ("avnet",)  # POD pools the outputs of AVNet's fusion blocks (pod_forward)
    checkpoint_attrs = ("_gen",)  # k-means initialisation of imprinted proxies, balanced fine-tuning order

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        s = self.scfg
        self.memory = self.add_part(
            "memory",
            ExemplarMemory.from_config(
                self.cfg, "exemplar_selection", required_by=self.name if s["classifier"] == "nme" else None
            ),
        )
        # NME: cosine to the L2-normalised exemplar means (C, D)
        self.class_means = self.add_part("class_means", ClassMeans(self.memory) if s["classifier"] == "nme" else None)
        self.previous = self.add_part("previous", PreviousModel())
        self.model.classifier = LSCClassifier(
            self.model.dim, s["proxies_per_class"], s["eta_init"], lsc_similarity_for(s["nca_form"], s["lsc_similarity"])
        )
        self.model.to(self.device)
        self._gen = torch.Generator().manual_seed(self.cfg["seed"])

    # ---- model: LSC growth + imprinting ----------------------------------------------------------
    def check_model_and_optimizer(self, **kwargs):
        self.model = self.model_adaptation()
        if self.scfg["imprint"] and self.task_id > 0:
            self.imprint_new_proxies()
        self.make_optimizer()

    @torch.no_grad()
    def imprint_new_proxies(self) -> None:
        """New classes' K proxies := spherical k-means centroids of their normalised features."""
        clf = self.model.classifier
        ds = self.experience.dataset.eval()
        feats = self.extract_features(ds)
        targets = torch.as_tensor(list(ds.targets))
        K = clf.proxies
        for c in range(self.num_old, self.num_seen):
            rows = feats[targets == c]
            if len(rows):
                cent = spherical_kmeans(rows, K, generator=self._gen)
                clf.weight.data[c * K : (c + 1) * K] = cent.to(clf.weight.device, clf.weight.dtype)

    # ---- training ----------------------------------------------------------------------------------
    def forward(self):
        with self.autocast():
            feat, self._stages = pod_forward(self.model, self.mb_x, self.scfg["pod_square"])
            self._feat = feat
            return self.model.classifier(feat)

    def criterion(self):
        s = self.scfg
        sims = self.mb_output[:, : self.num_seen].float()
        loss = nca_loss(sims, self.mb_y, self.model.classifier.eta, s["nca_margin"], s["nca_form"])
        if self.previous.model is not None and self.num_old > 0:
            with torch.no_grad(), self.autocast():
                old_feat, old_stages = pod_forward(self.previous.model, self.mb_x, s["pod_square"])
            adapt = math.sqrt(self.num_seen / max(1, self.num_seen - self.num_old))
            loss = loss + s["lambda_spatial"] * adapt * pod_spatial_loss(old_stages, self._stages)
            loss = loss + s["lambda_flat"] * adapt * pod_flat_loss(old_feat, self._feat)
        return loss

    def _after_training_exp(self, **kwargs):
        super()._after_training_exp(**kwargs)  # the memory updated (and the NME class means computed)
        if self.memory is not None and self.scfg["classifier"] == "lsc":
            self.balanced_finetune()

    def balanced_finetune(self) -> None:
        """PODNet's class-balanced fine-tuning of the LSC after every task but the first (release
        ``finetuning_config``: sampling ``undersampling`` = the exemplar memory, which holds the
        same number of clips for every seen class once the new classes' exemplars are in; tuning
        ``classifier`` = the proxies only, the learned scale eta kept; SGD, momentum 0.9; the
        NCA loss, the only term with a gradient on the proxies).

        The backbone does not change in this stage, so its features of the memory are computed
        once, in eval mode (the same as the release's train mode for this backbone: no batch
        norm, dropout 0 by default)."""
        s = self.scfg
        epochs = s["balanced_finetune_epochs"]
        if epochs <= 0 or self.task_id == 0 or len(self.memory) == 0:
            return
        ds = self.memory.dataset().eval()
        feats = self.extract_features(ds).to(self.device)
        targets = torch.as_tensor(list(ds.targets), device=self.device)
        clf = self.model.classifier
        opt = torch.optim.SGD(
            [clf.weight], lr=s["balanced_finetune_lr"], momentum=0.9, weight_decay=self.cfg["train"]["weight_decay"]
        )
        eta, margin, bs = clf.eta.detach(), s["nca_margin"], self.cfg["train"]["batch_size"]
        for _ in range(epochs):
            order = torch.randperm(len(targets), generator=self._gen).to(self.device)
            for i in range(0, len(order), bs):
                idx = order[i : i + bs]
                loss = nca_loss(clf(feats[idx])[:, : self.num_seen], targets[idx], eta, margin, s["nca_form"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    # ---- prediction --------------------------------------------------------------------------------
    def predict(self, x) -> dict:
        with self.autocast():
            feat = self.model.forward_features(x)
        if self.class_means is not None and self.class_means.means is not None:
            scores = F.normalize(feat.float(), dim=1) @ self.class_means.means[: self.num_seen].t()
        else:
            scores = self.model.classifier(feat)[:, : self.num_seen]
        return {self.modality: scores.float()}
