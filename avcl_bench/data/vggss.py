"""VGG-Sound Sources (CIGN's large-scale benchmark): the class list and the split preparation.

What the official metadata gives
--------------------------------
CIGN's release lists 144,000 training-pool ids (``vggss_144k.txt``) *without* labels, and the
VGG-Sound Sources test annotation (``vggss.json``: 5,158 clips with a class and boxes). The suite
keeps both as package data, converted once by ``scripts/convert_shared_metadata.py``:

* ``datasets/vggsound-sources/ids.csv`` (column ``id``): the 144,000 pool ids;
* ``datasets/vggsound-sources/test_annotated.csv`` (``id,label``): the 5,158 annotated clips, as
  published (all 221 class names, see below);
* ``datasets/vggsound-sources/classes.csv`` (``index,name``): the 220 classes of the benchmark, in
  the presentation order (a permutation drawn with ``class_order_seed = 0``).

220 or 221 classes: the decision
--------------------------------
The CIGN paper says "220 categories"; ``vggss.json`` names 221. Evidence gathered from the
metadata (numbers reproduced by the conversion script):

* the official heard/unheard test split of VGG-Sound Sources (``vggss_heard_test.csv``,
  2,564 clips, and ``vggss_unheard_test.csv``, 2,575 clips) covers exactly 110 + 110 = 220
  classes with no overlap. The 19 clips it leaves out are exactly all the clips of one class,
  ``singing choir``, which belongs to neither half;
* nothing else singles out a class: all 221 names are lower-case, in VGGSound's label style,
  no two names differ only by spelling/punctuation, and the smallest classes have 10 clips (7 classes);
  ``singing choir`` itself has 19 clips, so "a class with very few clips" does not single out
  another candidate;
* 220 = 4 x 55 gives the four equal tasks of CIGN's protocol; 221 = 13 x 17
  cannot be split into 4 equal tasks.

Decision: the benchmark uses the 220 classes of the heard/unheard split, i.e. the 221 names of
``vggss.json`` minus ``singing choir`` (:data:`EXCLUDED_CLASSES`). ``test_annotated.csv`` keeps
the 19 ``singing choir`` rows as published; they are outside the benchmark's class list.

Labels of the pool
------------------
The labels of the 144k ids come from the user's VGGSound annotation CSV (``vggsound.csv``: rows
``ytid,start_seconds,label,split``, no header). :func:`prepare_vggsound_sources` joins the pool
with it (clip id ``f"{ytid}_{int(start):06d}"``), keeps the clips whose label is one of the 220
classes and splits every class 0.8/0.1/0.1 into train/val/test, deterministically from a seed.
The VGGSound train/test column is ignored (the paper re-splits 0.8/0.1/0.1).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
from collections import Counter
from pathlib import Path
from typing import Iterable

from .. import paths
from ..errors import DataError
from ..rundir import temporary_beside

BENCHMARK = "vggsound-sources"
#: Class name of ``vggss.json`` that is not part of the 220-class benchmark (see module docstring).
EXCLUDED_CLASSES: tuple[str, ...] = ("singing choir",)
#: train/val/test ratios of CIGN's protocol (Section 4.1).
SPLIT_RATIOS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
SPLITS: tuple[str, ...] = ("train", "val", "test")


def permute_classes(names: Iterable[str], seed: int) -> list[str]:
    """The presentation order: the names sorted, then shuffled by ``random.Random(seed)``.

    Python's ``random.Random`` with an integer seed gives the same sequence on every platform and
    Python 3 version, so the order written into ``classes.csv`` can be re-derived.
    """
    order = sorted(set(names))
    random.Random(seed).shuffle(order)
    return order


def clip_id(ytid: str, start: int) -> str:
    """VGGSound clip id as used by the CIGN/VGG-SS lists: ``<ytid>_<start, 6 digits>``."""
    return f"{ytid}_{int(start):06d}"


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) sizes for a class of ``n`` clips: val and test = round(0.1 n)."""
    n_val = math.floor(n * SPLIT_RATIOS["val"] + 0.5)
    n_test = math.floor(n * SPLIT_RATIOS["test"] + 0.5)
    return n - n_val - n_test, n_val, n_test


def _package_file(name: str) -> Path:
    return Path(paths.DATASETS_DIR) / BENCHMARK / name


def _read_package_column(path: Path, columns: list[str]) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"package data file not found: {path} (reinstall avcl-bench)")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != columns:
            raise DataError(f"{path}: expected columns {','.join(columns)}, got {header}")
        return [row for row in reader if row]


def load_classes() -> list[str]:
    """The 220 class names in presentation order (``datasets/vggsound-sources/classes.csv``)."""
    path = _package_file("classes.csv")
    rows = _read_package_column(path, ["index", "name"])
    if [int(r[0]) for r in rows] != list(range(len(rows))):
        raise DataError(f"{path}: column 'index' must be 0..{len(rows) - 1} in order")
    return [r[1] for r in rows]


def load_pool_ids() -> list[str]:
    """The 144,000 training-pool ids (``datasets/vggsound-sources/ids.csv``)."""
    return [r[0] for r in _read_package_column(_package_file("ids.csv"), ["id"])]


def _parse_start(value: str) -> int | None:
    value = value.strip()
    try:
        return int(value)
    except ValueError:
        pass
    try:
        f = float(value)
    except ValueError:
        return None
    return int(f) if f.is_integer() and f >= 0 else None


def read_annotation_csv(annotation_csv: Path) -> tuple[dict[str, str], dict[str, int]]:
    """Read VGGSound's annotation CSV into ``{clip id: label}`` (first row wins for a repeated id).

    Returns the mapping and statistics (rows, repeated ids, repeated ids with another label).
    A missing, unreadable or malformed file raises :class:`DataError` naming the file.
    """
    path = Path(annotation_csv)
    if not path.is_file():
        raise DataError(f"VGGSound annotation CSV not found: {path}")
    labels: dict[str, str] = {}
    stats = {"rows": 0, "repeated_ids": 0, "repeated_ids_other_label": 0}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                line = reader.line_num
                if len(row) != 4:
                    raise DataError(
                        f"{path}: line {line}: expected 4 fields (ytid,start_seconds,label,split), got {len(row)}"
                    )
                ytid, start_s, label, _split = (x.strip() for x in row)
                start = _parse_start(start_s)
                if not ytid or not label or start is None:
                    raise DataError(
                        f"{path}: line {line}: malformed row "
                        f"(ytid={ytid[:20]!r}, start_seconds={start_s[:20]!r}, label={label[:40]!r})"
                    )
                cid = clip_id(ytid, start)
                stats["rows"] += 1
                if cid in labels:
                    stats["repeated_ids"] += 1
                    stats["repeated_ids_other_label"] += labels[cid] != label
                    continue
                labels[cid] = label
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file (expected VGGSound's annotation CSV)") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise DataError(f"cannot read VGGSound annotation CSV {path}: {exc.strerror or exc}") from None
    if not labels:
        raise DataError(f"{path}: no annotation rows (expected ytid,start_seconds,label,split)")
    return labels, stats


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def assign_splits(ids_by_class: dict[str, list[str]], classes: list[str], seed: int) -> list[tuple[str, str, str]]:
    """Split every class 0.8/0.1/0.1; rows ``(id, label, split)`` sorted by split, class, id.

    Each class is shuffled by its own generator, seeded from ``seed`` and the class name, so the
    split of one class does not depend on the clips of the others.
    """
    rows: list[tuple[int, int, str, str]] = []  # (split rank, class index, id, name)
    for ci, name in enumerate(classes):
        ids = sorted(ids_by_class.get(name, ()))
        random.Random(f"vggss-split:{seed}:{name}").shuffle(ids)
        n_train, n_val, _ = split_sizes(len(ids))
        for k, cid in enumerate(ids):
            rank = 0 if k < n_train else (1 if k < n_train + n_val else 2)
            rows.append((rank, ci, cid, name))
    rows.sort()
    return [(cid, name, SPLITS[rank]) for rank, _ci, cid, name in rows]


def prepare_vggsound_sources(annotation_csv: Path, out_dir: Path, seed: int = 0) -> Path:
    """Write ``out_dir/splits.csv`` (id,label,split) and ``out_dir/prepare_report.json``.

    Joins the 144k pool ids with the user's VGGSound annotation CSV, keeps the clips of the
    benchmark's 220 classes and splits each class 0.8/0.1/0.1 (deterministic for a given seed and
    annotation file). Both files are written atomically. Returns the path of ``splits.csv``.
    """
    annotation_csv = Path(annotation_csv)
    out_dir = Path(out_dir)
    classes = load_classes()
    class_set = set(classes)
    pool = load_pool_ids()
    labels, stats = read_annotation_csv(annotation_csv)

    ids_by_class: dict[str, list[str]] = {}
    missing: list[str] = []
    outside: Counter[str] = Counter()
    for cid in pool:
        label = labels.get(cid)
        if label is None:
            missing.append(cid)
        elif label in class_set:
            ids_by_class.setdefault(label, []).append(cid)
        else:
            outside[label] += 1
    if not ids_by_class:
        raise DataError(
            f"{annotation_csv}: none of the {len(pool)} VGG-Sound Sources pool ids has a label "
            f"of the benchmark's classes (is this VGGSound's annotation CSV?)"
        )

    rows = assign_splits(ids_by_class, classes, seed)
    counts = Counter(split for _, _, split in rows)
    per_class: dict[str, dict[str, int]] = {name: {s: 0 for s in SPLITS} for name in classes}
    for _, name, split in rows:
        per_class[name][split] += 1

    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "label", "split"])
    writer.writerows(rows)
    splits_path = out_dir / "splits.csv"
    _atomic_write_text(splits_path, buf.getvalue())

    report = {
        "benchmark": BENCHMARK,
        "annotation_csv": str(annotation_csv),
        "seed": seed,
        "ratios": SPLIT_RATIOS,
        "num_classes": len(classes),
        "excluded_classes": list(EXCLUDED_CLASSES),
        "pool_ids": len(pool),
        "annotation_rows": stats["rows"],
        "annotation_repeated_ids": stats["repeated_ids"],
        "annotation_repeated_ids_other_label": stats["repeated_ids_other_label"],
        "kept_clips": len(rows),
        "counts": {s: counts.get(s, 0) for s in SPLITS},
        "classes_without_clips": [name for name in classes if not ids_by_class.get(name)],
        "ids_outside_classes": sum(outside.values()),
        "ids_outside_classes_by_label": dict(sorted(outside.items())),
        "ids_without_annotation_count": len(missing),
        "ids_without_annotation": sorted(missing),
        "per_class": per_class,
    }
    _atomic_write_text(out_dir / "prepare_report.json", json.dumps(report, indent=1) + "\n")
    return splits_path
