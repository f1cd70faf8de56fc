"""The CIGN network (Mo, Pian, Tian, *Class-Incremental Grouping Network for Continual Audio-Visual
Learning*, ICCV 2023, Sec. 3).

encoders -> modality tokens -> per modality a self-attention transformer over
``[modality tokens; class tokens]`` (CIGN Eq. 1-4) -> grouping of the updated features into one
class-aware embedding per class (CIGN Eq. 5-7) -> a sigmoid FC head per modality (Sec. 3.3).

- Class tokens ``c_i`` (one per class, shared by both modalities as in Eq. 1-2) grow as the
  classes of each task arrive; old tokens are kept (and stay trainable: the class-token
  distillation of Sec. 3.2 is what holds them near their previous values).
- Audio gives ``Na`` tokens (one global max-pooled token from the clip encoder, Sec. 4.1), vision
  ``P = T * h * w`` spatial tokens (the encoders' ``(B, T, P, D)`` flattened).
- ``modalities`` selects the branches that exist: both for the audio-visual model, one for a
  single-modality run (the other input is then never encoded).

The losses live with the strategy (``avcl_bench/strategies/cign.py``); this module is the network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .avnet import Block, GrowingRows, IncrementalLinear
from .encoders import build_encoders

BRANCHES = ("audio", "visual")


def branches_for(modality: str) -> tuple[str, ...]:
    """The CIGN branches a run's modality setting needs."""
    return BRANCHES if modality == "audio-visual" else (modality,)


class ClassTokens(GrowingRows):
    """Learnable class tokens ``c_i in R^D`` (CIGN Sec. 3.2), one per class seen so far.

    Stored as one ``(C, D)`` parameter that :meth:`grow` extends (old rows kept verbatim), so the
    fresh per-experience optimizer of the strategy base picks up the new rows. Initialised
    N(0, 1) (nn.Embedding's default): tokens of unit scale make the softmax over the embedding
    dimension used by the token distillation a non-degenerate distribution (a 0.02-std token
    would give an almost uniform one and a vanishing KL). The scale is ``strategy.token_init_std``;
    the official code starts its tokens at zero. On digits-av (quick profile, 10 exemplars per
    class) the token KL stays ~1e-4 at either scale; std 0.02 helped seed 0 (first task 80 vs 60 %
    audio-visual) but not seed 1, so the default stays 1.
    """

    def __init__(self, dim: int, init_std: float = 1.0):
        super().__init__()
        self.dim = dim
        self.init_std = init_std
        self.weight = nn.Parameter(torch.empty(0, dim))

    def fresh_rows(self, n: int) -> dict:
        return {"weight": torch.randn(n, self.dim, device=self.weight.device) * self.init_std}

    def forward(self) -> torch.Tensor:
        return self.weight


class ModalityTransformer(nn.Module):
    """phi_a / phi_v: self-attention blocks over ``[features; class tokens]`` (CIGN Eq. 1-4).

    Eq. 3-4 write the attention operator as Softmax(x X^T / sqrt(D)) X; it is realised here as the
    usual pre-norm transformer block (multi-head attention with projections + MLP, avnet.Block),
    ``depth`` blocks (Sec. 4.1: 3), and a final LayerNorm.
    """

    def __init__(self, dim: int, depth: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, L, D), tokens (K, D) -> (f^ (B, L, D), c^ (B, K, D))."""
        B, L = feats.shape[:2]
        # CIGN Eq. 1 / Eq. 2: X = [f; c_1 .. c_K]
        x = torch.cat([feats, tokens.unsqueeze(0).expand(B, -1, -1).to(feats.dtype)], 1)
        for blk in self.blocks:
            x = blk(x)  # CIGN Eq. 3 / Eq. 4 (self-attention over all L + K tokens)
        x = self.norm(x)
        return x[:, :L], x[:, L:]


class Grouping(nn.Module):
    """g_a / g_v: class-aware embeddings from updated features and class tokens (CIGN Eq. 5-7).

    ``W_q, W_k, W_v, W_o in R^{DxD}`` (no bias), one set per modality. The similarity of Eq. 6 is
    scaled by 1/sqrt(D) as the attention of Eq. 3 (Eq. 6 prints no scale; unscaled dot products
    of D = 512 vectors saturate the softmax at initialisation).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.scale = 1.0 / math.sqrt(dim)

    def assignment(self, f_hat: torch.Tensor, c_hat: torch.Tensor) -> torch.Tensor:
        """log A (B, L, K): log of the softmax over the K classes of W_q f^ . W_k c^ (CIGN Eq. 6)."""
        sim = torch.einsum("bld,bkd->blk", self.q(f_hat), self.k(c_hat)) * self.scale
        return F.log_softmax(sim.float(), dim=-1)  # CIGN Eq. 6: softmax over the class tokens

    def forward(self, f_hat: torch.Tensor, c_hat: torch.Tensor) -> torch.Tensor:
        """f^ (B, L, D), c^ (B, K, D) -> g (B, K, D)."""
        log_a = self.assignment(f_hat, c_hat)
        # CIGN Eq. 7: sum_p A_pi W_v f^_p / sum_p A_pi = sum_p w_pi W_v f^_p with
        # w_:i = A_:i / sum_p A_pi = softmax over p of log A_:i (exact, and finite even where A_pi
        # underflows). With one audio token (L = 1), w = 1: g_a,i = c^_a,i + W_o W_v f^_a.
        w = torch.softmax(log_a, dim=1).to(f_hat.dtype)  # (B, L, K)
        pooled = torch.einsum("blk,bld->bkd", w, self.v(f_hat))
        return c_hat + self.o(pooled)  # CIGN Eq. 7: g_i = c^_i + W_o (...)


class CIGNNet(nn.Module):
    """Encoders + per-modality transformer + grouping + sigmoid heads, over growing class tokens.

    ``forward(x)`` returns a dict with, for each branch ``m`` in ``self.branches``:
    ``m`` -> logits ``(B, K)`` of the per-class sigmoid predictions p_m,i = sigmoid(logit) and
    ``"g_" + m`` -> class-aware embeddings ``(B, K, D)``, K = number of class tokens.
    """

    def __init__(self, cfg: dict, modality: str | None = None):
        super().__init__()
        m, s = cfg["model"], cfg["strategy"]
        self.modality = modality or cfg["modality"]
        self.branches = branches_for(self.modality)
        self.dim = m["dim"]
        self.encoders = build_encoders(cfg)
        self.class_tokens = ClassTokens(self.dim, s["token_init_std"])
        depth = s["depth"]
        self.transformers = nn.ModuleDict(
            {b: ModalityTransformer(self.dim, depth, m["heads"], m["dropout"]) for b in self.branches}
        )
        self.grouping = nn.ModuleDict({b: Grouping(self.dim) for b in self.branches})
        # p_{m,i} = Sigmoid(FC(g_{m,i})): one FC (D -> 1) per modality, applied to every class's
        # embedding (the class identity is carried by g_i itself, as in the official head).
        self.heads = nn.ModuleDict({b: nn.Linear(self.dim, 1) for b in self.branches})
        # e_i = Softmax(FC(c_i)) over the classes seen so far (CIGN Sec. 3.2), grows with the tokens.
        self.token_fc = IncrementalLinear(self.dim)

    @property
    def num_classes(self) -> int:
        return self.class_tokens.num_classes

    def grow(self, num_classes: int) -> bool:
        grew = self.class_tokens.grow(num_classes)
        self.token_fc.grow(num_classes)
        return grew

    def modality_tokens(self, x) -> dict:
        """{branch: (B, L, D)} encoder tokens; vision's (B, T, P, D) flattened to T*P tokens."""
        audio, visual = x
        out = {}
        if "audio" in self.branches:
            out["audio"] = self.encoders.encode_audio(audio)
        if "visual" in self.branches:
            out["visual"] = self.encoders.encode_visual(visual).flatten(1, 2)
        return out

    def forward(self, x) -> dict:
        tokens = self.class_tokens()
        out = {}
        for b, feats in self.modality_tokens(x).items():
            f_hat, c_hat = self.transformers[b](feats, tokens)  # CIGN Eq. 1-4
            g = self.grouping[b](f_hat, c_hat)  # CIGN Eq. 5-7
            out["g_" + b] = g
            out[b] = self.heads[b](g).squeeze(-1)  # logit of p_{m,i} = Sigmoid(FC(g_{m,i}))
        return out

    def embed(self, x, y: torch.Tensor) -> dict:
        """{branch: (B, D)} class-aware embedding g_{m,y} of each clip's ground-truth class (CIGN Fig. 3)."""
        out = self.forward(x)
        rows = torch.arange(y.shape[0], device=y.device)
        return {b: out["g_" + b][rows, y] for b in self.branches}

    def token_logits(self, idx: slice | None = None) -> torch.Tensor:
        """FC(c_i) over all tokens (or the slice ``idx``): (K', C_seen) logits of e_i (Sec. 3.2)."""
        c = self.class_tokens()
        return self.token_fc(c if idx is None else c[idx])
