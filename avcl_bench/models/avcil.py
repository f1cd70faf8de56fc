"""The AV-CIL audio-visual network (Pian et al., ICCV 2023), also the backbone of its AFC baseline.

Specification: ``shared/spec/av-cil.md`` "Model", read from the official release
(``model/audio_visual_model_incremental.py``); this is an independent implementation.

Audio-visual, from an audio vector ``a`` (B, D) and visual tokens ``V`` (B, T, P, D):

- ``a' = tanh(W_a a)``, ``V' = tanh(W_v V)`` (the attention projections);
- spatial attention ``alpha = softmax_P(V' * a')`` — element-wise per channel, so ``alpha`` is
  (B, T, P, D) and sums to 1 over the P patches for every frame and channel;
- temporal attention ``beta = softmax_T((sum_p alpha * V') * a')``, (B, T, D), summing to 1 over
  the T frames for every channel;
- pooled visual feature ``v = sum_t beta * sum_p alpha * V`` on the *raw* tokens V;
- ``f_a = ReLU(Linear(a))``, ``f_v = ReLU(Linear(v))``, logits = ``classifier(f_a + f_v)``.

Audio-only: ``ReLU(Linear(a))``; visual-only: the mean of all visual tokens, then ``ReLU(Linear)``.
The classifier grows at each step with the old rows copied (:class:`IncrementalLinear`), or is any
module with ``grow(num_classes)`` built from the feature width by a factory (AFC's proxies).

Inputs come through :func:`avcl_bench.models.encoders.build_encoders`: pre-extracted features
give audio (B, 1, D) and visual (B, T, P, D) tokens, raw clips the same token shapes from the
ResNet18 encoders (1 audio token; T frames x P spatial positions), so the network runs on both.
With the official features (audio and visual both 768-d) the release feeds the features to the
network unprojected; ``feature_encoder='auto'`` (the default) does the same (identity tokens)
whenever the audio and visual feature widths agree, and falls back to the suite's linear feature
encoders (to ``model.dim``) otherwise. ``'identity'`` / ``'linear'`` force either.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .avnet import IncrementalLinear
from .encoders import build_encoders

FEATURE_ENCODERS = ("auto", "identity", "linear")


class IdentityFeatureEncoders(nn.Module):
    """Pre-extracted features used as tokens as they are (the release): audio (B, Da) -> (B, 1, Da),
    visual (B, T, P, D) unchanged (cast to float32)."""

    def encode_audio(self, feat: torch.Tensor) -> torch.Tensor:
        feat = feat.float()
        return feat.unsqueeze(1) if feat.dim() == 2 else feat

    def encode_visual(self, feat: torch.Tensor) -> torch.Tensor:
        return feat.float()


def build_token_encoders(cfg: dict, feature_encoder: str = "auto") -> tuple[nn.Module, int]:
    """(encoders, token width D) for the run's input form (see the module docstring)."""
    if feature_encoder not in FEATURE_ENCODERS:
        raise ConfigError(f"strategy.feature_encoder must be one of {FEATURE_ENCODERS}, got {feature_encoder!r}")
    if cfg["input"] == "features":
        audio_dim, visual_dim = cfg["features"]["audio_dim"], int(cfg["features"]["visual_shape"][-1])
        same = audio_dim == visual_dim
        if feature_encoder == "identity" and not same:
            raise ConfigError(
                f"strategy.feature_encoder=identity needs equal audio and visual feature widths, "
                f"got features.audio_dim={audio_dim} and visual width {visual_dim}"
            )
        if feature_encoder == "identity" or (feature_encoder == "auto" and same):
            return IdentityFeatureEncoders(), audio_dim
    return build_encoders(cfg), cfg["model"]["dim"]


class AVCILNet(nn.Module):
    """AV-CIL's network for one modality setting (see the module docstring)."""

    def __init__(
        self,
        cfg: dict,
        modality: str | None = None,
        feature_encoder: str = "auto",
        classifier: Callable[[int], nn.Module] | None = None,
    ):
        super().__init__()
        self.modality = modality or cfg["modality"]
        self.encoders, d = build_token_encoders(cfg, feature_encoder)
        self.dim = d
        if self.modality in ("audio", "audio-visual"):
            self.audio_proj = nn.Linear(d, d)
        if self.modality in ("visual", "audio-visual"):
            self.visual_proj = nn.Linear(d, d)
        if self.modality == "audio-visual":
            self.attn_audio_proj = nn.Linear(d, d)
            self.attn_visual_proj = nn.Linear(d, d)
        # ``classifier(D)`` builds the head (AFC: proxies); default the growing linear layer
        self.classifier = classifier(d) if classifier is not None else IncrementalLinear(d)

    # ---- stages ------------------------------------------------------------------------------
    def encode(self, x) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Audio vector (B, D) (mean of the audio tokens; one token for both input forms) and visual
        tokens (B, T, P, D), each None when the modality does not use it."""
        audio, visual = x
        a = V = None
        if self.modality in ("audio", "audio-visual"):
            a = self.encoders.encode_audio(audio).mean(1)
        if self.modality in ("visual", "audio-visual"):
            V = self.encoders.encode_visual(visual)
            if V.dim() == 3:  # (B, T*P, D) without the frame axis: one frame
                V = V.unsqueeze(1)
        return a, V

    def attention(self, a: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio-guided attention: ``alpha`` (B, T, P, D), softmax over P; ``beta`` (B, T, D),
        softmax over T (av-cil.md "Model")."""
        pa = torch.tanh(self.attn_audio_proj(a))  # a'  (B, D)
        pv = torch.tanh(self.attn_visual_proj(V))  # V'  (B, T, P, D)
        alpha = torch.softmax(pv * pa[:, None, None, :], dim=2)  # per channel, over patches
        frame = (alpha * pv).sum(2)  # (B, T, D)
        beta = torch.softmax(frame * pa[:, None, :], dim=1)  # per channel, over frames
        return alpha, beta

    @staticmethod
    def pool(V: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """v = sum_t beta * sum_p alpha * V, on the raw tokens V: (B, D)."""
        return (beta * (alpha * V).sum(2)).sum(1)

    def forward_all(self, x) -> dict:
        """Every intermediate a method needs: ``logits``, ``fused`` (classifier input), ``f_a``,
        ``f_v``, ``v`` (pooled visual), ``alpha``, ``beta`` (None where not applicable)."""
        a, V = self.encode(x)
        out = {"f_a": None, "f_v": None, "v": None, "alpha": None, "beta": None}
        if self.modality == "audio-visual":
            alpha, beta = self.attention(a, V)
            v = self.pool(V, alpha, beta)
            out.update(alpha=alpha, beta=beta, v=v)
            out["f_a"] = F.relu(self.audio_proj(a))
            out["f_v"] = F.relu(self.visual_proj(v))
            fused = out["f_a"] + out["f_v"]
        elif self.modality == "audio":
            out["f_a"] = fused = F.relu(self.audio_proj(a))
        else:
            v = V.mean(dim=(1, 2))  # visual-only: token mean (release: mean over the 1568 tokens)
            out["v"] = v
            out["f_v"] = fused = F.relu(self.visual_proj(v))
        out["fused"] = fused
        out["logits"] = self.classifier(fused)
        return out

    def head(self, f_a: torch.Tensor | None, v: torch.Tensor | None):
        """(f_v, fused) from the audio feature and the pooled visual feature; used to take gradients
        with respect to intermediate features (AFC's importance)."""
        f_v = F.relu(self.visual_proj(v)) if v is not None else None
        parts = [f for f in (f_a, f_v) if f is not None]
        return f_v, parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def forward(self, x):
        return self.forward_all(x)["logits"]

    def forward_features(self, x) -> torch.Tensor:
        """The classifier's input (fused audio-visual feature, or the single modality's): (B, D)."""
        return self.forward_all(x)["fused"]

    def grow(self, num_classes: int) -> bool:
        return self.classifier.grow(num_classes)
