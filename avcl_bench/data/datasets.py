"""Torch datasets over decoded clips or pre-extracted features.

Both input forms end as arrays in memory-mapped ``.npy`` caches (decoded once, see ``clips.py``
and ``features.py``); a dataset is a view on those arrays plus integer labels in presentation
order. Items are ``((audio, visual), label)``; ``.targets`` is what Avalanche reads.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .manifest import Manifest


class AVArrayDataset(Dataset):
    """``((audio[i], visual[i]), label[i])`` for the rows ``index`` of shared arrays."""

    def __init__(self, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray, index: np.ndarray):
        self.audio = audio
        self.visual = visual
        self.index = np.asarray(index, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)[self.index]
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        j = self.index[i]
        a = torch.from_numpy(np.array(self.audio[j]))
        v = torch.from_numpy(np.array(self.visual[j]))
        return (a, v), int(self.labels[i])

    def subset(self, rows) -> "AVArrayDataset":
        """A dataset over some of this dataset's rows (positions in this dataset)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = AVArrayDataset.__new__(AVArrayDataset)
        out.audio, out.visual = self.audio, self.visual
        out.index = self.index[rows]
        out.labels = self.labels[rows]
        out.targets = out.labels.tolist()
        return out


@dataclass
class LoadedData:
    train: AVArrayDataset
    val: AVArrayDataset
    test: AVArrayDataset
    classes: list[str]  # in presentation order: label i is classes[i]
    data_root: Path | None
    missing: int  # clips listed but not found (only with allow_missing)
    #: what the data is (data_fingerprint): checkpoints carry it, --resume refuses other data
    fingerprint: dict = field(default_factory=dict)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_fingerprint(classes: list[str], splits, source_files: list) -> dict:
    """The identity of a run's data (issue #22): the class list in presentation order, the split
    rows (id, label, split), and each source clip's or feature file's name, size and modification
    time, as digests, with the rows per split so that a refusal can say what changed."""
    rows = [[str(i), int(lab), str(sp)] for i, lab, sp in zip(splits["id"], splits["label"], splits["split"])]
    return {
        "classes": _digest(list(classes)),
        "splits": _digest(rows),
        "files": _digest(source_files),
        "rows": {sp: int((splits["split"] == sp).sum()) for sp in ("train", "val", "test")},
        "num_files": len(source_files),
    }


def fingerprint_changes(saved: dict, now: dict) -> list[str]:
    """What differs between two :func:`data_fingerprint` values, in words (empty: the same data)."""
    changes = []
    if saved.get("classes") != now.get("classes"):
        changes.append("the class list")
    if saved.get("splits") != now.get("splits"):
        a, b = saved.get("rows", {}), now.get("rows", {})
        counts = "/".join(str(a.get(k, "?")) for k in ("train", "val", "test"))
        counts_now = "/".join(str(b.get(k, "?")) for k in ("train", "val", "test"))
        changes.append(f"the split rows (ids, labels or splits; train/val/test rows {counts} -> {counts_now})")
    if saved.get("files") != now.get("files"):
        changes.append(
            f"the source files ({saved.get('num_files', '?')} -> {now.get('num_files', '?')} files; "
            "a size or modification time changed)"
        )
    return changes


def presentation_order(num_classes: int, class_order_seed: int | None) -> list[int]:
    """Official order, or a permutation drawn from its own seed (kept apart from the training seed)."""
    if class_order_seed is None:
        return list(range(num_classes))
    return np.random.RandomState(class_order_seed).permutation(num_classes).tolist()


def load_data(manifest: Manifest, cfg: dict) -> LoadedData:
    """manifest -> arrays (decoded / loaded once, cached) -> train/val/test datasets."""
    splits = manifest.splits
    order = presentation_order(len(manifest.classes), cfg["class_order_seed"])
    remap = np.empty(len(order), dtype=np.int64)
    remap[order] = np.arange(len(order))  # official index -> presentation label
    classes = [manifest.classes[c] for c in order]
    ids = splits["id"].tolist()
    root = manifest.data_root
    # clips.cache: false keeps decoded arrays in a throw-away folder instead of the shared cache.
    cache = None if cfg["clips"].get("cache", True) else Path(tempfile.mkdtemp(prefix="avcl-nocache-"))
    if cfg["input"] == "features":
        from .features import load_avcil_features

        if root is None:
            raise DataError(f"benchmark '{manifest.name}' needs --data-root (AV-CIL feature directory)")
        f = cfg["features"]
        arrays = load_avcil_features(
            root,
            ids,
            f["audio_dim"],
            tuple(f["visual_shape"]),
            f["visual_format"],
            cache_dir=cache,
            dtype=f["dtype"],
            progress=cfg["progress"],
        )
        audio, visual, kept = arrays.audio, arrays.visual, ids
        missing = 0
    else:
        from .clips import AudioSpec, VisualSpec, preprocess_clips

        if root is None:
            env = manifest.doc.get("data_root_env")
            hint = f" (or set ${env})" if env else ""
            raise DataError(f"benchmark '{manifest.name}' needs --data-root{hint}: the folder of its clips")
        if not Path(root).is_dir():
            raise DataError(f"data root not found: {root}")
        arrays = preprocess_clips(
            root,
            ids,
            AudioSpec.from_dict(cfg["clips"]["audio"]),
            VisualSpec.from_dict(cfg["clips"]["visual"]),
            cache_dir=cache,
            allow_missing=cfg["allow_missing"],
            progress=cfg["progress"],
        )
        audio, visual, kept = arrays.audio, arrays.visual, list(arrays.ids)
        missing = len(arrays.missing)
    pos = {vid: i for i, vid in enumerate(kept)}
    rows = splits[splits["id"].isin(pos)]
    labels = np.empty(len(kept), dtype=np.int64)
    labels[[pos[v] for v in rows["id"]]] = remap[rows["label"].to_numpy()]
    parts = {}
    for split in ("train", "val", "test"):
        idx = np.array([pos[v] for v in rows.loc[rows.split == split, "id"]], dtype=np.int64)
        parts[split] = AVArrayDataset(audio, visual, labels, idx)
    for c in range(len(classes)):
        if not (parts["train"].labels == c).any():
            raise DataError(f"class '{classes[c]}' has no training clip left after skipping missing clips")
    fingerprint = data_fingerprint(classes, splits, arrays.source_files)
    return LoadedData(parts["train"], parts["val"], parts["test"], classes, root, missing, fingerprint)
