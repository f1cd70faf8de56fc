"""The strategy base: Avalanche's SupervisedTemplate made audio-visual.

What it adds to the stock template (the training loop itself is Avalanche's, written once):
- multimodal minibatches ``[[audio, visual], y, task]`` moved to the device (the stock
  ``_unpack_minibatch`` calls ``.to`` on the list and fails);
- modality selection (audio / visual / audio-visual) through the model;
- a growing classifier (``model.grow``) at each experience, and a fresh optimizer per experience
  over the trainable parameters;
- evaluation of every test experience seen so far after each experience, for every modality the
  model predicts (CIGN predicts three from one model);
- optional model selection by best validation accuracy per step (the AV-CIL release);
- exemplar memory in both forms (per class, or a fixed total over the classes seen so far).

A method is a subclass that overrides a few hooks (``criterion``, ``_after_training_exp`` ...)
and is registered by name with :func:`avcl_bench.strategies.register`.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from ..data.loading import PairedReplayLoader, make_loader
from ..models.avnet import AVNet


def to_device(obj, device):
    """Move a (nested list/tuple of) tensor(s) to ``device``."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return [to_device(o, device) for o in obj]
    return obj


def make_optimizer(params, train_cfg: dict):
    params = [p for p in params if p.requires_grad]
    if train_cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=train_cfg["lr"], momentum=train_cfg["momentum"],
                               weight_decay=train_cfg["weight_decay"])
    return torch.optim.Adam(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])


class AVCLStrategy(SupervisedTemplate):
    """Base of every avcl-bench strategy (fine-tuning when used as is)."""

    #: registry name, set by @register
    name = "base"

    def __init__(self, *, cfg: dict, num_classes: int, num_tasks: int, device, plugins=None, model=None):
        self.cfg = cfg
        self.scfg = cfg["strategy"]
        self.modality = cfg["modality"]
        self.total_classes = num_classes
        self.num_tasks = num_tasks
        self.classes_per_task = num_classes // num_tasks
        self.num_seen = 0  # classes seen including the current experience
        self.num_old = 0  # classes of earlier experiences
        self.task_id = -1
        self.val_experiences = []
        model = model if model is not None else self.build_model(cfg)
        train = cfg["train"]
        super().__init__(
            model=model,
            optimizer=make_optimizer(model.parameters(), train),
            train_mb_size=train["batch_size"],
            train_epochs=train["epochs"],
            eval_mb_size=train["eval_batch_size"],
            device=device,
            plugins=list(plugins or []),
            evaluator=EvaluationPlugin(),  # metrics come from our own evaluation (R matrix)
            eval_every=-1,
        )
        self.use_amp = bool(train["amp"]) and torch.device(device).type == "cuda"

    # ---- construction hooks ----------------------------------------------------------------
    @classmethod
    def build_model(cls, cfg: dict):
        return AVNet(cfg)

    def reported_modalities(self) -> list[str]:
        """The modalities whose accuracy matrix this strategy reports."""
        return [self.modality]

    # ---- Avalanche template overrides -----------------------------------------------------
    def _unpack_minibatch(self):
        self.mbatch = to_device(list(self.mbatch), self.device)

    def model_adaptation(self, model=None):
        model = self.model if model is None else model
        if self.is_training and self.experience is not None:
            classes = self.experience.classes_in_this_experience
            model.grow(max(classes) + 1)
        return model.to(self.device)

    def make_optimizer(self, **kwargs):
        """A fresh optimizer per experience over the trainable parameters (the grown classifier
        included); the template calls this after ``model_adaptation``."""
        self.optimizer = make_optimizer(self.model.parameters(), self.cfg["train"])

    def check_model_and_optimizer(self, **kwargs):
        self.model = self.model_adaptation()
        self.make_optimizer()

    def _before_training_exp(self, **kwargs):
        classes = self.experience.classes_in_this_experience
        self.task_id = self.experience.current_experience
        self.num_old = min(classes)
        self.num_seen = max(classes) + 1
        super()._before_training_exp(**kwargs)

    def autocast(self):
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def forward(self):
        with self.autocast():
            return self.model(self.mb_x)

    def criterion(self):
        """Cross-entropy over the logits of all classes seen so far (fine-tuning)."""
        return F.cross_entropy(self.mb_output[:, : self.num_seen].float(), self.mb_y)

    # ---- prediction and evaluation ---------------------------------------------------------
    def predict(self, x) -> dict:
        """Scores over the seen classes, one entry per reported modality."""
        with self.autocast():
            out = self.model(x)
        return {self.modality: out[:, : self.num_seen].float()}

    def _loader(self, dataset, batch_size=None, shuffle=False, drop_last=False):
        """Every loader of the suite: whole batches read by array rows (``data/loading.py``)."""
        return make_loader(dataset, batch_size or self.eval_mb_size, shuffle=shuffle, drop_last=drop_last,
                           num_workers=self.cfg["train"]["num_workers"],
                           pin_memory=bool(self.cfg["train"]["pin_memory"]) and self.device.type == "cuda",
                           batched=bool(self.cfg["train"]["batched_loading"]))

    def make_train_dataloader(self, num_workers=0, shuffle=True, pin_memory=None, persistent_workers=False,
                              drop_last=False, **kwargs):
        """The experience's training loader (replaces Avalanche's per-item DataLoader; same
        sampler, so the same batches)."""
        self.dataloader = self._loader(self.adapted_dataset, self.train_mb_size, shuffle=shuffle,
                                       drop_last=drop_last)

    @torch.no_grad()
    def extract_features(self, dataset) -> torch.Tensor:
        """The model's features (classifier input, ``forward_features``) of a dataset, in eval
        mode, on the CPU: (n, D). Used for herding, class means and proxy imprinting."""
        was_training = self.model.training
        self.model.eval()
        out = []
        for batch in self._loader(dataset.eval()):
            with self.autocast():
                out.append(self.model.forward_features(to_device(batch[0], self.device)).float().cpu())
        self.model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.model.dim)

    @torch.no_grad()
    def evaluate_experiences(self, experiences) -> dict:
        """{modality: [(correct, total) per experience]} with the current model."""
        was_training = self.model.training
        self.model.eval()
        result = {m: [] for m in self.reported_modalities()}
        for exp in experiences:
            counts = {m: [0, 0] for m in result}
            for batch in self._loader(exp.dataset.eval()):
                x, y = to_device(batch[0], self.device), batch[1].to(self.device)
                for m, scores in self.predict(x).items():
                    counts[m][0] += int((scores.argmax(1) == y).sum())
                    counts[m][1] += int(y.numel())
            for m in result:
                result[m].append(tuple(counts[m]))
        self.model.train(was_training)
        return result

    def pooled_accuracy(self, experiences, modality=None) -> float:
        res = self.evaluate_experiences(experiences)[modality or self.reported_modalities()[-1]]
        return 100.0 * sum(c for c, _ in res) / max(1, sum(n for _, n in res))

    # ---- model selection on validation (AV-CIL release) -----------------------------------
    def _before_training_epoch(self, **kwargs):
        super()._before_training_epoch(**kwargs)
        if self.clock.train_exp_epochs == 0:
            self._best_val = (-1.0, None)

    def _after_training_epoch(self, **kwargs):
        super()._after_training_epoch(**kwargs)
        if self.cfg["train"]["select_best_on_val"] and self.val_experiences:
            acc = self.pooled_accuracy(self.val_experiences[: self.task_id + 1])
            if acc > self._best_val[0]:
                state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self._best_val = (acc, state)

    def _after_training_exp(self, **kwargs):
        if self.cfg["train"]["select_best_on_val"] and getattr(self, "_best_val", (0, None))[1] is not None:
            self.model.load_state_dict(self._best_val[1])
            self._best_val = (-1.0, None)
        super()._after_training_exp(**kwargs)

    # ---- checkpoints at experience boundaries ------------------------------------------------
    #: Strategy attributes saved in checkpoints besides the model: tensors, modules (e.g. the
    #: previous model), plain containers of those, and ExemplarMemory objects.
    checkpoint_attrs: tuple = ()
    #: ``torch.Generator`` attributes (a method's own random streams) whose states checkpoints keep.
    checkpoint_generators: tuple = ()

    def checkpoint_state(self) -> dict:
        """State dicts (never a pickle of the Avalanche template, which fails here)."""
        from .memory import ExemplarMemory

        def pack(v):
            return {"__exemplar_memory__": v.state()} if isinstance(v, ExemplarMemory) else v

        return {
            "model": self.model.state_dict(),
            "num_seen": self.num_seen, "num_old": self.num_old, "task_id": self.task_id,
            "attrs": {name: pack(getattr(self, name, None)) for name in self.checkpoint_attrs},
            "generators": {name: getattr(self, name).get_state() for name in self.checkpoint_generators},
            "replay_memories": [p.memory.state() for p in self.plugins if isinstance(p, ExemplarReplayPlugin)],
        }

    def load_checkpoint_state(self, state: dict, train_experiences) -> None:
        """Restore :meth:`checkpoint_state`; ``train_experiences`` re-link exemplar rows to data."""
        from .memory import ExemplarMemory

        def dataset_of_class(c):
            return train_experiences[c // self.classes_per_task].dataset

        def unpack(v):
            if isinstance(v, dict) and "__exemplar_memory__" in v:
                return ExemplarMemory.restore(v["__exemplar_memory__"], dataset_of_class)
            return v

        self.model.grow(state["num_seen"])
        self.model.load_state_dict(state["model"])
        self.model.to(self.device)
        self.num_seen, self.num_old, self.task_id = state["num_seen"], state["num_old"], state["task_id"]
        for name, value in state["attrs"].items():
            value = unpack(value)
            if isinstance(value, (torch.nn.Module, torch.Tensor)):  # checkpoints are loaded on the CPU
                value = value.to(self.device)
            setattr(self, name, value)
        for name, rng_state in state.get("generators", {}).items():
            getattr(self, name).set_state(rng_state)
        replay = [p for p in self.plugins if isinstance(p, ExemplarReplayPlugin)]
        for plugin, mem_state in zip(replay, state["replay_memories"]):
            plugin.memory = ExemplarMemory.restore(mem_state, dataset_of_class)

    # ---- helpers for methods ------------------------------------------------------------------
    def frozen_copy(self, module=None):
        """A frozen deep copy (the 'previous model' of distillation methods)."""
        old = copy.deepcopy(self.model if module is None else module)
        old.eval()
        for p in old.parameters():
            p.requires_grad_(False)
        return old


class ExemplarReplayPlugin(SupervisedPlugin):
    """Replay from an :class:`~avcl_bench.strategies.memory.ExemplarMemory` (Avalanche plugin).

    Each training batch holds ``batch_size`` new samples and ``batch_size_mem`` exemplars
    (``PairedReplayLoader``, as Avalanche's ReplayDataLoader); after each experience the memory
    takes the new classes and shrinks the old ones to the quota. Unlike Avalanche's storage policies, the memory is a list of
    row indices, so it is saved in run checkpoints.
    """

    def __init__(self, memory, batch_size: int, batch_size_mem: int, feature_fn=None):
        super().__init__()
        self.memory = memory
        self.batch_size = batch_size
        self.batch_size_mem = batch_size_mem
        self.feature_fn = feature_fn  # for herding selection

    def before_training_exp(self, strategy, shuffle: bool = True, drop_last: bool = False, **kwargs):
        buffer = self.memory.dataset()
        if buffer is None or len(buffer) == 0:
            return
        strategy.dataloader = PairedReplayLoader(
            strategy._loader(strategy.adapted_dataset, self.batch_size, shuffle=shuffle, drop_last=drop_last),
            strategy._loader(buffer.train(), self.batch_size_mem, shuffle=True))

    def after_training_exp(self, strategy, **kwargs):
        self.memory.update(strategy.experience.dataset, strategy.num_seen, self.feature_fn)


def memory_plugin(cfg: dict, num_classes: int | None = None, batch_size_mem: int | None = None,
                  selection: str = "random", feature_fn=None):
    """Replay plugin in the run's memory form, or None when the protocol has no memory.

    ``memory.per_class = m`` keeps exactly m exemplars per old class (CIGN Sec. 4.1: 50);
    ``memory.total = M`` splits M equally over the classes seen so far (AV-CIL: 340/500/1500).
    """
    from .memory import ExemplarMemory

    memory = ExemplarMemory.from_config(cfg, selection)
    if memory is None:
        return None
    bs = cfg["train"]["batch_size"]
    return ExemplarReplayPlugin(memory, bs, batch_size_mem or bs, feature_fn)
