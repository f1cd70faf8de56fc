"""The strategy base: Avalanche's SupervisedTemplate made audio-visual.

What it adds to the stock template (the training loop itself is Avalanche's, written once):
- multimodal minibatches ``[[audio, visual], y, task]`` moved to the device (the array keys the
  batched loader adds are taken out first, :attr:`AVCLStrategy.mb_keys`; the stock
  ``_unpack_minibatch`` calls ``.to`` on the list and fails);
- modality selection (audio / visual / audio-visual) through the model;
- a growing classifier (``model.grow``) at each experience, and a fresh optimizer per experience
  over the trainable parameters;
- evaluation of every test experience seen so far after each experience, for every modality the
  model predicts (CIGN predicts three from one model);
- optional model selection by best validation accuracy per step (the AV-CIL release);
- parts (:class:`Part`): the mechanisms several methods share — the frozen previous model
  (:class:`PreviousModel`), the exemplar memory and the exemplars' class means
  (``strategies/memory.py``) — run by the base at each experience and saved in checkpoints.

A method is a subclass that declares its parts (:meth:`AVCLStrategy.add_part`), writes its loss
(``criterion``) and overrides a few hooks (``predict``, ``_after_training_exp`` ...); it is
registered by name with :func:`avcl_bench.strategies.register`.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from ..config import epochs_for_modality
from ..data.loading import make_loader
from ..errors import ConfigError, UserError
from ..models.avcil import AVCILNet
from ..models.avnet import AVNet
from ..rundir import numpy_state_from_plain, numpy_state_to_plain


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
        return torch.optim.SGD(
            params, lr=train_cfg["lr"], momentum=train_cfg["momentum"], weight_decay=train_cfg["weight_decay"]
        )
    return torch.optim.Adam(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])


def frozen_copy(module):
    """A frozen deep copy in eval mode (the 'previous model' of distillation methods)."""
    old = copy.deepcopy(module)
    old.eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old


class Part:
    """A mechanism several strategies share, in the manner of an Avalanche plugin: the base runs
    its hooks at each experience and saves and restores its state in run checkpoints, so a
    strategy declares it once (:meth:`AVCLStrategy.add_part`) and lists nothing for ``--resume``.
    Parts run in the order they were declared."""

    def before_training_exp(self, strategy) -> None:
        """The experience starts (before its data and the model are adapted)."""

    def train_dataset(self, strategy, dataset):
        """The experience's training data (a memory replayed by concatenation adds its exemplars)."""
        return dataset

    def train_loader(self, strategy, loader):
        """The experience's training loader (a memory replayed in separate batches wraps it)."""
        return loader

    def after_training_exp(self, strategy) -> None:
        """The experience ends (its best-on-validation weights already restored)."""

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the part (tensors on the CPU, plain containers)."""
        return {}

    def load_state_dict(self, state: dict, strategy, train_experiences) -> None:
        """Inverse of :meth:`state_dict`; ``train_experiences`` re-link stored rows to their data."""


def previous_logits(model, x) -> dict:
    """The outputs a distillation method reads from the previous model by default: its logits."""
    return {"logits": model(x)}


class PreviousModel(Part):
    """The frozen model as it ended the previous experience, the distillation target (``model``;
    None during the first experience), and its outputs on each training mini-batch
    (:meth:`outputs`).

    It is copied when the next experience starts, before the classifier grows: the model then is
    the previous experience's final one (best-on-validation weights restored, any stage after
    training done), and after ``--resume`` it is exactly the restored model, so the copy itself
    never goes into a checkpoint.

    ``outputs_fn(model, x) -> {name: (B, ...) tensor}`` says what a method reads (default: the
    logits). The frozen model and the training samples do not change during an experience and the
    suite's inputs carry no augmentation, so with ``train.cache_previous_outputs`` the outputs are
    computed once per experience for every training sample (the new data and, when ``memory`` is
    given, the exemplars) and each mini-batch looks its own up by the items' array keys
    (``data/loading.py``), instead of one forward of the frozen model per batch and epoch (AV-CIL:
    10 epochs per step computed the same outputs 10 times). Outputs named in ``exemplar_only``
    are given for the batch's exemplars only, in batch order (AV-CIL's attention maps, which only
    its exemplar term reads: a whole experience's maps would not fit in memory); the exemplars are
    the items of old classes (class-incremental streams: the new data holds new classes only). A
    batch without keys (the per-item loading path) is computed directly."""

    def __init__(self, outputs_fn=previous_logits, exemplar_only=(), memory=None):
        self.model = None
        self.outputs_fn, self.exemplar_only, self.memory = outputs_fn, tuple(exemplar_only), memory
        self._cache: PreviousOutputCache | None = None

    def before_training_exp(self, strategy) -> None:
        self._cache = None
        if strategy.experience.current_experience > 0:
            self.model = frozen_copy(strategy.model)

    def outputs(self, strategy) -> dict:
        """The previous model's outputs (``outputs_fn``) on the current training mini-batch."""
        exemplar = strategy.mb_y < strategy.num_old
        if strategy.cfg["train"]["cache_previous_outputs"] and strategy.mb_keys is not None:
            if self._cache is None:
                self._cache = self._build_cache(strategy)
            found = self._cache.lookup(strategy.mb_keys, exemplar.cpu())
            if found is not None:
                return found
        with torch.no_grad(), strategy.autocast():
            out = self.outputs_fn(self.model, strategy.mb_x)
        return {k: v[exemplar] if k in self.exemplar_only else v for k, v in out.items()}

    @torch.no_grad()
    def _build_cache(self, strategy) -> "PreviousOutputCache":
        sources = [(strategy.adapted_dataset, False)]
        exemplars = self.memory.dataset() if self.memory is not None else None
        if exemplars is not None:
            sources.append((exemplars, True))
        cache = PreviousOutputCache(self.exemplar_only)
        for dataset, is_memory in sources:
            for batch in strategy._loader(dataset.eval()):
                if len(batch) != 4:  # no array keys: this data is read item by item
                    return PreviousOutputCache.unavailable()
                with strategy.autocast():
                    out = self.outputs_fn(self.model, to_device(batch[0], strategy.device))
                cache.add(batch[2], out, is_memory)
        return cache.finish()


class PreviousOutputCache:
    """Per-sample outputs of the frozen previous model, looked up by array key (see
    :meth:`PreviousModel.outputs`)."""

    def __init__(self, exemplar_only=()):
        self.exemplar_only = set(exemplar_only)
        self._keys, self._outs, self._memory = [], {}, []
        self.available = True

    @classmethod
    def unavailable(cls) -> "PreviousOutputCache":
        cache = cls()
        cache.available = False
        return cache

    def add(self, keys: torch.Tensor, out: dict, is_memory: bool) -> None:
        self._keys.append(keys.cpu())
        self._memory.append(torch.full((len(keys),), is_memory))
        for name, value in out.items():
            if value is not None and (is_memory or name not in self.exemplar_only):
                self._outs.setdefault(name, []).append(value.detach())

    def finish(self) -> "PreviousOutputCache":
        keys, is_memory = torch.cat(self._keys), torch.cat(self._memory)
        # a sample may come twice (exemplars concatenated into the data and in the memory): keep one
        self.sorted_keys, first = np.unique(keys.numpy(), return_index=True)
        self.sorted_keys = torch.from_numpy(self.sorted_keys)
        first = torch.from_numpy(first)
        # row of each key in the exemplar-only tables (memory items were added after the data, in
        # order), -1 for items outside the memory
        memory_rank = torch.cumsum(is_memory.long(), 0) - 1
        self.memory_row = torch.where(is_memory[first], memory_rank[first], torch.full_like(first, -1))
        self.tables = {}
        for name, parts in self._outs.items():
            table = torch.cat(parts)
            self.tables[name] = table if name in self.exemplar_only else table[first.to(table.device)]
        del self._keys, self._outs, self._memory
        return self

    def lookup(self, keys: torch.Tensor, exemplar: torch.Tensor) -> dict | None:
        """{name: outputs of the batch's items (of its ``exemplar`` items for the exemplar-only
        names)}, or None when an item is not in the cache."""
        if not self.available or not len(self.sorted_keys):
            return None
        pos = torch.searchsorted(self.sorted_keys, keys).clamp_max(len(self.sorted_keys) - 1)
        if not bool((self.sorted_keys[pos] == keys).all()):
            return None
        memory_rows = self.memory_row[pos[exemplar]]
        if self.exemplar_only and bool((memory_rows < 0).any()):
            return None
        found = {}
        for name, table in self.tables.items():
            index = memory_rows if name in self.exemplar_only else pos
            found[name] = table[index.to(table.device)]
        return found


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
        self._mb_keys = (None, None)  # (the batch, its array keys): see mb_keys
        #: per trained task: epochs run, and the epoch whose weights were kept (by validation) or None
        self.epochs_trained: list[dict] = []
        #: name -> :class:`Part`, in declaration order (see :meth:`add_part`)
        self.parts: dict[str, Part] = {}
        self.check_network(cfg)
        model = model if model is not None else self.build_model(cfg)
        train = cfg["train"]
        super().__init__(
            model=model,
            optimizer=make_optimizer(model.parameters(), train),
            train_mb_size=train["batch_size"],
            train_epochs=epochs_for_modality(cfg),
            eval_mb_size=train["eval_batch_size"],
            device=device,
            plugins=list(plugins or []),
            evaluator=EvaluationPlugin(),  # metrics come from our own evaluation (R matrix)
            eval_every=-1,
        )
        self.use_amp = bool(train["amp"]) and torch.device(device).type == "cuda"
        #: the run's :class:`avcl_bench.progress.TrainingProgress` (None: nothing shown); the
        #: runner sets it
        self.progress = None

    @property
    def whole_batches_only(self) -> bool:
        """``train.drop_last``: whole training batches only, the batch size capped by the size of
        the data (and so the exemplar batch, when replayed separately); the AV-CIL release's
        training loaders."""
        return self.cfg["train"]["drop_last"]

    #: the values of ``model.network`` this strategy builds (:meth:`build_model`), the first when
    #: it is null: the shared baselines run on the suite's transformer (``avnet``) or on the AV-CIL
    #: release's network (``avcil``, the network of every baseline of that release); a strategy
    #: with a network of its own narrows this (empty: its own network only, ``model.network`` null)
    networks: tuple = ("avnet", "avcil")

    # ---- construction hooks ----------------------------------------------------------------
    def add_part(self, name: str, part: Part | None):
        """Declare a part (None: the run has none, e.g. no memory in its protocol); returns it.
        ``name`` is its key in checkpoints."""
        if part is not None:
            self.parts[name] = part
        return part

    @classmethod
    def check_network(cls, cfg: dict) -> None:
        """``model.network`` must be null or one of :attr:`networks` (one line otherwise)."""
        network = cfg["model"]["network"]
        if network is not None and network not in cls.networks:
            builds = f"builds only {', '.join(cls.networks)}" if cls.networks else "builds its own network"
            raise ConfigError(
                f"config key 'model.network' is {network!r}, but strategy '{cls.name}' {builds}; "
                "leave model.network null for it"
            )

    @classmethod
    def build_model(cls, cfg: dict):
        """The network ``model.network`` names (null: the first of :attr:`networks`)."""
        network = cfg["model"]["network"] or cls.networks[0]
        # avcil: the AV-CIL release's IncreAudioVisualNet (model/audio_visual_model_incremental.py),
        # which fine_tuning/, LwF/, iCaRL/, SSIL/ of the release train
        return AVCILNet(cfg) if network == "avcil" else AVNet(cfg)

    def reported_modalities(self) -> list[str]:
        """The modalities whose accuracy matrix this strategy reports."""
        return [self.modality]

    # ---- Avalanche template overrides -----------------------------------------------------
    def _unpack_minibatch(self):
        batch = list(self.mbatch)
        # the batched loader puts each item's array key before the task labels (data/loading.py)
        keys = batch.pop(2) if len(batch) == 4 else None
        self.mbatch = to_device(batch, self.device)
        self._mb_keys = (self.mbatch, keys)

    @property
    def mb_keys(self) -> torch.Tensor | None:
        """The array keys of the current training batch's items (on the CPU), None when the batch
        came without them or ``mbatch`` was set by other means than the training loop."""
        batch, keys = self._mb_keys
        return keys if batch is self.mbatch else None

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
        for part in self.parts.values():
            part.before_training_exp(self)
        super()._before_training_exp(**kwargs)
        if self.progress is not None:
            self.progress.start_experience(self.task_id, self.train_epochs)

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
        return make_loader(
            dataset,
            batch_size or self.eval_mb_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.cfg["train"]["num_workers"],
            pin_memory=self.cfg["train"]["pin_memory"] and self.device.type == "cuda",
            batched=self.cfg["train"]["batched_loading"],
        )

    def new_training_data(self):
        """The part of the current experience's data trained on and offered to the memory (BiC
        holds some out)."""
        return self.experience.dataset

    def train_dataset_adaptation(self, **kwargs):
        dataset = self.new_training_data()
        for part in self.parts.values():
            dataset = part.train_dataset(self, dataset)
        self.adapted_dataset = dataset.train()

    def make_train_dataloader(
        self, num_workers=0, shuffle=True, pin_memory=None, persistent_workers=False, drop_last=False, **kwargs
    ):
        """The experience's training loader (replaces Avalanche's per-item DataLoader; same
        sampler, so the same batches), wrapped by the parts."""
        batch_size = self.train_mb_size
        if self.whole_batches_only:
            batch_size, drop_last = min(batch_size, len(self.adapted_dataset)), True
        loader = self._loader(self.adapted_dataset, batch_size, shuffle=shuffle, drop_last=drop_last)
        for part in self.parts.values():
            loader = part.train_loader(self, loader)
        self.dataloader = loader

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
    def dataset_logits(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over the seen classes (n, num_seen) and labels (n,) of a dataset, in eval mode, on
        the CPU."""
        was_training = self.model.training
        self.model.eval()
        logits, labels = [], []
        for batch in self._loader(dataset.eval()):
            with self.autocast():
                logits.append(self.model(to_device(batch[0], self.device))[:, : self.num_seen].float().cpu())
            labels.append(batch[1].cpu())
        self.model.train(was_training)
        return torch.cat(logits), torch.cat(labels)

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
    def selection_experiences(self) -> list:
        """The validation experiences that select the kept epoch and stop training
        (``train.select_on``): the current task's, or every seen task's (the AV-CIL release's,
        allowed under its protocol only: config.validate)."""
        if self.cfg["train"]["select_on"] == "seen":
            return self.val_experiences[: self.task_id + 1]
        return self.val_experiences[self.task_id : self.task_id + 1]

    def _before_training_epoch(self, **kwargs):
        super()._before_training_epoch(**kwargs)
        if self.clock.train_exp_epochs == 0:
            self._best_val = (-1.0, None)
            self._best_epoch = 0
            self._val_history = []  # each epoch's selection accuracy, recorded in epochs_trained
        self._epoch = self.clock.train_exp_epochs + 1
        patience = self.cfg["train"]["early_stop_patience"]
        done = self._epoch - 1
        if (
            patience
            and self._best_epoch
            and done >= self.cfg["train"]["early_stop_min_epochs"]
            and done - self._best_epoch >= patience
        ):
            # converged: `patience` epochs without a new best val accuracy (the best one is kept)
            self.stop_training()
            return
        self._loss_finite = torch.ones((), dtype=torch.bool, device=self.device)
        if self.progress is not None:
            try:
                steps = len(self.dataloader)
            except TypeError:  # a loader without a length: the bar counts without a total
                steps = None
            self.progress.start_epoch(self._epoch, self.train_epochs, steps)

    def _after_training_iteration(self, **kwargs):
        super()._after_training_iteration(**kwargs)
        if self.progress is not None:
            self.progress.step(self.loss)

    def backward(self):
        # a NaN/inf loss is noted on the device (no sync per step) and checked once per epoch
        self._loss_finite &= torch.isfinite(self.loss.detach()).all()
        super().backward()

    def check_finite(self, where: str) -> None:
        """Stop a diverged run: a non-finite loss this epoch or non-finite weights would otherwise
        end as a 'complete' run whose model predicts one class (and reports 0 forgetting)."""
        params = [p.detach() for p in self.model.parameters()]
        weights_ok = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
        loss_ok = bool(getattr(self, "_loss_finite", True))
        if not (loss_ok and weights_ok):
            what = "the loss" if not loss_ok else "the model's weights"
            raise TrainingDiverged(
                f"training diverged at task {self.task_id + 1}, {where}: {what} became NaN or infinite; "
                f"lower train.lr (now {self.cfg['train']['lr']:g})"
            )

    def _after_training_epoch(self, **kwargs):
        self.check_finite(f"epoch {self._epoch}")
        super()._after_training_epoch(**kwargs)
        acc = None
        if self.cfg["train"]["select_best_on_val"] and self.val_experiences:
            acc = self.pooled_accuracy(self.selection_experiences())
            self._val_history.append(round(acc, 4))
            if acc > self._best_val[0]:
                state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self._best_val = (acc, state)
                self._best_epoch = self._epoch
        if self.progress is not None:
            self.progress.end_epoch(val_acc=acc)

    def _after_training_exp(self, **kwargs):
        kept = None
        if self.cfg["train"]["select_best_on_val"] and getattr(self, "_best_val", (0, None))[1] is not None:
            self.model.load_state_dict(self._best_val[1])
            self._best_val = (-1.0, None)
            kept = self._best_epoch
        self.epochs_trained.append(
            {"epochs": int(self.clock.train_exp_epochs), "kept_epoch": kept, "val_acc": list(getattr(self, "_val_history", []))}
        )
        super()._after_training_exp(**kwargs)
        for part in self.parts.values():
            part.after_training_exp(self)
        self.check_finite("after its training stages")
        if self.progress is not None:
            self.progress.close()

    # ---- checkpoints at experience boundaries ------------------------------------------------
    #: A method's own state saved in checkpoints besides the model and the parts (which save
    #: themselves): names of attributes holding tensors, plain containers of those, modules built in
    #: ``__init__`` (their state dicts are kept), or random streams (``torch.Generator``, numpy
    #: ``RandomState``: their states are kept).
    checkpoint_attrs: tuple = ()

    def checkpoint_state(self) -> dict:
        """State dicts (never a pickle of the Avalanche template, which fails here)."""

        def pack(value):  # plain data only: checkpoints are read with weights_only=True
            if isinstance(value, torch.Generator):
                return {_GENERATOR_STATE: value.get_state()}
            if isinstance(value, torch.nn.Module):
                return {_MODULE_STATE: value.state_dict()}
            if isinstance(value, np.random.RandomState):
                return {_NUMPY_RNG_STATE: numpy_state_to_plain(value.get_state())}
            return value

        return {
            "model": self.model.state_dict(),
            "num_seen": self.num_seen,
            "num_old": self.num_old,
            "task_id": self.task_id,
            "epochs_trained": self.epochs_trained,
            "parts": {name: part.state_dict() for name, part in self.parts.items()},
            "attrs": {name: pack(getattr(self, name, None)) for name in self.checkpoint_attrs},
        }

    def load_checkpoint_state(self, state: dict, train_experiences) -> None:
        """Restore :meth:`checkpoint_state`; ``train_experiences`` re-link exemplar rows to data."""
        if "parts" not in state:
            raise ConfigError(
                "the checkpoint predates strategy parts (written by an older avcl-bench) and cannot "
                "be resumed: run again without --resume"
            )
        self.model.grow(state["num_seen"])
        self.model.load_state_dict(state["model"])
        self.model.to(self.device)
        self.num_seen, self.num_old, self.task_id = state["num_seen"], state["num_old"], state["task_id"]
        self.epochs_trained = list(state.get("epochs_trained", []))
        for name, part in self.parts.items():
            part.load_state_dict(state["parts"][name], self, train_experiences)
        for name, value in state["attrs"].items():
            if isinstance(value, dict) and _GENERATOR_STATE in value:
                getattr(self, name).set_state(value[_GENERATOR_STATE])
                continue
            if isinstance(value, dict) and _NUMPY_RNG_STATE in value:
                getattr(self, name).set_state(numpy_state_from_plain(value[_NUMPY_RNG_STATE]))
                continue
            if isinstance(value, dict) and _MODULE_STATE in value:  # into the module __init__ built
                getattr(self, name).load_state_dict(value[_MODULE_STATE])
                getattr(self, name).to(self.device)
                continue
            if isinstance(value, (torch.nn.Module, torch.Tensor)):  # checkpoints are loaded on the CPU
                value = value.to(self.device)
            setattr(self, name, value)

    def dataset_of_class(self, train_experiences, c: int):
        """The training dataset (of ``train_experiences``) that holds class ``c``."""
        return train_experiences[c // self.classes_per_task].dataset


class TrainingDiverged(UserError):
    """Training produced NaN or infinite values (typically a learning rate far too high)."""


#: marks a ``torch.Generator``'s state among the checkpointed attributes
_GENERATOR_STATE = "__generator_state__"
#: marks a module's state dict among the checkpointed attributes (loaded into the module the
#: strategy's ``__init__`` built; a module that grows restores its size from its extra state)
_MODULE_STATE = "__module_state__"
#: marks a numpy ``RandomState``'s state (as plain data) among the checkpointed attributes
_NUMPY_RNG_STATE = "__numpy_rng_state__"
