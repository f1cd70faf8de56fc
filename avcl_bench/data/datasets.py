"""Torch datasets over decoded clips or pre-extracted features.

Both input forms end as arrays in memory-mapped ``.npy`` caches (decoded once, see ``clips.py``
and ``features.py``); a dataset is a view on those arrays plus integer labels in presentation
order. Items are ``((audio, visual), label)``; ``.targets`` is what Avalanche reads.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
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
    return LoadedData(parts["train"], parts["val"], parts["test"], classes, root, missing)
