"""Writing a generated clip set (``synth-av``, ``digits-av``) into a folder, atomically and resumably.

A set is ``clips/<id>.mp4``, ``classes.csv`` (index,name), ``splits.csv`` (id,label,split; label =
class name), ``generation.json`` (the generator's record plus every clip's size) and the ``done``
marker, and any extra files the generator names (a manifest YAML). It is built in a temporary
sibling folder and renamed into place once complete, so an interrupted generation never leaves a
folder that looks finished. A complete folder whose record matches the request (and whose clips all
still have their recorded sizes) is reused as is.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import DataError

MARKER = "done"
#: More clips than this are written by ``min(2, cpus)`` threads.
POOL_MIN_CLIPS = 64


def clip_set_complete(out: Path, matches: Callable[[dict], bool]) -> bool:
    """Whether ``out`` holds a finished set whose ``generation.json`` satisfies ``matches``."""
    if not (out / MARKER).is_file():
        return False
    try:
        doc = json.loads((out / "generation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or not matches(doc):
        return False
    # every clip still whole: a truncated or deleted clip makes the set incomplete (regenerated)
    sizes = doc.get("clip_sizes")
    if not isinstance(sizes, dict) or not sizes:
        return False
    for name, n in sizes.items():
        try:
            if (out / "clips" / name).stat().st_size != n:
                return False
        except OSError:
            return False
    return True


def build_clip_set(
    out: Path,
    *,
    what: str,
    other: str,
    matches: Callable[[dict], bool],
    replace: bool,
    jobs: Sequence,
    render: Callable[[Path, object], None],
    classes: Sequence[str],
    rows: Sequence[tuple[str, str, str]],
    doc: dict,
    extra_files: dict[str, str] | None = None,
    progress: bool = True,
    workers: int | None = None,
    desc: str = "",
) -> Path:
    """Write a set into ``out`` (or return it when already complete) and return ``out``.

    ``render(tmp_dir, job)`` writes one clip under ``tmp_dir / "clips"``; ``rows`` are (id, class
    name, split); ``doc`` is the generation record (``matches(doc)`` must hold). An existing ``out``
    that is not this set is an error naming ``other`` (what differs), unless ``replace`` (a
    folder the suite owns, in its cache). ``workers``: writing threads (default ``min(2, cpus)`` for
    more than :data:`POOL_MIN_CLIPS` clips).
    """
    if clip_set_complete(out, matches):
        return out
    if out.exists():
        if (out / MARKER).is_file() or replace:
            if not replace:
                raise DataError(
                    f"{out} holds a {what} benchmark of {other}, or one with a "
                    f"truncated or missing clip; choose another --out or remove it"
                )
            shutil.rmtree(out)
        elif out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            raise DataError(f"{out} exists and is not a {what} benchmark directory; choose another --out")

    from .clips import _new_tmp_dir  # (also removes temporary folders of killed generations)

    try:
        tmp = _new_tmp_dir(out.parent, out.name)
        (tmp / "clips").mkdir()
    except (OSError, DataError) as exc:
        raise DataError(f"cannot write {what} to {out}: {getattr(exc, 'strerror', None) or exc}") from None
    t_start = time.perf_counter()
    try:
        if workers is None:
            workers = min(2, os.cpu_count() or 1) if len(jobs) > POOL_MIN_CLIPS else 1
        from tqdm import tqdm

        def one(job) -> None:
            render(tmp, job)

        with tqdm(total=len(jobs), disable=not progress, desc=desc or f"generating {what}", unit="clip") as bar:
            if workers <= 1:
                for job in jobs:
                    one(job)
                    bar.update(1)
            else:
                # Threads: the encoders and most numpy work release the GIL, and no process
                # start-up (or `__main__` guard in the caller's script) is needed.
                from .clips import threaded_map

                for _ in threaded_map(one, jobs, workers):
                    bar.update(1)
        lines = ["index,name"] + [f"{i},{name}" for i, name in enumerate(classes)]
        (tmp / "classes.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        lines = ["id,label,split"] + [",".join(r) for r in sorted(rows)]
        (tmp / "splits.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        doc = dict(doc, clip_sizes={f.name: f.stat().st_size for f in sorted((tmp / "clips").iterdir())})
        (tmp / "generation.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        (tmp / MARKER).write_text(f"generated in {time.perf_counter() - t_start:.1f} s\n", encoding="utf-8")
        try:
            os.replace(tmp, out)
        except OSError:
            if clip_set_complete(out, matches):  # a concurrent generation finished first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
