"""``avcl-bench check``: validate a benchmark before any training, and create no run folder.

It reads the manifest and its CSVs as a run would, then reports what a run would only find out
late (or never): clips per class and split, classes with too few clips, a declared ``num_classes``
that the labels do not match (naming the stray labels), classes not divisible into the protocol's
tasks, clip ids missing on disk or from the feature files, and, with ``--decode``, clips that do not
decode. It prints the class order and each task's classes. Exit 0 when nothing is wrong, 2 with
the list of problems otherwise.
"""

from __future__ import annotations

from pathlib import Path

#: fewer training clips than this in a class is a problem (nothing to learn from, no exemplar to keep)
MIN_TRAIN_CLIPS = 2


def _class_table(manifest, classes: list[str]) -> tuple[list[str], list[str]]:
    """(table lines, problems) of the clips per class and split."""
    import pandas as pd

    splits = manifest.splits
    counts = pd.crosstab(splits["label"], splits["split"]).reindex(
        index=range(len(classes)), columns=["train", "val", "test"], fill_value=0
    )
    width = max(len(c) for c in classes)
    lines = [f"  {'class':<{width}}  train    val   test"]
    problems = []
    for idx, name in enumerate(classes):
        tr, va, te = (int(counts.loc[idx, s]) for s in ("train", "val", "test"))
        lines.append(f"  {name:<{width}}  {tr:5d}  {va:5d}  {te:5d}")
        if tr < MIN_TRAIN_CLIPS:
            problems.append(f"class '{name}' has {tr} training clip(s) (at least {MIN_TRAIN_CLIPS} needed)")
        if te == 0:
            problems.append(f"class '{name}' has no test clip: its accuracy cannot be measured")
    total = counts.sum()
    lines.append(f"  {'total':<{width}}  {int(total['train']):5d}  {int(total['val']):5d}  {int(total['test']):5d}")
    return lines, problems


def _declared_class_count(manifest, classes: list[str]) -> list[str]:
    """A declared ``num_classes`` against the labels found (a typo makes one more class)."""
    declared = manifest.doc.get("num_classes")
    if declared is None or declared == len(classes):
        return []
    per_class = manifest.splits["label"].value_counts()
    rare = sorted(range(len(classes)), key=lambda c: (int(per_class.get(c, 0)), classes[c]))
    extra = len(classes) - declared
    named = ", ".join(f"'{classes[c]}' ({int(per_class.get(c, 0))} clips)" for c in rare[: max(1, extra)])
    return [f"manifest declares num_classes {declared}, the labels give {len(classes)}; fewest clips: {named}"]


def _missing_ids(manifest, cfg) -> tuple[list[str], list[str]]:
    """(report lines, problems) for the ids not found under the data root."""
    ids = manifest.splits["id"].tolist()
    root = manifest.data_root
    if root is None:
        env = manifest.doc.get("data_root_env")
        return [], [f"no data root: pass --data-root{f' (or set ${env})' if env else ''}"]
    if not Path(root).is_dir():
        return [], [f"data root {root} does not exist or is not a directory"]
    if cfg["input"] == "features":
        from .data.features import _load_npy_dict, feature_paths

        audio_path, visual_path = feature_paths(root, cfg["features"]["visual_format"])
        present = set(_load_npy_dict(audio_path))
        if cfg["features"]["visual_format"] == "npy":
            present &= set(_load_npy_dict(visual_path))
        else:
            import h5py

            with h5py.File(visual_path, "r") as h5:
                present &= set(h5.keys())
        missing = [i for i in ids if i not in present]
        where = f"the feature files in {root}"
    else:
        from .data.clips import find_clip

        missing = [i for i in ids if find_clip(Path(root), i) is None]
        where = str(root)
    lines = [f"clips found: {len(ids) - len(missing)} of {len(ids)} under {where}"]
    if not missing:
        return lines, []
    first = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return lines, [f"{len(missing)} of {len(ids)} ids missing from {where} (first: {first})"]


def _decode(manifest, cfg, how_many: int | None) -> tuple[list[str], list[str]]:
    """Decode the first ``how_many`` clips (all with None) as a run would; problems name the file."""
    from .data.clips import AudioSpec, VisualSpec, decode_clip, find_clip
    from .errors import DataError

    audio = AudioSpec(**cfg["clips"]["audio"])
    visual = VisualSpec(**cfg["clips"]["visual"])
    ids = manifest.splits["id"].tolist()[:how_many]
    problems, done = [], 0
    for vid in ids:
        path = find_clip(Path(manifest.data_root), vid)
        if path is None:
            continue
        try:
            decode_clip(path, audio, visual)
            done += 1
        except DataError as exc:
            problems.append(str(exc))
    return [f"decoded: {done} of {len(ids)} clips"], problems


def input_sizes(cfg: dict) -> str:
    """The input sizes a run of this config trains on (its profile's, or the manifest's own where
    it sets them): what the encoders see and what dominates a run's cost."""
    where = f"input sizes (profile {cfg['profile']})"
    if cfg["input"] == "features":
        f = cfg["features"]
        return f"{where}: audio features {f['audio_dim']}-d, visual tokens {' x '.join(map(str, f['visual_shape']))}"
    a, v = cfg["clips"]["audio"], cfg["clips"]["visual"]
    return (
        f"{where}: audio {a['duration']:g} s at {a['sample_rate']} Hz, "
        f"visual {v['num_frames']} frame(s) of {v['size']} x {v['size']} px"
    )


def check_benchmark(benchmark: str, overrides: dict, decode: str | None = None, out=print) -> int:
    """Print the report of ``benchmark`` (see the module docstring); 0 if sound, 2 otherwise."""
    from .data.datasets import presentation_order
    from .runner import build_config

    cfg, manifest = build_config("finetune", benchmark, overrides)
    cfg["progress"] = False
    manifest.materialize(cfg)
    order = presentation_order(len(manifest.classes), cfg["class_order_seed"])
    classes = [manifest.classes[c] for c in order]
    num_tasks = cfg["num_tasks"]
    out(
        f"benchmark {manifest.name} ({manifest.path}): {len(classes)} classes, protocol {cfg['protocol']}, "
        f"{num_tasks} tasks, input {cfg['input']}, data root {manifest.data_root}"
    )
    out(input_sizes(cfg))
    table, problems = _class_table(manifest, manifest.classes)
    out("clips per class and split:")
    for line in table:
        out(line)
    problems += _declared_class_count(manifest, manifest.classes)
    if len(classes) % num_tasks:
        problems.append(f"{len(classes)} classes are not divisible into {num_tasks} tasks")
    else:
        per_task = len(classes) // num_tasks
        out("class order and tasks:")
        for t in range(num_tasks):
            out(f"  task {t + 1}: {', '.join(classes[t * per_task : (t + 1) * per_task])}")
    lines, missing = _missing_ids(manifest, cfg)
    for line in lines:
        out(line)
    problems += missing
    if decode and cfg["input"] == "clips" and not missing and manifest.data_root is not None:
        lines, bad = _decode(manifest, cfg, None if decode == "all" else int(decode))
        for line in lines:
            out(line)
        problems += bad
    if problems:
        out(f"{len(problems)} problem(s):")
        for p in problems:
            out(f"  - {p}")
        return 2
    out("no problems found")
    return 0
