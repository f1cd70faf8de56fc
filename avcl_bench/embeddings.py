"""Class-aware embeddings of a trained model on the first task's classes (CIGN Fig. 3).

Run directories do not store models, so the embeddings are exported at the end of a run, while
the trained strategy is still in memory, into ``<run_dir>/embeddings.npz``
(:func:`export_run_embeddings`, called by the runner); ``avcl-bench report`` then plots them
(t-SNE, or PCA where scikit-learn is missing) from the file alone
(:func:`avcl_bench.reporting.embeddings.load_npz`).

What is embedded: the strategy's own ``embed(x)`` when it defines one (the prompt methods: the
prompted feature the classifier sees), else ``model.embed(x)`` -- or ``model.embed(x, y)`` if it
takes the labels too -- when the model defines it (a tensor ``(B, D)`` or a dict
``{modality: (B, D)}``, e.g. CIGN's class-aware embedding g of each clip's ground-truth class per
modality), otherwise ``model.forward_features(x)`` (AVNet's CLS feature, for the AVNet-based
strategies).

The ``.npz`` holds ``labels`` (N,), ``class_names`` (K,), one ``emb_<modality>`` array (N, D) per
embedded modality, and ``meta`` (a JSON string: source method, strategy, run modality).
This module imports torch only inside :func:`export_embeddings`.
"""

from __future__ import annotations

import json
import os
from .rundir import temporary_beside
from pathlib import Path

import numpy as np

FILENAME = "embeddings.npz"


def _to_device(obj, device):
    import torch

    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return [_to_device(o, device) for o in obj]
    return obj


def _takes_labels(fn) -> bool:
    import inspect

    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2


def exposes_embeddings(strategy) -> bool:
    """Whether :func:`export_embeddings` finds an embedding on this strategy or its model."""
    model = strategy.model
    return any(
        callable(getattr(o, name, None))
        for o, name in ((strategy, "embed"), (model, "embed"), (model, "forward_features"))
    )


def export_embeddings(
    strategy_or_model,
    dataset,
    run_dir,
    *,
    class_names=None,
    batch_size: int = 128,
    max_items: int | None = None,
    device=None,
    filename: str = FILENAME,
) -> Path:
    """Embed ``dataset`` (items ``((audio, visual), label, ...)``) with the trained model and write
    ``run_dir/filename`` atomically. Returns the path.

    ``strategy_or_model``: an avcl-bench strategy (its ``.model`` and ``.device`` are used) or an
    ``nn.Module`` with ``embed(x)`` or ``forward_features(x)``.
    """
    import torch
    from torch.utils.data import DataLoader

    model = getattr(strategy_or_model, "model", strategy_or_model)
    if device is None:
        device = getattr(strategy_or_model, "device", None)
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    if model is not strategy_or_model and callable(getattr(strategy_or_model, "embed", None)):
        fn, source = strategy_or_model.embed, "strategy.embed"  # e.g. the prompted feature of L2P
    elif callable(getattr(model, "embed", None)):
        fn, source = model.embed, "embed"
        if _takes_labels(model.embed):  # embed(x, y): e.g. the class-aware embedding of the true class
            source = "embed(x, y)"
    elif callable(getattr(model, "forward_features", None)):
        fn, source = model.forward_features, "forward_features"
    else:
        raise TypeError(f"{type(model).__name__} has neither embed(x) nor forward_features(x)")
    if hasattr(dataset, "eval") and callable(dataset.eval):
        try:
            dataset = dataset.eval()
        except TypeError:
            pass
    feats: dict[str, list[np.ndarray]] = {}
    labels: list[np.ndarray] = []
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                x, y = _to_device(batch[0], device), batch[1]
                out = fn(x, _to_device(torch.as_tensor(y), device)) if source == "embed(x, y)" else fn(x)
                if not isinstance(out, dict):
                    out = {getattr(model, "modality", None) or "features": out}
                for m, v in out.items():
                    if isinstance(v, (tuple, list)):  # forward_features(return_blocks=True) style
                        v = v[0]
                    feats.setdefault(str(m), []).append(v.detach().float().reshape(v.shape[0], -1).cpu().numpy())
                labels.append(torch.as_tensor(y).cpu().numpy())
                seen += len(labels[-1])
                if max_items is not None and seen >= max_items:
                    break
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("export_embeddings: the dataset is empty")
    y_all = np.concatenate(labels)
    arrays = {f"emb_{m}": np.concatenate(v) for m, v in feats.items()}
    if max_items is not None:
        y_all = y_all[:max_items]
        arrays = {k: v[:max_items] for k, v in arrays.items()}
    if class_names is None:
        class_names = [str(c) for c in sorted(set(y_all.tolist()))]
    cfg = getattr(strategy_or_model, "cfg", None) or {}
    meta = {
        "source": source,
        "model": type(model).__name__,
        "strategy": (cfg.get("strategy") or {}).get("name") if isinstance(cfg, dict) else None,
        "run_modality": cfg.get("modality") if isinstance(cfg, dict) else None,
        "what": "test clips of the first task's classes, embedded by the final model",
    }
    return write_npz(Path(run_dir) / filename, labels=y_all, class_names=list(class_names), meta=meta, **arrays)


def write_npz(path: Path, *, labels, class_names, meta: dict | None = None, **embeddings) -> Path:
    """Atomic ``np.savez_compressed`` of an embeddings file (also used to build test fixtures)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_beside(path)  # follows the umask, as every file of a run folder
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(
                fh,
                labels=np.asarray(labels),
                class_names=np.asarray([str(c) for c in class_names]),
                meta=np.asarray(json.dumps(meta or {})),
                **{
                    k if k.startswith("emb_") else f"emb_{k}": np.asarray(v, dtype=np.float32)
                    for k, v in embeddings.items()
                },
            )
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
