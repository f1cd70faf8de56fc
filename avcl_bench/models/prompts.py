"""Prompt modules and the frozen pretrained backbone of the prompt methods (L2P, DualPrompt).

Both methods prompt a *frozen, pretrained* transformer. Here the transformer is the suite's own
:class:`~avcl_bench.models.avnet.AVNet` (encoders -> fusion blocks over ``[CLS; prompts; tokens]``);
its "backbone" is everything except the classifier and the prompt parameters. Nothing can be
downloaded, so the backbone comes either from a local AVNet state dict
(``strategy.backbone_checkpoint``) or, by default, from supervised pretraining on the first
experience, after which it is frozen (see :func:`pretrain_backbone`).

- :class:`PromptPool` — L2P (Wang et al., CVPR 2022): M prompts of length Lp with
  learnable keys; the top-N keys by cosine similarity to the query select the prompts that are
  prepended to the token sequence; the surrogate loss pulls the selected keys to the query.
- :class:`DualPrompts` — DualPrompt (Wang et al., ECCV 2022): a task-shared G-prompt
  attached to shallow blocks and task-specific E-prompts attached to deeper blocks, both by prefix
  tuning (prefix keys/values prepended to a block's attention keys/values); E-prompt ``t`` has a
  learnable task key ``k_t``; at inference the task whose key best matches the query is used.
- :class:`PromptedAVNet` — AVNet whose frozen backbone stays in eval mode (BatchNorm statistics
  of the ResNet encoders do not move) when the strategy calls ``model.train()``.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .avnet import AVNet

#: Parameter-name prefixes of the classifier and the prompt parameters: everything else is backbone.
NON_BACKBONE = ("classifier.", "prompt.")


def cosine_matrix(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, D) x (M, D) -> (B, M) cosine similarities."""
    return F.normalize(query.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).t()


def batch_majority(idx: torch.Tensor, pool_size: int) -> torch.Tensor:
    """L2P's batchwise selection (google-research/l2p models/prompt.py, ``batchwise_prompt``): the N
    prompt ids chosen most often over the batch's per-sample top-N ``idx`` (B, N), most frequent
    first, ties to the lower id; every sample gets them -> (B, N)."""
    counts = torch.bincount(idx.flatten(), minlength=pool_size)
    order = torch.sort(counts, descending=True, stable=True).indices  # stable: equal counts keep id order
    return order[: idx.shape[1]].expand(idx.shape[0], -1)


class PromptPool(nn.Module):
    """L2P prompt pool: ``prompts`` (M, Lp, D) and ``keys`` (M, D), uniform(-1, 1) initialised
    (the L2P release's default initialisation). ``batchwise``: one prompt set per batch
    (:func:`batch_majority`) instead of one per sample."""

    def __init__(self, pool_size: int, length: int, dim: int, top_n: int, batchwise: bool = False):
        super().__init__()
        if not 1 <= top_n <= pool_size:
            raise ConfigError(f"L2P needs 1 <= top_n <= pool_size, got top_n={top_n}, pool_size={pool_size}")
        self.top_n = top_n
        self.batchwise = batchwise
        self.prompts = nn.Parameter(torch.empty(pool_size, length, dim).uniform_(-1, 1))
        self.keys = nn.Parameter(torch.empty(pool_size, dim).uniform_(-1, 1))

    @property
    def pool_size(self) -> int:
        return self.keys.shape[0]

    def select(self, query: torch.Tensor):
        """Top-N keys by cosine similarity to each query, or the batch's most chosen N
        (``batchwise``): (idx (B, N), similarities (B, M))."""
        sim = cosine_matrix(query, self.keys)
        idx = sim.topk(self.top_n, dim=1).indices
        if self.batchwise:
            idx = batch_majority(idx, self.pool_size)
        return idx, sim

    def forward(self, query: torch.Tensor):
        """-> (prompt tokens (B, N*Lp, D), idx (B, N), surrogate loss).

        The surrogate loss is L2P's matching term sum_{i in K_x} gamma(q(x), k_i) with the
        cosine distance gamma = 1 - cos, averaged over the batch; only the keys get its gradient
        (the query comes from the frozen backbone)."""
        idx, sim = self.select(query.detach())
        B = query.shape[0]
        chosen = self.prompts[idx]  # (B, N, Lp, D)
        tokens = chosen.reshape(B, -1, chosen.shape[-1])
        surrogate = (1.0 - sim.gather(1, idx)).sum(1).mean()
        return tokens, idx, surrogate


class DualPrompts(nn.Module):
    """DualPrompt's G-prompt and E-prompts as per-block prefixes, plus one task key per E-prompt.

    ``g`` has shape (len(g_layers), 2, Lg, D) and each ``e[t]`` (len(e_layers), 2, Le, D): index 0
    of the third-to-last axis is the prefix key, 1 the prefix value (prefix tuning, Li & Liang
    2021, as DualPrompt uses it)."""

    def __init__(self, dim: int, num_tasks: int, g_layers, e_layers, g_length: int, e_length: int, depth: int):
        super().__init__()
        self.g_layers = [int(i) for i in g_layers]
        self.e_layers = [int(i) for i in e_layers]
        for name, layers in (("g_layers", self.g_layers), ("e_layers", self.e_layers)):
            bad = [i for i in layers if not 0 <= i < depth]
            if bad:
                raise ConfigError(
                    f"strategy.{name} {layers} has block index {bad[0]} outside the model's "
                    f"{depth} fusion blocks (model.fusion_depth)"
                )
        if not self.e_layers:
            raise ConfigError("DualPrompt needs at least one block in strategy.e_layers")
        self.g = nn.Parameter(torch.empty(len(self.g_layers), 2, g_length, dim).uniform_(-1, 1))
        # One parameter per task, so that only the current task's E-prompt and key are trainable
        # (set_task): earlier tasks' experts stay exactly as learned, whatever the optimizer does.
        self.e = nn.ParameterList(
            nn.Parameter(torch.empty(len(self.e_layers), 2, e_length, dim).uniform_(-1, 1)) for _ in range(num_tasks)
        )
        self.task_keys = nn.ParameterList(nn.Parameter(torch.empty(dim).uniform_(-1, 1)) for _ in range(num_tasks))

    def set_task(self, task: int) -> None:
        """Make E-prompt ``task`` and its key the only trainable ones (the G-prompt stays shared)."""
        for t, (e, k) in enumerate(zip(self.e, self.task_keys)):
            e.requires_grad_(t == task)
            k.requires_grad_(t == task)

    def keys(self, n: int | None = None) -> torch.Tensor:
        keys = list(self.task_keys)[: n if n is not None else len(self.task_keys)]
        return torch.stack(keys)

    def match(self, query: torch.Tensor, num_tasks_seen: int):
        """Task index of the best-matching key among the first ``num_tasks_seen`` (B,), and the
        similarities (B, num_tasks_seen)."""
        sim = cosine_matrix(query, self.keys(num_tasks_seen))
        return sim.argmax(1), sim

    def matching_loss(self, query: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """DualPrompt's matching term gamma(q(x), k_t) = 1 - cos, averaged over the batch."""
        sim = cosine_matrix(query.detach(), self.keys())
        return (1.0 - sim.gather(1, task.view(-1, 1))).mean()

    def prefixes(self, task: torch.Tensor) -> dict:
        """{block index: (pk, pv)} with (B, L, D) prefixes: the G-prompt in ``g_layers``, the
        E-prompt of each sample's task in ``e_layers`` (concatenated after G where both apply)."""
        B = task.shape[0]
        out: dict[int, list] = {}
        for j, layer in enumerate(self.g_layers):
            g = self.g[j]  # (2, Lg, D)
            out[layer] = [g[0].expand(B, -1, -1), g[1].expand(B, -1, -1)]
        e = torch.stack(list(self.e))[task]  # (B, n_e, 2, Le, D)
        for j, layer in enumerate(self.e_layers):
            pk, pv = e[:, j, 0], e[:, j, 1]
            if layer in out:
                out[layer] = [torch.cat([out[layer][0], pk], 1), torch.cat([out[layer][1], pv], 1)]
            else:
                out[layer] = [pk, pv]
        return {k: (v[0], v[1]) for k, v in out.items()}


class PromptedAVNet(AVNet):
    """AVNet with a ``prompt`` module and a freezable backbone."""

    def __init__(self, cfg: dict, modality: str | None = None):
        super().__init__(cfg, modality)
        self.backbone_frozen = False

    def backbone_named_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if not n.startswith(NON_BACKBONE)]

    def backbone_modules(self):
        return [self.encoders, self.blocks, self.norm]

    def freeze_backbone(self) -> None:
        for _, p in self.backbone_named_parameters():
            p.requires_grad_(False)
            p.grad = None
        self.backbone_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_frozen:
            for m in self.backbone_modules():
                m.eval()
        return self

    @torch.no_grad()
    def query(self, x, tokens=None) -> torch.Tensor:
        """The prompt methods' query q(x): the frozen backbone's CLS feature of the same modality
        tokens, without prompts (L2P; DualPrompt)."""
        return self.forward_features(x, tokens=tokens)


def load_backbone_checkpoint(model: AVNet, path: str | Path) -> None:
    """Load an AVNet state dict (local file) into the backbone; classifier/prompt keys are ignored.

    Accepts a bare state dict or ``{"state_dict": ...}`` / ``{"model": ...}`` and the prefixes
    ``module.`` and ``model.``. Every backbone weight must be present with the right shape."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"backbone checkpoint not found: {p}")
    state = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"backbone checkpoint {p} does not hold a state dict")
    own = {n: t for n, t in model.state_dict().items() if not n.startswith(NON_BACKBONE)}
    picked = {}
    for k, v in state.items():
        for prefix in ("", "module.", "model."):
            name = k[len(prefix) :] if k.startswith(prefix) else None
            if name in own:
                picked[name] = v
                break
    missing = [k for k in own if k not in picked]
    if missing:
        raise ConfigError(
            f"backbone checkpoint {p} lacks {len(missing)} AVNet backbone weights (e.g. '{missing[0]}');"
            f" it must be a state dict of AVNet with the run's model settings"
        )
    for k, v in picked.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise ConfigError(
                f"backbone checkpoint {p}: '{k}' has shape {tuple(v.shape)}, "
                f"expected {tuple(own[k].shape)} (model.dim / encoder_width / fusion_depth must match)"
            )
    model.load_state_dict(picked, strict=False)


def pretrain_backbone(
    model: AVNet,
    loader,
    num_classes: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    device,
    to_device,
    autocast=None,
) -> list[float]:
    """Supervised pretraining of the backbone (encoders + CLS/type embeddings + fusion blocks +
    final norm) with a temporary linear head and cross-entropy, Adam; returns the mean loss of each
    epoch. The temporary head is discarded: only the backbone is kept (and then frozen)."""
    head = nn.Linear(model.dim, num_classes).to(device)
    params = [p for n, p in model.named_parameters() if not n.startswith(NON_BACKBONE)]
    opt = torch.optim.Adam(params + list(head.parameters()), lr=lr, weight_decay=weight_decay)
    was_training = model.training
    model.train()
    history = []
    for _ in range(epochs):
        total, n = 0.0, 0
        for batch in loader:
            x, y = to_device(batch[0], device), batch[1].to(device)
            opt.zero_grad()
            with autocast() if autocast is not None else nullcontext():
                logits = head(model.forward_features(x))
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            opt.step()
            total += loss.item() * y.numel()
            n += y.numel()
        history.append(total / max(1, n))
    model.train(was_training)
    return history
