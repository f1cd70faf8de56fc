"""Encoders: raw inputs or pre-extracted features -> audio and visual tokens.

Every encoder pair produces
- audio tokens ``(B, Na, D)`` and
- visual tokens ``(B, T, P, D)`` (T frames, P spatial positions),
which is what every method head consumes.

Raw clips: ResNet18 for vision (3 channels) and a 1-channel ResNet18 for the log spectrogram, as
in CIGN Sec. 4.1. ``width=64`` is exactly torchvision's ResNet18 layout (so its state-dict keys
load), a smaller width is the CPU configuration. Weights are random unless the user gives a local
checkpoint file; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

#: ImageNet statistics; frames are cached as uint8 and normalised here.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016), torchvision's parameter names."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class ResNet18Trunk(nn.Module):
    """ResNet18 without pooling and classifier: (B, C_in, H, W) -> (B, 8*width, H/32, W/32)."""

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [w, 2 * w, 4 * w, 8 * w]
        cin = w
        for i, c in enumerate(chans):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, c, stride), BasicBlock(c, c)))
            cin = c
        self.out_channels = chans[-1]

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def load_checkpoint(self, path: str | Path) -> None:
        """Load a local state dict (torchvision ResNet18 keys; 'fc.*' and prefixes ignored)."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"encoder checkpoint not found: {p}")
        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        own = self.state_dict()
        picked = {}
        for k, v in state.items():
            for prefix in ("", "module.", "encoder.", "backbone."):
                if k.startswith(prefix) and k[len(prefix) :] in own:
                    picked[k[len(prefix) :]] = v
        missing = [k for k in own if k not in picked]
        if missing:
            raise ConfigError(f"encoder checkpoint {p} lacks {len(missing)} ResNet18 weights (e.g. '{missing[0]}')")
        for k, v in picked.items():
            if own[k].shape != v.shape:
                raise ConfigError(
                    f"encoder checkpoint {p}: '{k}' has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
                )
        self.load_state_dict(picked)


class ClipEncoders(nn.Module):
    """Raw-clip encoders: spectrogram (B,1,F,T) and frames uint8 (B,T,3,H,W) -> tokens."""

    def __init__(self, dim: int, width: int = 64, audio_checkpoint=None, visual_checkpoint=None):
        super().__init__()
        self.audio_net = ResNet18Trunk(1, width)
        self.visual_net = ResNet18Trunk(3, width)
        if audio_checkpoint:
            self.audio_net.load_checkpoint(audio_checkpoint)
        if visual_checkpoint:
            self.visual_net.load_checkpoint(visual_checkpoint)
        c = self.visual_net.out_channels
        self.audio_proj = nn.Identity() if c == dim else nn.Linear(c, dim)
        self.visual_proj = nn.Identity() if c == dim else nn.Linear(c, dim)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def encode_audio(self, spec: torch.Tensor) -> torch.Tensor:
        fmap = self.audio_net(spec.float())  # (B, C, f, t)
        # CIGN Sec. 4.1: one global audio token, max-pooled over the spectrogram map.
        return self.audio_proj(fmap.amax(dim=(2, 3))).unsqueeze(1)  # (B, 1, D)

    def encode_visual(self, frames: torch.Tensor) -> torch.Tensor:
        B, T = frames.shape[:2]
        x = frames.flatten(0, 1).float().div_(255.0)
        x = (x - self.mean) / self.std
        fmap = self.visual_net(x)  # (B*T, C, h, w): P = h*w spatial tokens (7x7 at 224 px)
        tokens = fmap.flatten(2).transpose(1, 2)  # (B*T, P, C)
        return self.visual_proj(tokens).view(B, T, tokens.shape[1], -1)


class FeatureEncoders(nn.Module):
    """Pre-extracted features -> tokens: audio (B, Da) -> (B, 1, D), visual (B, T, P, Dv) -> (B, T, P, D)."""

    def __init__(self, dim: int, audio_dim: int, visual_dim: int):
        super().__init__()
        self.audio_proj = nn.Linear(audio_dim, dim)
        self.visual_proj = nn.Linear(visual_dim, dim)

    def encode_audio(self, feat: torch.Tensor) -> torch.Tensor:
        feat = feat.float()
        if feat.dim() == 2:
            feat = feat.unsqueeze(1)
        return self.audio_proj(feat)

    def encode_visual(self, feat: torch.Tensor) -> torch.Tensor:
        return self.visual_proj(feat.float())


def build_encoders(cfg: dict) -> nn.Module:
    """The encoder pair for the run's input form."""
    m = cfg["model"]
    if cfg["input"] == "features":
        f = cfg["features"]
        return FeatureEncoders(m["dim"], f["audio_dim"], f["visual_shape"][-1])
    return ClipEncoders(m["dim"], m["encoder_width"], m["audio_checkpoint"], m["visual_checkpoint"])
