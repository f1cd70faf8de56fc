"""Exemplar memory shared by the rehearsal methods.

Two quota forms, as the two papers use them:
- ``per_class = m``: exactly m exemplars per old class (CIGN Sec. 4.1: 50 per class);
- ``total = M``: M exemplars split equally over the classes seen so far (AV-CIL: 340/500/1500;
  e.g. AVE keeps 48, 24, 16 per class after steps 1, 2, 3 — integer division, as the release).

Selection: ``random`` (a seeded draw) or ``herding`` (iCaRL Alg. 4, on L2-normalised features,
the first exemplar nearest to the class mean). The memory stores row positions into the
experiences' Avalanche datasets, so ``dataset()`` is an ordinary Avalanche dataset that can be
concatenated with the new data (iCaRL, AV-CIL) or drawn from in separate batches (SS-IL).
"""

from __future__ import annotations

import numpy as np
import torch
from avalanche.benchmarks.utils import concat_datasets


def herding_select(features: torch.Tensor, m: int) -> list[int]:
    """iCaRL Alg. 4 (Rebuffi et al. 2017): greedily pick rows whose running mean best
    approximates the class mean of the L2-normalised features; returns row indices in pick order."""
    feats = torch.nn.functional.normalize(features.float(), dim=1)
    mu = feats.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(feats), dtype=torch.bool)
    for k in range(1, min(m, len(feats)) + 1):
        # iCaRL Alg. 4: p_k = argmin_x || mu - (x + sum_{j<k} p_j) / k ||
        dist = ((mu - (feats + running) / k) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        available[i] = False
        running += feats[i]
    return chosen


class ExemplarMemory:
    """Class-balanced exemplar store over Avalanche datasets."""

    def __init__(self, per_class: int | None = None, total: int | None = None, selection: str = "random",
                 seed: int = 0):
        if not per_class and not total:
            raise ValueError("ExemplarMemory needs per_class or total")
        if selection not in ("random", "herding"):
            raise ValueError(f"unknown exemplar selection '{selection}'")
        self.per_class, self.total, self.selection = per_class, total, selection
        self.rng = np.random.RandomState(seed)
        # class -> (dataset, ordered list of row positions); order = selection priority, so
        # shrinking the quota keeps the best-ranked exemplars (iCaRL Alg. 5).
        self.store: dict[int, tuple[object, list[int]]] = {}

    @classmethod
    def from_config(cls, cfg: dict, selection: str = "random"):
        mem = cfg["memory"]
        if not mem.get("per_class") and not mem.get("total"):
            return None
        return cls(mem.get("per_class"), mem.get("total"), selection, seed=cfg["seed"])

    def quota(self, num_seen_classes: int) -> int:
        if self.per_class:
            return int(self.per_class)
        return int(self.total) // max(1, num_seen_classes)

    def __len__(self) -> int:
        q = self.quota(len(self.store)) if self.store else 0
        return sum(min(q, len(rows)) for _, rows in self.store.values())

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
            if self.selection == "herding":
                if feature_fn is None:
                    raise ValueError("herding selection needs a feature function")
                feats = feature_fn(dataset.subset(rows.tolist()))
                order = [int(rows[i]) for i in herding_select(feats, q)]
            else:
                order = self.rng.permutation(rows)[:q].tolist()
            self.store[c] = (dataset, order)
        for c, (ds, rows) in list(self.store.items()):
            self.store[c] = (ds, rows[:q])

    def class_dataset(self, c: int):
        ds, rows = self.store[c]
        return ds.subset(rows)

    def dataset(self):
        """All exemplars as one Avalanche dataset (None when empty)."""
        if not self.store:
            return None
        return concat_datasets([self.class_dataset(c) for c in self.classes])

    def state(self) -> dict:
        """Everything but the datasets (row positions per class; see :meth:`restore`)."""
        return {"per_class": self.per_class, "total": self.total, "selection": self.selection,
                "rng": self.rng.get_state(), "rows": {c: list(rows) for c, (_, rows) in self.store.items()}}

    @classmethod
    def restore(cls, state: dict, dataset_of_class) -> "ExemplarMemory":
        """Inverse of :meth:`state`; ``dataset_of_class(c)`` gives the dataset the rows index."""
        mem = cls(state["per_class"], state["total"], state["selection"])
        mem.rng.set_state(state["rng"])
        mem.store = {int(c): (dataset_of_class(int(c)), list(rows)) for c, rows in state["rows"].items()}
        return mem
