"""``avcl-bench import-avcil`` on tiny folders written in exactly the AV-CIL release's data layout.

The generator below writes what ``ours/dataloader_ours.py`` of the release reads from
``data/<dataset>/``: the three split dictionaries as ``np.save``'d pickled dicts and the feature
files (``write_avcil_features``: audio ``{id: (D,)}``, visual ``{id: (T*P, D)}`` or HDF5).
"""

from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import SMALL_FEATURE_RUN

from avcl_bench.cli import main
from avcl_bench.data.avcil_import import RELEASE_DATASETS, release_classes
from avcl_bench.data.features import write_avcil_features

#: class names in code order; deliberately not alphabetical, so code order and sorted order differ
CLASSES = ["Dog", "Cat", "Violin", "Airplane", "Bell", "Accordion", "Train horn", "Baby cry, infant"]
PER_CLASS = {"train": 6, "val": 1, "test": 2}


def _save(path: Path, obj) -> None:
    np.save(path, np.array(obj, dtype=object), allow_pickle=True)


def write_release_folder(
    root: Path,
    classes=CLASSES,
    per_class=PER_CLASS,
    visual_format="npy",
    frames=8,
    patches=2,
    audio_dim=8,
    dim=8,
) -> dict:
    """The release's data/<dataset>/ folder for ``classes`` (code = position); returns the
    class -> ids lists per split, each list in its (unsorted) dictionary order."""
    root.mkdir(parents=True, exist_ok=True)
    by_class, by_id, ids, labels = {}, {}, [], []
    for split, n in per_class.items():
        by_class[split], by_id[split] = {}, {}
        for c, name in enumerate(classes):
            vids = [f"{split[:2]}{c:02d}-{i}{'ab'[i % 2]}" for i in reversed(range(n))]  # not sorted
            by_class[split][c] = vids
            for v in vids:
                by_id[split][v] = name
                ids.append(v)
                labels.append(c)
    _save(root / "category_encode_dict.npy", {name: c for c, name in reversed(list(enumerate(classes)))})
    _save(root / "all_id_category_dict.npy", by_id)
    _save(root / "all_classId_vid_dict.npy", by_class)
    write_avcil_features(root, ids, labels, audio_dim, (frames, patches, dim), visual_format, seed=1)
    return by_class


def _cli(args, capsys):
    capsys.readouterr()
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err.strip().splitlines()


def _import(src: Path, capsys, *extra):
    return _cli(["import-avcil", str(src), "--name", "mine", *extra], capsys)


@pytest.fixture()
def release(tmp_path) -> Path:
    src = tmp_path / "data" / "MINE"
    write_release_folder(src)
    return src


# ----------------------------------------------------------------------------- what it writes


def test_import_then_check(tmp_path, capsys):
    src = tmp_path / "data" / "MINE"
    lists = write_release_folder(src)
    code, out, err = _import(src, capsys, "--num-tasks", "4", "--memory", "16")
    assert code == 0, err
    manifest = Path(out.strip())
    assert manifest == src / "mine.yaml"
    doc = yaml.safe_load(manifest.read_text())
    assert doc["protocols"] == {"av-cil": {"num_tasks": 4, "memory": {"total": 16}}}
    assert doc["default_protocol"] == "av-cil" and doc["inputs"] == ["features"] and doc["data_root"] == "."
    assert doc["features"] == {"audio_dim": 8, "visual_shape": [8, 2, 8], "visual_format": "npy"}
    assert doc["counts"] == {"train": 48, "val": 8, "test": 16}
    # class order = the release's codes; rows in the release's order (split, code, list order)
    classes = pd.read_csv(src / "mine" / "classes.csv", dtype=str)
    assert classes["name"].tolist() == CLASSES and classes["index"].tolist() == [str(i) for i in range(8)]
    splits = pd.read_csv(src / "mine" / "splits.csv", dtype=str)
    expected = [(v, CLASSES[c], s) for s in ("train", "val", "test") for c in range(8) for v in lists[s][c]]
    assert list(splits.itertuples(index=False, name=None)) == expected

    code, out, err = _cli(["check", "--benchmark", str(manifest)], capsys)
    assert code == 0, out + "\n".join(err)
    assert "clips found: 72 of 72" in out


@pytest.mark.slow
def test_an_imported_folder_runs(tmp_path, capsys):
    src = tmp_path / "data" / "MINE"
    write_release_folder(src)
    code, out, err = _import(src, capsys, "--num-tasks", "4", "--memory", "16")
    assert code == 0, err
    manifest = Path(out.strip())
    results = tmp_path / "runs"
    args = ["run", "--strategy", "finetune", "--benchmark", str(manifest), "--results-dir", str(results)]
    code, _, err = _cli([*args, "--run-id", "r", "--set", "train.epochs=1", *SMALL_FEATURE_RUN], capsys)
    assert code == 0, err
    assert (results / "r" / "COMPLETE").is_file()
    cfg = yaml.safe_load((results / "r" / "config.yaml").read_text())
    assert cfg["protocol"] == "av-cil" and cfg["num_tasks"] == 4 and cfg["memory"]["total"] == 16


def test_release_classes_take_the_release_protocol(tmp_path, capsys):
    src = tmp_path / "AVE"
    write_release_folder(
        src,
        classes=release_classes(RELEASE_DATASETS[0]),
        per_class={"train": 1, "val": 1, "test": 1},
        frames=8,
        patches=1,
    )
    code, out, err = _import(src, capsys, "--out", str(tmp_path / "manifests"), "--quiet")
    assert code == 0 and not err, err
    doc = yaml.safe_load(Path(out.strip()).read_text())
    expected = {"num_tasks": 4, "memory": {"total": 340}, "settings": "AVE"}
    assert doc["protocols"] == {"av-cil": expected}
    assert "run_incremental_ours.sh lines 4-7" in doc["notes"] and doc["data_root"] == str(src.resolve())
    # an explicit value wins over the release's, and says so
    code, out, _ = _import(src, capsys, "--out", str(tmp_path / "m2"), "--num-tasks", "7")
    doc = yaml.safe_load(Path(out.strip()).read_text())
    assert doc["protocols"]["av-cil"] == {**expected, "num_tasks": 7}
    assert "num_tasks 7 given on the command line" in doc["notes"]


def test_release_protocols_agree_with_the_suites_manifests():
    from avcl_bench.data.manifest import load_manifest

    for ds in RELEASE_DATASETS:
        man = load_manifest(ds.benchmark)
        assert man.doc["num_classes"] == ds.num_classes
        expected = {"num_tasks": ds.num_tasks, "memory": {"total": ds.memory_size}, "settings": ds.name}
        assert man.protocols["av-cil"] == expected


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


@pytest.mark.parametrize("ds", RELEASE_DATASETS, ids=lambda ds: ds.name)
def test_an_imported_release_folder_runs_with_its_benchmarks_settings(ds, tmp_path, capsys):
    """Under another name the release's classes get every setting the suite's own manifest gets
    (per-dataset, per-modality: epochs, lr, network, ...), for every method of the AV-CIL tables."""
    from avcl_bench.runner import build_config

    src = tmp_path / ds.name
    write_release_folder(src, classes=release_classes(ds), per_class={"train": 1, "test": 1}, frames=8, patches=1)
    code, out, err = _import(src, capsys, "--quiet")
    assert code == 0, err
    for strategy in ("finetune", "joint", "lwf", "icarl", "ssil", "afc", "av-cil"):
        for modality in ("audio", "visual", "audio-visual"):
            mine = _flat(build_config(strategy, out.strip(), {"modality": modality})[0])
            suites = _flat(build_config(strategy, ds.benchmark, {"modality": modality})[0])
            differ = {k for k in mine.keys() | suites.keys() if mine.get(k) != suites.get(k)}
            # the benchmark's name and its feature sizes (tiny here) are the folder's own
            assert differ <= {"benchmark", "features.audio_dim", "features.visual_shape", "features.visual_format"}, (
                strategy,
                modality,
                {k: (mine.get(k), suites.get(k)) for k in differ},
            )


def test_h5_features_and_an_output_folder_elsewhere(tmp_path, capsys):
    src = tmp_path / "KS"
    write_release_folder(src, visual_format="h5", frames=4, patches=3)
    out_dir = tmp_path / "manifests"
    args = ["--num-tasks", "2", "--memory", "8", "--out", str(out_dir)]
    # the release's model splits (T*P, D) tokens into 8 frames; these 12 tokens do not divide into 8
    code, _, err = _import(src, capsys, *args)
    assert code == 2 and len(err) == 1 and "12 visual tokens per clip are not divisible into 8 frames" in err[0]
    code, out, err = _import(src, capsys, *args, "--visual-frames", "4")
    assert code == 0, err
    doc = yaml.safe_load((out_dir / "mine.yaml").read_text())
    assert doc["features"] == {"audio_dim": 8, "visual_shape": [4, 3, 8], "visual_format": "h5"}
    assert doc["data_root"] == str(src.resolve())
    code, out, err = _cli(["check", "--benchmark", str(out_dir / "mine.yaml")], capsys)
    assert code == 0, out + "\n".join(err)


def test_an_existing_manifest_is_kept_unless_overwrite(release, capsys):
    args = ["--num-tasks", "4", "--memory", "16"]
    assert _import(release, capsys, *args)[0] == 0
    (release / "mine.yaml").write_text("# mine\n")
    code, _, err = _import(release, capsys, *args)
    assert code == 2 and len(err) == 1 and "mine.yaml exists: pass --overwrite" in err[0]
    assert (release / "mine.yaml").read_text() == "# mine\n"
    code, _, err = _import(release, capsys, *args, "--overwrite")
    assert code == 0 and yaml.safe_load((release / "mine.yaml").read_text())["name"] == "mine"


def test_ids_without_features_are_counted_and_named(release, capsys):
    audio = release / "audio_pretrained_feature" / "audio_pretrained_feature_dict.npy"
    feats = np.load(audio, allow_pickle=True).item()  # the test's own generated file
    gone = ["tr00-5b", "te03-0a", "va07-0a"]
    for vid in gone:
        del feats[vid]
    _save(audio, feats)
    code, _, err = _import(release, capsys, "--num-tasks", "4", "--memory", "16")
    assert code == 2 and len(err) == 1
    assert "3 of 72 ids" in err[0] and "first: tr00-5b, va07-0a, te03-0a" in err[0] and "--drop-missing" in err[0]
    assert not (release / "mine.yaml").exists()
    code, out, err = _import(release, capsys, "--num-tasks", "4", "--memory", "16", "--drop-missing")
    assert code == 0, err
    doc = yaml.safe_load(Path(out.strip()).read_text())
    assert doc["counts"] == {"train": 47, "val": 7, "test": 15} and "3 ids without features" in doc["notes"]


# ----------------------------------------------------------------------------- bad input: one line, exit 2


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_split_dictionary_naming_code_is_refused_unexecuted(release, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    _save(release / "category_encode_dict.npy", {"Dog": 0, "Cat": _RunsCode(marker)})
    code, out, err = _import(release, capsys, "--num-tasks", "4", "--memory", "16")
    assert code == 2 and not out
    assert len(err) == 1 and "refused to load posix.system" in err[0] and "category_encode_dict.npy" in err[0], err
    assert not marker.exists() and not (release / "mine.yaml").exists()


def test_a_forged_memo_index_claims_no_memory(release, tmp_path):
    # the codes pickled with their first memo slot named 2**31 - 1 (LONG_BINPUT): the C unpickler
    # would allocate and zero a memo list of 2**32 entries (32 GB); run capped at 3 GB of address space
    codes = {name: c for c, name in enumerate(CLASSES)}
    payload = pickle.dumps(codes, protocol=3)
    assert payload.startswith(b"\x80\x03}q\x00")
    _write_npy("category_encode_dict.npy", OBJECT, payload.replace(b"}q\x00", b"}r\xff\xff\xff\x7f", 1))(release)
    cap = 3 << 30
    proc = subprocess.run(
        [sys.executable, "-m", "avcl_bench.cli", "import-avcil", str(release), "--name", "mine"]
        + ["--num-tasks", "4", "--memory", "16", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)),
    )
    assert proc.returncode == 0, proc.stderr
    assert pd.read_csv(release / "mine" / "classes.csv")["name"].tolist() == CLASSES


def _edit(name, fn):
    def apply(root: Path):
        path = root / name
        _save(path, fn(np.load(path, allow_pickle=True).item()))

    return apply


def _truncate(name):
    def apply(root: Path):
        path = root / name
        path.write_bytes(path.read_bytes()[:150])

    return apply


def _remove(name):
    return lambda root: (root / name).unlink()


def _move_into_release_root(root: Path):
    root.rename(root.parent / "AVE")
    root.mkdir()
    (root / "data").mkdir()
    (root.parent / "AVE").rename(root / "data" / "AVE")


def _relabel(d):
    d["val"]["va02-0a"] = "Dog"
    return d


def _second_split(d):
    d["test"][0] = d["test"][0] + ["tr00-0a"]
    return d


def _write_npy(name, header: dict, payload: bytes):
    """A hand-made .npy: ``header`` then ``payload`` (a pickle or the data)."""

    def apply(root: Path):
        with open(root / name, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            fh.write(payload)

    return apply


OBJECT = {"descr": "|O", "fortran_order": False, "shape": ()}
#: protocol 5's BYTEARRAY8 stating 2**40 bytes: the unpickler would allocate them before reading
BYTEARRAY8 = b"\x80\x05\x96" + (2**40).to_bytes(8, "little") + b"x."

def _binunicode(text: str) -> bytes:
    return b"X" + len(text.encode()).to_bytes(4, "little") + text.encode()


#: {split: {"vid": [[[...]]]}} with the list nested 100,000 deep, written opcode by opcode (pickle
#: itself cannot write it): its repr exceeds Python's recursion limit
DEEP_SPLITS = (
    b"\x80\x02}"
    + b"".join(
        _binunicode(split) + b"}" + _binunicode("vid") + b"]" * 100_000 + b"a" * 99_999 + b"ss"
        for split in ("train", "val", "test")
    )
    + b"."
)

BAD_FOLDERS = {
    "missing dictionary": (_remove("all_classId_vid_dict.npy"), "split dictionary not found: "),
    "corrupt dictionary": (_truncate("all_id_category_dict.npy"), "cannot read "),
    "corrupt features": (_truncate("audio_pretrained_feature/audio_pretrained_feature_dict.npy"), "cannot read "),
    "no visual file": (
        _remove("visual_pretrained_feature/visual_pretrained_feature_dict.npy"),
        "no visual feature file in ",
    ),
    "not a dict": (lambda r: np.save(r / "category_encode_dict.npy", np.zeros(3)), "expected a pickled dict"),
    "codes with a gap": (_edit("category_encode_dict.npy", lambda d: {**d, "Dog": 9}), "codes must be 0..7"),
    "dictionaries disagree": (
        _edit("all_id_category_dict.npy", _relabel),
        "disagree on 1 clip(s) of 'val' (first: val/va02-0a: listed under 2 'Violin', "
        "all_id_category_dict.npy says 'Dog')",
    ),
    "unknown class name": (
        _edit("all_id_category_dict.npy", lambda d: {**d, "test": {**d["test"], "te00-0a": "Cow"}}),
        "class 'Cow' is not in category_encode_dict.npy",
    ),
    "id in two splits": (_edit("all_classId_vid_dict.npy", _second_split), "'tr00-0a' is in both 'train' and 'test'"),
    "no test split": (
        _edit("all_classId_vid_dict.npy", lambda d: {"train": d["train"], "val": d["val"]}),
        "no 'test' key",
    ),
    "id that is a path": (
        _edit("all_classId_vid_dict.npy", lambda d: {**d, "val": {**d["val"], 1: ["../x"]}}),
        "contains a path separator",
    ),
    "stated size": (
        _write_npy("category_encode_dict.npy", {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}, b""),
        "the header states 8000000000000 bytes of data, the file holds 0",
    ),
    "bytearray8": (_write_npy("all_id_category_dict.npy", OBJECT, BYTEARRAY8), "BYTEARRAY8 (pickle protocol 5) is not"),
    "nested 100,000 deep": (
        _write_npy("all_id_category_dict.npy", OBJECT, DEEP_SPLITS),
        "['train']['vid']: class a list is not in category_encode_dict.npy",
    ),
    "release root": (_move_into_release_root, "looks like the release's root: pass one of its data folders (data/AVE)"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_bad_folders_end_in_one_line(case, release, capsys):
    damage, message = BAD_FOLDERS[case]
    damage(release)
    code, out, err = _import(release, capsys, "--num-tasks", "4", "--memory", "16")
    assert code == 2 and not out
    assert len(err) == 1 and err[0].startswith("avcl-bench: error: ") and message in err[0], err
    assert not (release / "mine.yaml").exists() and not (release / "mine").exists()


BAD_VALUES = {
    "no protocol": ([], "--num-tasks and --memory must be given"),
    "no memory": (["--num-tasks", "4"], "--memory must be given"),
    "indivisible": (["--num-tasks", "3", "--memory", "16"], "8 classes are not divisible into --num-tasks 3"),
    "zero tasks": (["--num-tasks", "0", "--memory", "16"], "--num-tasks must be a positive integer, got 0"),
    "negative memory": (["--num-tasks", "4", "--memory", "-1"], "--memory must be a positive integer, got -1"),
    "built-in name": (["--num-tasks", "4", "--memory", "16", "--name", "ave-ci"], "'ave-ci' is a built-in"),
    "name with a path": (["--num-tasks", "4", "--memory", "16", "--name", "a/b"], "contains a path separator"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_end_in_one_line(case, release, capsys):
    extra, message = BAD_VALUES[case]
    code, out, err = _import(release, capsys, *extra)
    assert code == 2 and not out
    assert len(err) == 1 and message in err[0], err
    assert not (release / "mine.yaml").exists()


def test_a_missing_folder_is_one_line(tmp_path, capsys):
    code, _, err = _import(tmp_path / "nowhere", capsys, "--num-tasks", "4", "--memory", "16")
    assert code == 2 and len(err) == 1 and "is not a folder" in err[0]
