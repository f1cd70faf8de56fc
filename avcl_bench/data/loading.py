"""Mini-batches read whole from the shared arrays, and the replay loader built on them.

Every clip's audio and visual arrays live in one pair of (memory-mapped) arrays shared by the
train, val and test splits (``datasets.load_data``). ``make_streams`` wraps each split into an
Avalanche dataset that carries, beside ``targets`` and ``targets_task_labels``, each item's row
in those arrays and which arrays they are (one ``array_rows`` attribute). Avalanche keeps
these attributes through every subset and concatenation (experiences, exemplar memories), so a
loader can read a whole mini-batch with one sorted fancy index instead of one Avalanche
``__getitem__`` per item: the per-item lookup was the suite's largest overhead against a plain
PyTorch loop (perf/README.md). Datasets without these attributes fall back to the per-item path.

A batch is ``[(audio, visual), labels, keys, task_labels]``: the layout Avalanche's collate gives
plus each item's ``array_rows`` value, a key unique to the sample, by which a strategy looks up
what it computed once per sample (``PreviousModel``); the strategy takes the keys out of the batch
before Avalanche's template reads it. The per-item path gives no keys.
"""

from __future__ import annotations

import itertools
import weakref

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .datasets import AVArrayDataset

ROWS = "array_rows"
#: an ``array_rows`` value is ``row << SOURCE_BITS | source token``: one attribute, one pass to read
SOURCE_BITS = 24

#: token (the low bits of an ``array_rows`` value) -> the AVArrayDataset whose arrays it names
#: (weak: a split lives as long as an Avalanche dataset over it does)
_SOURCES: "weakref.WeakValueDictionary[int, AVArrayDataset]" = weakref.WeakValueDictionary()
_TOKENS = itertools.count()


def as_avalanche(ds: AVArrayDataset):
    """Avalanche classification dataset over ``ds``: items ``((audio, visual), label, task=0)``,
    plus the row attributes the batched loader reads."""
    from avalanche.benchmarks.utils.classification_dataset import TaskAwareSupervisedClassificationDataset
    from avalanche.benchmarks.utils.data_attribute import DataAttribute

    token = next(_TOKENS) % (1 << SOURCE_BITS)
    _SOURCES[token] = ds
    n = len(ds)
    return TaskAwareSupervisedClassificationDataset(
        [ds],
        data_attributes=[
            DataAttribute(ds.targets, "targets"),
            DataAttribute([0] * n, "targets_task_labels", use_in_getitem=True),
            DataAttribute(((ds.index << SOURCE_BITS) | token).tolist(), ROWS),
        ],
    )


class RowBatches(Dataset):
    """A batched view of an Avalanche dataset built by :func:`as_avalanche` (or a subset or
    concatenation of such): ``__getitems__(positions)`` returns the collated batch."""

    def __init__(self, source: AVArrayDataset, coded: np.ndarray, targets: np.ndarray, tasks: np.ndarray):
        self.source, self.keys, self.targets, self.tasks = source, coded, targets, tasks
        self.rows = coded >> SOURCE_BITS

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        (a, v), y, _, t = self.__getitems__([i])
        return (a[0], v[0]), int(y[0]), int(t[0])

    def __getitems__(self, positions):
        pos = np.asarray(positions, dtype=np.int64)
        audio, visual = read_rows(self.source, self.rows[pos])
        keys = torch.from_numpy(self.keys[pos])
        return [(audio, visual), torch.from_numpy(self.targets[pos]), keys, torch.from_numpy(self.tasks[pos])]


def read_rows(source: AVArrayDataset, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """audio[rows], visual[rows] as tensors; a memory map is read in ascending row order."""
    order = np.argsort(rows, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    sorted_rows = rows[order]
    audio = np.asarray(source.audio[sorted_rows])[inverse]
    visual = np.asarray(source.visual[sorted_rows])[inverse]
    return torch.from_numpy(audio), torch.from_numpy(visual)


def batched_view(dataset) -> RowBatches | None:
    """The batched view of ``dataset``, or None when it cannot be read by rows (a dataset not
    built by :func:`as_avalanche`, transforms present, or rows from more than one array pair)."""
    if not hasattr(dataset, ROWS) or not hasattr(dataset, "targets") or _has_transforms(dataset):
        return None
    coded = np.fromiter(getattr(dataset, ROWS), dtype=np.int64, count=len(dataset))
    tokens = np.unique(coded & ((1 << SOURCE_BITS) - 1))
    sources = [_SOURCES.get(int(t)) for t in tokens]
    if not sources or any(s is None for s in sources):
        return None
    first = sources[0]
    if any(s.audio is not first.audio or s.visual is not first.visual for s in sources[1:]):
        return None
    targets = np.fromiter(dataset.targets, dtype=np.int64, count=len(dataset))
    # task labels are 0 throughout: as_avalanche builds class-incremental streams only
    return RowBatches(first, coded, targets, np.zeros(len(coded), dtype=np.int64))


def _has_transforms(dataset) -> bool:
    """True when the dataset's current transform group would change items (never in this suite:
    clips are decoded and transformed once into the cache)."""
    groups = getattr(getattr(dataset, "_flat_data", None), "_transform_groups", None)
    if groups is None:
        return False
    current = groups.transform_groups.get(groups.current_group)
    return current is not None and bool(getattr(current, "transforms", current))


def pass_through(batch):
    """collate_fn of a loader over :class:`RowBatches`: the batch is already collated."""
    return batch


def make_loader(
    dataset,
    batch_size: int,
    shuffle: bool = False,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    batched: bool = True,
) -> DataLoader:
    """A DataLoader over ``dataset``: batched row reads where possible, else per item.

    An unshuffled loader (evaluation, features, logits) gets a random stream of its own: every
    DataLoader pass draws a base seed from its generator even when it does not shuffle, and from
    the global torch stream that would make the training batches and draws that follow depend on
    how often the model was evaluated (per-epoch validation would change the training itself)."""
    view = batched_view(dataset) if batched else None
    options = dict(
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=None if shuffle else torch.Generator(),
    )
    if view is not None:
        return DataLoader(view, collate_fn=pass_through, **options)
    return DataLoader(dataset, **options)


def _cat(a, b):
    """Concatenate two collated batches (nested lists/tuples of tensors) along the batch axis."""
    if torch.is_tensor(a):
        return torch.cat([a, b], 0)
    return [_cat(x, y) for x, y in zip(a, b)]


class PairedReplayLoader:
    """New-data batches, each followed by a separately drawn exemplar batch.

    One epoch = one pass over ``new_loader``; the exemplar loader is reshuffled whenever it runs
    out (so a small memory is oversampled, as Avalanche's ReplayDataLoader does). The exemplars are
    appended after the new samples."""

    def __init__(self, new_loader: DataLoader, mem_loader: DataLoader | None):
        self.new_loader, self.mem_loader = new_loader, mem_loader
        self._mem_iter = None

    def __len__(self):
        return len(self.new_loader)

    def _next_mem(self):
        if self._mem_iter is None:
            self._mem_iter = iter(self.mem_loader)
        try:
            return next(self._mem_iter)
        except StopIteration:
            self._mem_iter = iter(self.mem_loader)
            return next(self._mem_iter)

    def __iter__(self):
        for batch in self.new_loader:
            if self.mem_loader is None:
                yield batch
            else:
                yield _cat(list(batch), list(self._next_mem()))
