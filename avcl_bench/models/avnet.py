"""The shared audio-visual classification network of the baselines.

encoders -> tokens -> a small pre-norm transformer over ``[CLS; audio tokens; visual tokens]``
(only the tokens of the selected modality) -> CLS feature -> growing linear classifier.

The transformer is what the prompt methods (L2P, DualPrompt) prompt: ``forward_features`` accepts
prompt tokens prepended to the sequence and per-block prefix key/values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import build_encoders


class GrowingRows(nn.Module):
    """Parameters with one row per class seen so far, extended as classes arrive.

    :meth:`grow` appends fresh rows (:meth:`fresh_rows`) and keeps the old ones verbatim; the
    parameters are replaced, so the fresh per-experience optimizer of the strategy base picks up
    the new rows."""

    weight: nn.Parameter

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def fresh_rows(self, n: int) -> dict:
        """{parameter name: (n, ...) initial rows} of ``n`` new classes."""
        raise NotImplementedError

    @torch.no_grad()
    def grow(self, num_classes: int) -> bool:
        """Extend to ``num_classes`` rows; returns True when parameters were replaced."""
        old = self.num_classes
        if num_classes <= old:
            return False
        for name, rows in self.fresh_rows(num_classes - old).items():
            cur = getattr(self, name)
            setattr(self, name, nn.Parameter(torch.cat([cur.data, rows.to(cur.device, cur.dtype)])))
        return True


class IncrementalLinear(GrowingRows):
    """A linear classifier whose output grows as classes arrive; old rows are kept."""

    def __init__(self, in_features: int, num_classes: int = 0, bias: bool = True):
        super().__init__()
        self.in_features = in_features
        self.use_bias = bias
        self.weight = nn.Parameter(torch.empty(0, in_features))
        self.bias = nn.Parameter(torch.empty(0)) if bias else None
        if num_classes:
            self.grow(num_classes)

    def fresh_rows(self, n: int) -> dict:
        fresh = nn.Linear(self.in_features, n, bias=self.use_bias)  # nn.Linear's initialisation
        return {"weight": fresh.weight.data, **({"bias": fresh.bias.data} if self.use_bias else {})}

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Block(nn.Module):
    """Pre-norm transformer block; ``prefix=(pk, pv)`` prepends (B, L, D) inputs to keys/values
    (prefix tuning, DualPrompt Sec. 4.2)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x, prefix=None):
        h = self.norm1(x)
        k = v = h
        if prefix is not None:
            pk, pv = prefix
            k, v = torch.cat([pk, h], 1), torch.cat([pv, h], 1)
        x = x + self.attn(h, k, v, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class AVNet(nn.Module):
    """Encoders + fusion transformer + growing classifier, for one modality setting."""

    def __init__(self, cfg: dict, modality: str | None = None):
        super().__init__()
        m = cfg["model"]
        self.modality = modality or cfg["modality"]
        self.dim = m["dim"]
        self.encoders = build_encoders(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.dim))
        self.type_embed = nn.Parameter(torch.zeros(2, self.dim))  # audio, visual
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(self.dim, m["heads"], m["dropout"]) for _ in range(m["fusion_depth"]))
        self.norm = nn.LayerNorm(self.dim)
        self.classifier = IncrementalLinear(self.dim)

    # ---- tokens ---------------------------------------------------------------------------
    def tokens(self, x) -> torch.Tensor:
        """(B, L, D) token sequence of the selected modality (without CLS)."""
        audio, visual = x
        parts = []
        if self.modality in ("audio", "audio-visual"):
            parts.append(self.encoders.encode_audio(audio) + self.type_embed[0])
        if self.modality in ("visual", "audio-visual"):
            v = self.encoders.encode_visual(visual)
            parts.append(v.flatten(1, 2) + self.type_embed[1])
        return torch.cat(parts, 1)

    def forward_features(
        self, x, prompts=None, prefixes=None, return_blocks: bool = False, tokens: torch.Tensor | None = None
    ):
        """CLS feature (B, D). ``prompts`` (B, Lp, D) are prepended after CLS; ``prefixes`` maps a
        block index to (pk, pv). With ``return_blocks`` also the output of every block."""
        seq = self.tokens(x) if tokens is None else tokens
        B = seq.shape[0]
        parts = [self.cls_token.expand(B, -1, -1)]
        if prompts is not None:
            parts.append(prompts)
        h = torch.cat(parts + [seq], 1)
        outs = []
        for i, blk in enumerate(self.blocks):
            h = blk(h, None if prefixes is None else prefixes.get(i))
            outs.append(h)
        feat = self.norm(h[:, 0])
        return (feat, outs) if return_blocks else feat

    def forward(self, x):
        return self.classifier(self.forward_features(x))

    def grow(self, num_classes: int) -> bool:
        return self.classifier.grow(num_classes)
