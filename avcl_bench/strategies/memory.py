"""The exemplar memory and the exemplars' class means: parts shared by the rehearsal methods.

Two quota forms, as the two papers use them:
- ``per_class = m``: exactly m exemplars per old class (CIGN Sec. 4.1: 50 per class);
- ``total = M``: M exemplars split equally over the classes seen so far (AV-CIL: 340/500/1500;
  e.g. AVE keeps 48, 24, 16 per class after steps 1, 2, 3 — integer division, as the release).

Selection: ``random`` (a seeded draw) or ``herding`` (iCaRL Alg. 4, on L2-normalised features,
the first exemplar nearest to the class mean). The memory stores row positions into the
experiences' Avalanche datasets, so ``dataset()`` is an ordinary Avalanche dataset, replayed in one
of two ways: concatenated with the new data (``replay="concat"``: iCaRL, IL2M, BiC, PODNet, AFC,
CIGN) or drawn as a separate batch appended to every new-data batch (``replay="paired"``: SS-IL,
AV-CIL; :class:`~avcl_bench.data.loading.PairedReplayLoader`). Its random draws use its own
generator, seeded by the run's seed, which checkpoints keep.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.benchmarks.utils import concat_datasets

from ..data.loading import PairedReplayLoader
from ..errors import ConfigError
from ..rundir import numpy_state_from_plain, numpy_state_to_plain
from .base import Part


#: exemplar selections: random draws; herding of distinct clips (iCaRL Alg. 4); herding that may
#: pick a clip again, as the AV-CIL release's gen_step_exemplar_set (iCaRL/train_incremental_icarl.py
#: l.109-125: the argmin runs over every clip at every pick, none is set aside)
SELECTIONS = ("random", "herding", "herding_repeats")
HERDING = ("herding", "herding_repeats")


def herding_select(features: torch.Tensor, m: int, distinct: bool = True) -> list[int]:
    """iCaRL Alg. 4 (Rebuffi et al. 2017): greedily pick rows whose running mean best
    approximates the class mean of the L2-normalised features; returns row indices in pick order
    (``distinct=False``: a row may be picked again, the AV-CIL release's herding; still at most
    one pick per row of the class, as the release pads a class with fewer clips than the quota)."""
    feats = torch.nn.functional.normalize(features.float(), dim=1)
    mu = feats.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(feats), dtype=torch.bool)
    for k in range(1, min(m, len(feats)) + 1):
        # iCaRL Alg. 4: p_k = argmin_x || mu - (x + sum_{j<k} p_j) / k ||
        dist = ((mu - (feats + running) / k) ** 2).sum(1)
        if distinct:
            dist[~available] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        available[i] = False
        running += feats[i]
    return chosen


class ExemplarMemory(Part):
    """Class-balanced exemplar store over Avalanche datasets, replayed into training (a part).

    ``replay``: ``concat`` merges the exemplars into the new data; ``paired`` appends a separately
    drawn batch of ``batch_size`` exemplars to every new-data batch. After each experience the
    memory takes the classes of the data trained on (:meth:`AVCLStrategy.new_training_data`),
    selecting with ``feature_fn`` (herding; default: the strategy's ``extract_features``), and cuts
    the old classes to the quota."""

    def __init__(
        self,
        per_class: int | None = None,
        total: int | None = None,
        selection: str = "random",
        seed: int = 0,
        replay: str = "concat",
        batch_size: int | None = None,
        feature_fn=None,
    ):
        if not per_class and not total:
            raise ValueError("ExemplarMemory needs per_class or total")
        if selection not in SELECTIONS:
            raise ValueError(f"unknown exemplar selection '{selection}'")
        if replay not in ("concat", "paired") or (replay == "paired" and not batch_size):
            raise ValueError(f"exemplar replay must be concat or paired (with a batch size), got {replay!r}")
        self.per_class, self.total, self.selection = per_class, total, selection
        self.replay, self.batch_size, self.feature_fn = replay, batch_size, feature_fn
        self.rng = np.random.RandomState(seed)
        # class -> (dataset, ordered list of row positions); order = selection priority, so
        # shrinking the quota keeps the best-ranked exemplars (iCaRL Alg. 5).
        self.store: dict[int, tuple[object, list[int]]] = {}

    @classmethod
    def from_config(
        cls,
        cfg: dict,
        selection_key: str | None = None,
        required_by: str | None = None,
        fallback_per_class: int | None = None,
        **replay,
    ):
        """The memory of the run's protocol (``memory.per_class`` or ``memory.total``), or None when
        it has none: then ``fallback_per_class`` applies when given (CIGN), and a strategy that
        cannot run without a memory (``required_by``) stops with a ConfigError. The selection is
        ``strategy.<selection_key>`` (random without a key)."""
        mem = cfg["memory"]
        per_class, total = mem.get("per_class"), mem.get("total")
        if per_class is None and total is None:
            per_class = fallback_per_class
        if not per_class and not total:
            if required_by:
                raise ConfigError(
                    f"strategy '{required_by}' needs an exemplar memory: set memory.per_class or memory.total"
                )
            return None
        selection = cfg["strategy"].get(selection_key, "random") if selection_key else "random"
        if selection not in SELECTIONS:
            raise ConfigError(
                f"config key 'strategy.{selection_key}' must be one of {', '.join(SELECTIONS)}, got {selection!r}"
            )
        return cls(per_class or None, total or None, selection, seed=cfg["seed"], **replay)

    def quota(self, num_seen_classes: int) -> int:
        if self.per_class:
            return int(self.per_class)
        return int(self.total) // max(1, num_seen_classes)

    def replay_len(self) -> int:
        """Exemplars replayed in training."""
        q = self.quota(len(self.store)) if self.store else 0
        return sum(min(q, len(rows)) for _, rows in self.store.values())

    def __len__(self) -> int:
        """Exemplars held (a run's ``buffer_size``)."""
        return self.replay_len()

    @property
    def classes(self) -> list[int]:
        return sorted(self.store)

    def update(self, dataset, num_seen_classes: int, feature_fn=None) -> None:
        """Add the classes of ``dataset`` (one experience) and shrink old classes to the quota.

        ``feature_fn(dataset_subset) -> (n, d) tensor`` is required for herding.
        """
        q = self.quota(num_seen_classes)
        targets = np.asarray(list(dataset.targets))
        for c in sorted(set(targets.tolist())):
            rows = np.flatnonzero(targets == c)
            if self.selection in HERDING:
                if feature_fn is None:
                    raise ValueError("herding selection needs a feature function")
                feats = feature_fn(dataset.subset(rows.tolist()))
                order = [int(rows[i]) for i in self.herd(feats, q)]
            else:
                order = self.rng.permutation(rows)[:q].tolist()
            self.store[c] = (dataset, order)
        for c, (ds, rows) in list(self.store.items()):
            self.store[c] = (ds, rows[:q])

    def herd(self, features: torch.Tensor, m: int) -> list[int]:
        """The herding picks of this memory's selection (distinct clips, or the release's repeats)."""
        return herding_select(features, m, distinct=self.selection == "herding")

    def class_dataset(self, c: int):
        ds, rows = self.store[c]
        return ds.subset(rows)

    def dataset(self):
        """All exemplars as one Avalanche dataset (None when empty)."""
        if not self.store:
            return None
        return concat_datasets([self.class_dataset(c) for c in self.classes])

    # ---- the part's hooks -------------------------------------------------------------------------
    def train_dataset(self, strategy, dataset):
        if self.replay != "concat" or not self.replay_len():
            return dataset
        return concat_datasets([dataset, self.dataset()])

    def train_loader(self, strategy, loader):
        if self.replay != "paired" or not self.replay_len():
            return loader
        exemplars = self.dataset()
        # the exemplar batch capped by the memory's size (no change unless whole batches are required)
        memory_loader = strategy._loader(
            exemplars.train(), min(self.batch_size, len(exemplars)), shuffle=True, drop_last=strategy.whole_batches_only
        )
        return PairedReplayLoader(loader, memory_loader)

    def after_training_exp(self, strategy) -> None:
        feature_fn = (self.feature_fn or strategy.extract_features) if self.selection in HERDING else None
        self.update(strategy.new_training_data(), strategy.num_seen, feature_fn)

    def state_dict(self) -> dict:
        """Everything but the datasets (row positions per class; see :meth:`load_state_dict`)."""
        # plain ints: checkpoints are read with weights_only=True, which refuses numpy scalars
        return {
            "rng": numpy_state_to_plain(self.rng.get_state()),
            "rows": {int(c): [int(r) for r in rows] for c, (_, rows) in self.store.items()},
        }

    def load_state_dict(self, state: dict, strategy, train_experiences) -> None:
        self.rng.set_state(numpy_state_from_plain(state["rng"]))
        self.store = {
            int(c): (strategy.dataset_of_class(train_experiences, int(c)), list(rows))
            for c, rows in state["rows"].items()
        }


class ClassMeans(Part):
    """The means of each seen class's exemplar features, for nearest-mean-of-exemplars prediction
    (iCaRL Alg. 1; PODNet-NME; AFC's NME), recomputed after every experience (after the memory's
    update, so declare it after the memory).

    ``features(dataset) -> (n, D)`` gives the L2-normalised features to average (default: the
    strategy's ``extract_features``, normalised); ``renormalise`` normalises each mean again (iCaRL
    Alg. 1: mu_y = normalise(mean_p normalise(phi(p)))), as iCaRL and PODNet do and AFC does not."""

    def __init__(self, memory: ExemplarMemory, features=None, renormalise: bool = True):
        self.memory, self.features, self.renormalise = memory, features, renormalise
        #: (num_seen, D) on the strategy's device; None before the first experience ends
        self.means: torch.Tensor | None = None

    @torch.no_grad()
    def compute(self, strategy) -> torch.Tensor:
        """Means of the exemplars of every stored class below ``num_seen``, at the current quota;
        rows of classes without exemplars stay zero."""
        features = self.features or (lambda ds: F.normalize(strategy.extract_features(ds), dim=1))
        q = self.memory.quota(strategy.num_seen)
        means = torch.zeros(strategy.num_seen, strategy.model.dim)
        for c in self.memory.classes:
            if c < strategy.num_seen:
                ds, rows = self.memory.store[c]
                mean = features(ds.subset(rows[:q])).mean(0)
                means[c] = F.normalize(mean, dim=0) if self.renormalise else mean
        return means.to(strategy.device)

    @torch.no_grad()
    def compute_with_current_classes(self, strategy) -> torch.Tensor:
        """:meth:`compute`, plus the means of the current experience's classes (which have no
        exemplars yet) over the exemplars herding would pick for them from the experience's data
        with the current model: what the memory will hold if training stops here. The AV-CIL
        release's NME validation after every epoch (iCaRL/train_incremental_icarl.py l.235-238,
        gen_step_exemplar_set: old exemplars cut to the quota, features recomputed; the step's
        classes herded anew)."""
        features = self.features or (lambda ds: F.normalize(strategy.extract_features(ds), dim=1))
        means = self.compute(strategy)
        q = self.memory.quota(strategy.num_seen)
        dataset = strategy.new_training_data()
        targets = np.asarray(list(dataset.targets))
        rng = np.random.RandomState()  # a random memory's next draws, without taking them
        rng.set_state(self.memory.rng.get_state())
        for c in sorted(set(targets.tolist())):
            rows = np.flatnonzero(targets == c)
            if c in self.memory.store or not strategy.num_old <= c < strategy.num_seen:
                continue
            if self.memory.selection in HERDING:
                f = features(dataset.subset(rows.tolist()))
                f = f[self.memory.herd(f, q)]  # iCaRL Alg. 4 picks (with the release's repeats if so selected)
            else:  # the rows ExemplarMemory.update will draw
                f = features(dataset.subset(rng.permutation(rows)[:q].tolist()))
            mean = f.mean(0)  # iCaRL Alg. 1
            means[c] = (F.normalize(mean, dim=0) if self.renormalise else mean).to(means)
        return means

    def after_training_exp(self, strategy) -> None:
        self.means = self.compute(strategy)

    def state_dict(self) -> dict:
        return {"means": None if self.means is None else self.means.cpu()}

    def load_state_dict(self, state: dict, strategy, train_experiences) -> None:
        self.means = None if state["means"] is None else state["means"].to(strategy.device)
