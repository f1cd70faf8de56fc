"""L2P — Learning to Prompt for Continual Learning (Wang et al., CVPR 2022), audio-visual.

Mechanism (L2P, method section):
- a pool of M prompts P_i (each Lp tokens) with learnable keys k_i;
- the query q(x) is the frozen pretrained backbone's CLS feature of the input *without* prompts
  (here: the suite's transformer over the tokens of the run's modality, so the audio-visual query
  is the CLS feature of the audio+visual tokens);
- the N prompts whose keys are most cosine-similar to q(x) are prepended to the token sequence
  (after CLS) and the frozen transformer runs on ``[CLS; P_s1..P_sN; tokens]``;
- the classifier reads the average of the outputs at the N*Lp prompt positions (L2P);
- loss = CE + lambda * sum_i (1 - cos(q(x), k_si)) (L2P's surrogate loss pulling the
  selected keys to the query); only prompts, keys and the classifier are trained.
- As the L2P release, the training CE masks the logits of classes outside the current task
  (``strategy.train_mask``); prediction is over all classes seen so far. Rehearsal-free.
- As the L2P release (``batchwise_prompt=True`` in its configs), the prompts are selected per
  batch (``strategy.batchwise_prompt``): the N ids most often among the samples' top-N, in
  training and at test time; and the learning rate is train.lr * batch / 256
  (``strategy.lr_batch_scaling``, both shared with DualPrompt).

Pretrained backbone (deviation, nothing can be downloaded): ``strategy.backbone_checkpoint`` may
name a local AVNet state dict (the run's model settings); by default the backbone (encoders,
CLS/type embeddings, fusion blocks, final norm) is *pretrained with cross-entropy on the first
experience* (``strategy.pretrain_epochs`` / ``pretrain_lr``) and frozen from then on, for every
experience including the first one's prompt training. Frozen means no gradient, no optimizer
entry and eval mode (BatchNorm statistics of the ResNet encoders stay fixed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.prompts import PromptedAVNet, PromptPool, load_backbone_checkpoint, pretrain_backbone
from . import register
from .base import AVCLStrategy, make_optimizer, to_device


class FrozenBackbonePromptStrategy(AVCLStrategy):
    """Shared by L2P and DualPrompt: a frozen pretrained backbone, trainable prompts + classifier.

    Subclasses build ``model.prompt`` in :meth:`build_prompt` and implement
    :meth:`prompted_features` -> (classifier input, auxiliary loss)."""

    #: the prompted AVNet (models/prompts.py) only
    networks = ()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.model.prompt = self.build_prompt()
        self.aux_loss = None
        self.pretrain_history: list[float] = []
        ckpt = self.scfg.get("backbone_checkpoint")
        if ckpt:
            load_backbone_checkpoint(self.model, ckpt)
            self.model.freeze_backbone()
        self.make_optimizer()

    def make_optimizer(self, **kwargs):
        """The trainable parameters' optimizer at the learning rate :meth:`learning_rate` gives."""
        self.optimizer = make_optimizer(self.model.parameters(), {**self.cfg["train"], "lr": self.learning_rate()})

    def learning_rate(self) -> float:
        """train.lr, or with ``strategy.lr_batch_scaling`` train.lr * batch / 256: the releases take the
        configured rate as the one for batch 256 (google-research/l2p train_continual.py l.637-639)."""
        train = self.cfg["train"]
        scale = train["batch_size"] / 256.0 if self.scfg["lr_batch_scaling"] else 1.0
        return train["lr"] * scale

    @classmethod
    def build_model(cls, cfg: dict):
        return PromptedAVNet(cfg)

    def build_prompt(self):
        raise NotImplementedError

    # ---- checkpoints: the backbone stays frozen after a resume -----------------------------------
    checkpoint_attrs = ("pretrain_history",)

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "backbone_frozen": self.model.backbone_frozen}

    def load_checkpoint_state(self, state: dict, train_experiences) -> None:
        super().load_checkpoint_state(state, train_experiences)
        if state["backbone_frozen"]:  # pretrained (or loaded) and frozen before the first experience
            self.model.freeze_backbone()

    # ---- pretrained backbone -------------------------------------------------------------------
    def check_model_and_optimizer(self, **kwargs):
        self.model = self.model_adaptation()
        if not self.model.backbone_frozen:
            self.pretrain_on_experience()
            self.model.freeze_backbone()
        self.make_optimizer()

    def pretrain_on_experience(self) -> None:
        """Default backbone: supervised pretraining on the current (first) experience's training
        data, then frozen by the caller."""
        s, train = self.scfg, self.cfg["train"]
        epochs = s.get("pretrain_epochs") or train["epochs"]
        lr = s.get("pretrain_lr") or train["lr"]
        loader = self._loader(self.experience.dataset.train(), batch_size=train["batch_size"], shuffle=True)
        self.pretrain_history = pretrain_backbone(
            self.model,
            loader,
            self.num_seen,
            int(epochs),
            float(lr),
            train["weight_decay"],
            self.device,
            to_device,
            self.autocast,
        )

    # ---- training ------------------------------------------------------------------------------
    def prompted_features(self, x, task=None):
        """(classifier input (B, D), auxiliary key loss or None) of the prompted backbone."""
        raise NotImplementedError

    def forward_with_aux(self, x, task=None):
        feat, aux = self.prompted_features(x, task)
        return self.model.classifier(feat), aux

    def embed(self, x) -> torch.Tensor:
        """The prompted feature the classifier sees at inference (for the embeddings export)."""
        with self.autocast():
            return self.prompted_features(x, None)[0]

    def forward(self):
        task = None
        if self.is_training:
            task = torch.full((self.mb_y.shape[0],), self.task_id, dtype=torch.long, device=self.mb_y.device)
        with self.autocast():
            logits, self.aux_loss = self.forward_with_aux(self.mb_x, task)
        return logits

    def criterion(self):
        logits = self.mb_output[:, : self.num_seen].float()
        if self.scfg["train_mask"]:
            # Only the current task's classes compete in training (the L2P/DualPrompt releases).
            mask = torch.full_like(logits, float("-inf"))
            mask[:, self.num_old : self.num_seen] = 0.0
            logits = logits + mask
        loss = F.cross_entropy(logits, self.mb_y)
        if self.aux_loss is not None:
            loss = loss + self.scfg["key_loss_weight"] * self.aux_loss.float()
        return loss

    def predict(self, x) -> dict:
        with self.autocast():
            logits, _ = self.forward_with_aux(x, None)
        return {self.modality: logits[:, : self.num_seen].float()}

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.model.named_parameters() if p.requires_grad]


@register("l2p")
class L2P(FrozenBackbonePromptStrategy):
    """Prompt pool + key-query selection on a frozen pretrained audio-visual transformer."""

    def build_prompt(self):
        s = self.scfg
        pool = PromptPool(s["pool_size"], s["prompt_length"], self.model.dim, s["top_n"], s["batchwise_prompt"])
        return pool.to(self.device)

    def prompted_features(self, x, task=None):
        model = self.model
        with torch.no_grad():
            tokens = model.tokens(x)  # the frozen encoders; computed once for query and prompted pass
        query = model.query(x, tokens=tokens)
        prompts, idx, surrogate = model.prompt(query)
        self.last_selection = idx
        _, blocks = model.forward_features(x, prompts=prompts.to(tokens.dtype), tokens=tokens, return_blocks=True)
        n_prompt = prompts.shape[1]
        if self.scfg["head"] == "prompt_avg":
            # L2P: average of the final-layer outputs at the prompt positions.
            feat = model.norm(blocks[-1][:, 1 : 1 + n_prompt]).mean(1)
        else:
            feat = model.norm(blocks[-1][:, 0])
        return feat, surrogate
