"""Reading a run's ``embeddings.npz`` (written at the end of a run by
:func:`avcl_bench.embeddings.export_embeddings`) for the t-SNE figures (CIGN Fig. 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load_npz(path: Path) -> dict:
    """{'labels', 'class_names', 'meta', 'embeddings': {modality: (N, D)}}."""
    with np.load(path, allow_pickle=False) as z:
        emb = {k[len("emb_") :]: z[k] for k in z.files if k.startswith("emb_")}
        meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        names = [str(c) for c in z["class_names"]] if "class_names" in z.files else []
        return {"labels": z["labels"], "class_names": names, "meta": meta, "embeddings": emb}
