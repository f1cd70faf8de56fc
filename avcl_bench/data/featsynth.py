"""A small benchmark in the AV-CIL feature layout, generated from a seed.

Writes ``<out>/audio_pretrained_feature/...``, ``<out>/visual_pretrained_feature/...`` (see
``features.py``), ``<out>/classes.csv``, ``<out>/splits.csv`` and ``<out>/<name>.yaml``, a user
manifest that ``avcl-bench run --benchmark <out>/<name>.yaml`` accepts. Used by the tests of every
strategy's feature input form and by ``avcl-bench generate avcil-features --classes N``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from .features import write_avcil_features


def generate_feature_benchmark(
    out: Path,
    num_classes: int = 8,
    num_tasks: int = 4,
    clips: dict | None = None,
    audio_dim: int = 32,
    visual_shape=(2, 4, 16),
    visual_format: str = "npy",
    seed: int = 0,
    memory: dict | None = None,
    name: str = "feat-synth",
) -> Path:
    """Generate features + manifest; returns the manifest YAML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clips = clips or {"train": 12, "val": 3, "test": 4}
    rows = []
    for split, n in clips.items():
        for c in range(num_classes):
            rows += [{"id": f"{split}_{c:03d}_{i:03d}", "label": f"class_{c:03d}", "split": split} for i in range(n)]
    splits = pd.DataFrame(rows)
    write_avcil_features(
        out,
        splits["id"].tolist(),
        [int(s[6:]) for s in splits["label"]],
        audio_dim,
        tuple(visual_shape),
        visual_format,
        seed=seed,
    )
    pd.DataFrame({"index": range(num_classes), "name": [f"class_{c:03d}" for c in range(num_classes)]}).to_csv(
        out / "classes.csv", index=False
    )
    splits.to_csv(out / "splits.csv", index=False)
    doc = {
        "name": name,
        "title": f"generated AV-CIL-format features ({num_classes} classes)",
        "classes": "classes.csv",
        "splits": "splits.csv",
        "num_classes": num_classes,
        "protocols": {"default": {"num_tasks": num_tasks, "memory": memory or {"per_class": 3}}},
        "inputs": ["features"],
        "data_root": ".",
        "features": {"audio_dim": audio_dim, "visual_shape": list(visual_shape), "visual_format": visual_format},
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
