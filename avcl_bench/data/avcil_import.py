"""``avcl-bench import-avcil``: a folder in the AV-CIL release's data layout -> a suite manifest.

The layout is the one the official release (weiguoPian/AV-CIL_ICCV2023) reads from
``data/<dataset>/`` (``ours/dataloader_ours.py``, ``IcaAVELoader.__init__``; the other methods'
loaders read the same files)::

    category_encode_dict.npy   {class name: integer code}; the code is the class index
    all_id_category_dict.npy   {'train' | 'val' | 'test': {video id: class name}}
    all_classId_vid_dict.npy   {'train' | 'val' | 'test': {class code: [video id, ...]}}
    audio_pretrained_feature/audio_pretrained_feature_dict.npy     {video id: (768,)}
    visual_pretrained_feature/visual_pretrained_feature_dict.npy   {video id: (1568, 768)}  (AVE)
      or visual_pretrained_feature/visual_features.h5              one dataset per id     (KS, VGGSound100)

Each ``.npy`` is a pickle saved by ``np.save`` (read with ``allow_pickle=True`` there); here every
one goes through the feature loader's restricted unpickler (``features.load_npy_object``), so a
crafted file is refused without running anything.

The release takes step ``t``'s training data as the lists ``all_classId_vid_dict[split][c]`` for
the step's class codes ``c`` in increasing order, and each clip's label as
``category_encode_dict[all_id_category_dict[split][vid]]`` (``current_step_data`` and
``__getitem__``). The manifest written keeps exactly that: class ``i`` of ``classes.csv`` is the
class with code ``i``, and ``splits.csv`` lists train, val, test, each class by class, each class's
clips in its list's order. Where the two dictionaries disagree there is no single reading, so the
import stops and names the clips.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from ..errors import ConfigError, DataError
from ..paths import DATASETS_DIR, name_problem
from .features import VISUAL_H5_FILE, VISUAL_NPY_FILE, feature_paths, load_npy_object

ENCODE_FILE = "category_encode_dict.npy"
BY_ID_FILE = "all_id_category_dict.npy"
BY_CLASS_FILE = "all_classId_vid_dict.npy"
SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "test")  # a run needs both; val is optional in the suite
#: visual tokens per clip are (T*P, D) in the release; its model splits them into T = 8 frames
#: (model/audio_visual_model_incremental.py: ``visual.view(visual.shape[0], 8, -1, 768)``)
RELEASE_VISUAL_FRAMES = 8


@dataclass(frozen=True)
class ReleaseDataset:
    """One of the release's datasets; its classes are those of the suite's manifest ``benchmark``."""

    name: str  # the release's --dataset value (run_incremental_*.sh), e.g. AVE
    folder: str  # its data folder in the release
    benchmark: str  # the suite's manifest with the same classes (datasets/<benchmark>.yaml)
    num_classes: int
    class_num_per_step: int
    memory_size: int
    lines: str  # where run_incremental_ours.sh sets the three values

    @property
    def num_tasks(self) -> int:
        # train_incremental_*.py: total_incremental_steps = num_classes // class_num_per_step
        return self.num_classes // self.class_num_per_step


#: The release's per-dataset protocol: num_classes, class_num_per_step and memory_size as
#: run_incremental_ours.sh sets them (afc, icarl and ssil set the same three values).
RELEASE_DATASETS = (
    ReleaseDataset("AVE", "data/AVE", "ave-ci", 28, 7, 340, "lines 4-7"),
    ReleaseDataset("ksounds", "data/kinetics-sounds", "ks-ci", 30, 6, 500, "lines 12-15"),
    ReleaseDataset("VGGSound_100", "data/VGGSound_100", "vs100-ci", 100, 10, 1500, "lines 20-23"),
)


def _first(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


# ----------------------------------------------------------------------------- split dictionaries


def _load_dict(path: Path, what: str) -> dict:
    obj = load_npy_object(path, kind="split dictionary")
    if not isinstance(obj, dict):
        found = f"an array of shape {obj.shape}" if isinstance(obj, np.ndarray) else type(obj).__name__
        raise DataError(f"{path}: expected a pickled dict {what}, found {found}")
    return obj


def _shown(value) -> str:
    """A value of a received file for a message: a short repr of a string or number, else its type
    (a list nested 100,000 deep has no repr within Python's recursion limit)."""
    if isinstance(value, (str, np.str_, int, float, np.integer, np.floating)) or value is None:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"a {type(value).__name__}"


def _as_code(value, path: Path, where: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{path}: {where}: class code {_shown(value)} is not an integer")
    return int(value)


def _split_part(doc: dict, split: str, path: Path) -> dict:
    if split not in doc:
        if split in REQUIRED_SPLITS:
            raise DataError(f"{path}: no '{split}' key (keys: {_first([repr(k) for k in doc])})")
        return {}
    part = doc[split]
    if not isinstance(part, dict):
        raise DataError(f"{path}: ['{split}'] is a {type(part).__name__}, expected a dict")
    return part


def _read_classes(enc_path: Path) -> list[str]:
    """The class names of ``category_encode_dict.npy`` in code order (codes 0..C-1, each once)."""
    enc = _load_dict(enc_path, "{class name: code}")
    by_code: dict[int, str] = {}
    for name, code in enc.items():
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            raise DataError(f"{enc_path}: class name {_shown(name)} is not a non-empty printable string")
        code = _as_code(code, enc_path, f"class {name!r}")
        if code in by_code:
            raise DataError(f"{enc_path}: classes {by_code[code]!r} and {name!r} share code {code}")
        by_code[code] = name
    if not by_code:
        raise DataError(f"{enc_path}: no classes")
    if sorted(by_code) != list(range(len(by_code))):
        bad = sorted(set(by_code) - set(range(len(by_code))))
        raise DataError(f"{enc_path}: codes must be 0..{len(by_code) - 1}, each once (found {bad[:3]})")
    return [by_code[c] for c in range(len(by_code))]


def _class_lists(listed: dict, split: str, classes: list[str], path: Path) -> dict[int, list]:
    """``all_classId_vid_dict[split]`` checked: integer codes of known classes -> lists of ids."""
    lists: dict[int, list] = {}
    for code, vids in listed.items():
        c = _as_code(code, path, f"['{split}']")
        if not 0 <= c < len(classes):
            raise DataError(f"{path}: ['{split}']: class code {c} is not one of {ENCODE_FILE}'s 0..{len(classes) - 1}")
        if not isinstance(vids, (list, tuple, np.ndarray)):
            raise DataError(f"{path}: ['{split}'][{c}] is a {type(vids).__name__}, expected a list of ids")
        lists[c] = list(vids)
    return lists


def _split_rows(
    split: str, labelled: dict, lists: dict[int, list], classes: list[str], first_split: dict[str, str], src: Path
) -> list[tuple[str, str, str]]:
    """One split's rows in the release's order: class codes ascending, each list in its order
    (``current_step_data``); the two dictionaries must agree on every clip."""
    cls_path = src / BY_CLASS_FILE
    rows, disagree, seen = [], [], set()
    for c in range(len(classes)):
        for vid in lists.get(c, []):
            if not isinstance(vid, (str, np.str_)):
                raise DataError(f"{cls_path}: ['{split}'][{c}]: id {_shown(vid)} is not a string")
            vid = str(vid)
            problem = name_problem(vid) or (None if vid.isprintable() else "contains a control character")
            if problem:
                raise DataError(f"{cls_path}: ['{split}'][{c}]: id {vid[:80]!r} {problem}")
            if vid in seen:
                raise DataError(f"{cls_path}: ['{split}']: id {vid!r} is listed twice")
            if vid in first_split:
                raise DataError(f"{cls_path}: id {vid!r} is in both '{first_split[vid]}' and '{split}'")
            seen.add(vid)
            first_split[vid] = split
            label = labelled.get(vid)
            if label != classes[c]:
                said = "has no entry" if label is None else f"says {_shown(label)}"
                disagree.append(f"{split}/{vid}: listed under {c} {classes[c]!r}, {BY_ID_FILE} {said}")
            rows.append((vid, classes[c], split))
    disagree += [f"{split}/{v}: missing from {BY_CLASS_FILE}" for v in labelled if str(v) not in seen]
    if disagree:
        raise DataError(
            f"{src}: {BY_CLASS_FILE} and {BY_ID_FILE} disagree on {len(disagree)} clip(s) of '{split}' "
            f"(first: {'; '.join(disagree[:3])})"
        )
    return rows


def read_release_splits(src: Path) -> tuple[list[str], list[tuple[str, str, str]], list[str]]:
    """``(classes in code order, rows (id, class name, split) in the release's order, notes)``."""
    enc_path, id_path, cls_path = src / ENCODE_FILE, src / BY_ID_FILE, src / BY_CLASS_FILE
    if not enc_path.is_file() and (src / "data").is_dir():
        found = sorted(p.parent.name for p in (src / "data").glob(f"*/{ENCODE_FILE}"))
        hint = f": pass one of its data folders ({', '.join(f'data/{f}' for f in found)})" if found else ""
        raise DataError(f"{enc_path} not found; {src} looks like the release's root{hint}")
    classes = _read_classes(enc_path)
    by_id = _load_dict(id_path, "{split: {id: class name}}")
    by_class = _load_dict(cls_path, "{split: {class code: [ids]}}")
    notes = []
    extra = sorted({str(k) for k in (*by_id, *by_class)} - set(SPLITS))
    if extra:
        notes.append(f"ignored keys (the release reads only {', '.join(SPLITS)}): {', '.join(extra)}")
    rows: list[tuple[str, str, str]] = []
    first_split: dict[str, str] = {}
    known = set(classes)
    for split in SPLITS:
        labelled = _split_part(by_id, split, id_path)
        for vid, name in labelled.items():
            if not isinstance(name, str) or name not in known:
                raise DataError(f"{id_path}: ['{split}'][{_shown(vid)}]: class {_shown(name)} is not in {ENCODE_FILE}")
        lists = _class_lists(_split_part(by_class, split, cls_path), split, classes, cls_path)
        rows += _split_rows(split, labelled, lists, classes, first_split, src)
    per_class = Counter((r[1], r[2]) for r in rows)
    nonempty = [s for s in SPLITS if any(r[2] == s for r in rows)]
    for split in nonempty if "train" in nonempty else ("train",):
        empty = [c for c in classes if not per_class[(c, split)]]
        if empty:
            raise DataError(f"{cls_path}: class {empty[0]!r} has no '{split}' clip ({len(empty)} such classes)")
    return classes, rows, notes


# ----------------------------------------------------------------------------- feature files


def _detect_visual_format(src: Path, requested: str | None) -> str:
    if requested:
        feature_paths(src, requested)  # checks the value
        return requested
    have = [fmt for fmt, rel in (("npy", VISUAL_NPY_FILE), ("h5", VISUAL_H5_FILE)) if (src / rel).is_file()]
    if len(have) == 2:
        raise ConfigError(f"{src} holds both {VISUAL_NPY_FILE} and {VISUAL_H5_FILE}: choose with --visual-format")
    if not have:
        raise DataError(f"no visual feature file in {src} (expected {VISUAL_NPY_FILE} or {VISUAL_H5_FILE})")
    return have[0]


def _shape_of(value, path: Path, vid: str) -> tuple[int, ...]:
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.number):
        raise DataError(f"{path}: id {vid} is not a numeric array")
    return tuple(int(v) for v in value.shape)


def _common_shape(shapes: dict[str, tuple], path: Path) -> tuple[int, ...]:
    counts = Counter(shapes.values())
    shape = counts.most_common(1)[0][0]
    odd = [vid for vid, s in shapes.items() if s != shape]
    if odd:
        raise DataError(
            f"{path}: {len(odd)} id(s) differ in shape from {shape} (first: {odd[0]} with {shapes[odd[0]]})"
        )
    return shape


def read_feature_shapes(
    src: Path, ids: list[str], visual_format: str, visual_frames: int | None
) -> tuple[dict, list[str]]:
    """``(features section of the manifest, ids missing from a feature file)``; every present
    entry's shape is checked against the others."""
    from .features import _load_npy_dict

    audio_path, visual_path = feature_paths(src, visual_format)
    audio = _load_npy_dict(audio_path)
    a_shapes = {vid: _shape_of(audio[vid], audio_path, vid) for vid in ids if vid in audio}
    if visual_format == "npy":
        visual = _load_npy_dict(visual_path)
        v_shapes = {vid: _shape_of(visual[vid], visual_path, vid) for vid in ids if vid in visual}
    else:
        v_shapes = _h5_shapes(visual_path, ids)
    missing = [vid for vid in ids if vid not in a_shapes or vid not in v_shapes]
    if len(missing) == len(ids):
        raise DataError(
            f"none of the {len(ids)} ids of the split dictionaries has both audio and visual features in {src}"
        )
    a = _common_shape(a_shapes, audio_path)
    if len(a) == 2 and a[0] == 1:
        a = a[1:]
    if len(a) != 1:
        raise DataError(f"{audio_path}: audio features have shape {a}, expected (D,) (one vector per clip)")
    v = _common_shape(v_shapes, visual_path)
    if len(v) == 3 and v[0] == 1:
        v = v[1:]  # (1, T*P, D): a batch dimension of one
    if len(v) == 2:  # (T*P, D), as the release stores VideoMAE's tokens
        frames = visual_frames or RELEASE_VISUAL_FRAMES
        if v[0] % frames:
            raise ConfigError(
                f"{visual_path}: {v[0]} visual tokens per clip are not divisible into {frames} frames "
                f"(set --visual-frames)"
            )
        shape = [frames, v[0] // frames, v[1]]
    elif len(v) == 3:
        if visual_frames and visual_frames != v[0]:
            raise ConfigError(
                f"{visual_path}: features have {v[0]} frames (shape {v}), --visual-frames says {visual_frames}"
            )
        shape = list(v)
    else:
        raise DataError(f"{visual_path}: visual features have shape {v}, expected (T*P, D) or (T, P, D)")
    return {"audio_dim": a[0], "visual_shape": shape, "visual_format": visual_format}, missing


def _h5_shapes(path: Path, ids: list[str]) -> dict[str, tuple]:
    import h5py

    if not path.is_file():
        raise DataError(f"feature file not found: {path}")
    try:
        h5 = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}") from None
    shapes = {}
    with h5:
        for vid in ids:
            try:
                obj = h5[vid] if vid in h5 else None
            except (RuntimeError, KeyError, OSError, ValueError) as exc:  # a damaged file's index
                raise DataError(f"cannot read {path}: id {vid}: {str(exc).splitlines()[0][:200]}") from None
            if obj is None:
                continue
            if not isinstance(obj, h5py.Dataset) or not np.issubdtype(obj.dtype, np.number):
                raise DataError(f"{path}: id {vid} is not a numeric dataset")
            shapes[vid] = tuple(int(s) for s in obj.shape)
    return shapes


# ----------------------------------------------------------------------------- the import


def release_classes(ds: ReleaseDataset) -> list[str]:
    """The class names of the release dataset ``ds`` in code order: the suite's manifest's class list
    (written from the release's category_encode_dict by scripts/convert_shared_metadata.py)."""
    import pandas as pd

    from .manifest import load_manifest

    path = DATASETS_DIR / load_manifest(ds.benchmark).doc["classes"]
    return pd.read_csv(path, dtype=str, keep_default_na=False)["name"].tolist()


def recognise(classes: list[str]) -> ReleaseDataset | None:
    """The release dataset whose classes, in code order, are ``classes``."""
    return next(
        (ds for ds in RELEASE_DATASETS if ds.num_classes == len(classes) and release_classes(ds) == classes), None
    )


def _positive(value, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option} must be a positive integer, got {value!r}")
    return value


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks (collections of scalars go in flow style by default)."""


_Dumper.add_representer(
    str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None)
)


def _csv_text(header: list[str], rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _write_all(files: dict[Path, str]) -> None:
    """Write every file beside itself first, then move each into place."""
    tmps = {}
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(text, encoding="utf-8", newline="")
            tmps[path] = tmp
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    except OSError as exc:
        raise DataError(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from None
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                tmp.unlink()


def _protocol(src: Path, classes: list[str], num_tasks, memory_total) -> tuple[dict, str, ReleaseDataset | None]:
    """``(protocols.av-cil section, where its values come from, the release dataset recognised)``."""
    release = recognise(classes)
    if release is None:
        lacking = [opt for opt, v in (("--num-tasks", num_tasks), ("--memory", memory_total)) if v is None]
        if lacking:
            raise ConfigError(
                f"{src}: its {len(classes)} classes are not those of one of the release's datasets, so "
                f"{' and '.join(lacking)} must be given (tasks; exemplars kept in total)"
            )
        origin = "given on the command line"
    else:
        origin = (
            f"the release's values for {release.name} ({release.folder}): num_classes {release.num_classes} / "
            f"class_num_per_step {release.class_num_per_step}, memory_size {release.memory_size}\n"
            f"(run_incremental_ours.sh {release.lines})"
        )
        if num_tasks is not None and num_tasks != release.num_tasks:
            origin += f"; num_tasks {num_tasks} given on the command line"
        if memory_total is not None and memory_total != release.memory_size:
            origin += f"; memory {memory_total} given on the command line"
        num_tasks = release.num_tasks if num_tasks is None else num_tasks
        memory_total = release.memory_size if memory_total is None else memory_total
    _positive(num_tasks, "--num-tasks")
    _positive(memory_total, "--memory")
    if len(classes) % num_tasks:
        raise ConfigError(f"{len(classes)} classes are not divisible into --num-tasks {num_tasks} equal tasks")
    section = {"num_tasks": num_tasks, "memory": {"total": memory_total}}
    if release:
        # names the strategies' per-dataset sections of the release's settings (protocols.av-cil.settings.<name>)
        section["settings"] = release.name
    return section, origin, release


def _drop(rows: list, missing: list[str], classes: list[str]) -> list:
    """``rows`` without the ids ``missing``; every class must keep a training clip."""
    gone = set(missing)
    rows = [r for r in rows if r[0] not in gone]
    left = Counter(r[1] for r in rows if r[2] == "train")
    empty = [c for c in classes if not left[c]]
    if empty:
        raise DataError(f"class {empty[0]!r} has no training clip with features ({len(missing)} ids missing)")
    return rows


def import_avcil(
    src: Path,
    name: str,
    out: Path | None = None,
    num_tasks: int | None = None,
    memory_total: int | None = None,
    visual_format: str | None = None,
    visual_frames: int | None = None,
    drop_missing: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write ``<out>/<name>.yaml`` and ``<out>/<name>/{classes,splits}.csv`` for the release-layout
    folder ``src`` (``out`` defaults to ``src``); returns the YAML's path. Nothing is written, and
    only the error's line is printed, when anything is wrong."""
    from .manifest import benchmark_names

    src = Path(src).expanduser()
    if not src.is_dir():
        raise DataError(f"import-avcil: {src} is not a folder")
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"--name {name[:80]!r} {problem}")
    if name in benchmark_names() or (DATASETS_DIR / name).exists():
        raise ConfigError(f"--name '{name}' is a built-in benchmark's name; choose another")
    if visual_frames is not None:
        _positive(visual_frames, "--visual-frames")
    out = Path(out).expanduser() if out else src
    yaml_path, folder = out / f"{name}.yaml", out / name
    existing = [p for p in (yaml_path, folder / "classes.csv", folder / "splits.csv") if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} exists: pass --overwrite to replace it")

    classes, rows, notes = read_release_splits(src)
    protocol, origin, release = _protocol(src, classes, num_tasks, memory_total)
    fmt = _detect_visual_format(src, visual_format)
    ids = [r[0] for r in rows]
    features, missing = read_feature_shapes(src, ids, fmt, visual_frames)
    if missing and not drop_missing:
        raise DataError(
            f"{len(missing)} of {len(ids)} ids of the split dictionaries have no audio or visual features "
            f"in {src} (first: {_first(missing)}); --drop-missing leaves them out"
        )
    if missing:
        rows = _drop(rows, missing, classes)
        notes.append(f"{len(missing)} ids without features left out (--drop-missing; first: {_first(missing)})")
    counts = {s: sum(1 for r in rows if r[2] == s) for s in SPLITS}
    doc = {
        "name": name,
        "title": f"{name}: {len(classes)} classes, {protocol['num_tasks']} tasks, from the AV-CIL release layout",
        "source": f"avcl-bench import-avcil {src.resolve()} ({ENCODE_FILE}, {BY_ID_FILE}, {BY_CLASS_FILE})",
        "citation": "Pian, Mo, Guo, Tian. Audio-Visual Class-Incremental Learning. ICCV 2023 (arXiv 2308.11073)",
        "classes": f"{name}/classes.csv",
        "splits": f"{name}/splits.csv",
        "num_classes": len(classes),
        "counts": counts,
        "protocols": {"av-cil": protocol},
        "default_protocol": "av-cil",
        "inputs": ["features"],
        "data_root": "." if out.resolve() == src.resolve() else str(src.resolve()),
        "features": features,
        "notes": "\n".join(
            [
                f"Class order = the integer codes of {ENCODE_FILE}; splits.csv lists train, val, test,",
                f"class by class, each class's clips in the order of {BY_CLASS_FILE} (the release's order).",
                f"Protocol av-cil: {protocol['num_tasks']} tasks, {protocol['memory']['total']} exemplars in total:",
                f"{origin}.",
                *notes,
            ]
        )
        + "\n",
    }
    header = "# Written by avcl-bench import-avcil; rerun it (with --overwrite) rather than editing.\n"
    _write_all(
        {
            yaml_path: header
            + yaml.dump(doc, Dumper=_Dumper, default_flow_style=None, sort_keys=False, allow_unicode=True, width=100),
            folder / "classes.csv": _csv_text(["index", "name"], list(enumerate(classes))),
            folder / "splits.csv": _csv_text(["id", "label", "split"], rows),
        }
    )
    found = f"the release's {release.name} (the suite's {release.benchmark})" if release else "not the release's"
    for line in (
        f"{src}: {len(classes)} classes (code 0: {classes[0]!r}; {found}), "
        f"train/val/test {counts['train']}/{counts['val']}/{counts['test']}",
        f"features: audio {features['audio_dim']}, visual {features['visual_shape']} ({fmt}); "
        f"{len(ids) - len(missing)} of {len(ids)} ids in both files" + (", the others left out" if missing else ""),
        f"protocol av-cil: {protocol['num_tasks']} tasks, {protocol['memory']['total']} exemplars in total",
        f"wrote {yaml_path} and {folder}/classes.csv, splits.csv",
        f"next: avcl-bench check --benchmark {yaml_path}",
    ):
        log(f"[import-avcil] {line}")
    return yaml_path
