"""The suite's own benchmark manifests (datasets/*.yaml + CSVs) and the VGG-Sound Sources prepare step.

These tests read only the project's files; the expected numbers are the published ones,
hard-coded here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from avcl_bench.data import vggss
from avcl_bench.errors import DataError
from avcl_bench.paths import DATASETS_DIR

SPLITS = ("train", "val", "test")

INSTRUMENT_ORDER = [
    "flute",
    "cello",
    "bass_guitar",
    "accordion",
    "tabla",
    "erhu",
    "cornet",
    "electronic_organ",
    "timbales",
    "acoustic_guitar",
    "violin",
    "piano",
    "banjo",
    "glockenspiel",
    "steel_guitar",
    "vibraphone",
    "trumpet",
    "zither",
    "cymbal",
    "xylophone",
    "harp",
    "hammond_organ",
    "harpsichord",
    "bongo",
    "bass_drum",
    "mandolin",
    "guiro",
    "saxophone",
    "electric_guitar",
    "drum_kit",
    "clarinet",
    "snare_drum",
    "ukulele",
    "sitar",
    "double_bass",
    "congas",
]
INSTRUMENT_DROPPED = {"train": 28, "val": 6, "test": 2}  # placeholder '-' rows of the official lists

# benchmark -> (num_classes, counts, first class names)
EXPECTED = {
    "vggsound-instruments": (
        36,
        {"train": 26796 - 28, "val": 3339 - 6, "test": 3339 - 2},
        ["flute", "cello", "bass_guitar"],
    ),
    "vggsound-100": (
        100,
        {"train": 51195, "val": 5000, "test": 5000},
        ["playing theremin", "donkey, ass braying", "playing electronic organ"],
    ),
    "vs100-ci": (
        100,
        {"train": 51195, "val": 5000, "test": 5000},
        ["playing theremin", "donkey, ass braying", "playing electronic organ"],
    ),
    "ave-ci": (
        28,
        {"train": 3294, "val": 391, "test": 394},
        ["Acoustic guitar", "Cat", "Fixed-wing aircraft, airplane"],
    ),
    "ks-ci": (30, {"train": 19220, "val": 1947, "test": 1958}, ["playing drums", "bowling", "shoveling snow"]),
}
PROTOCOLS = {
    "vggsound-instruments": {"cign": (4, {"per_class": 50})},
    "vggsound-100": {"cign": (4, {"per_class": 50}), "cign-10": (10, {"per_class": 50})},
    "vs100-ci": {"av-cil": (10, {"total": 1500})},
    "ave-ci": {"av-cil": (4, {"total": 340})},
    "ks-ci": {"av-cil": (5, {"total": 500})},
    "vggsound-sources": {"cign": (4, {"per_class": 50})},
}
ALL = sorted(PROTOCOLS)


def doc(name: str) -> dict:
    return yaml.safe_load((DATASETS_DIR / f"{name}.yaml").read_text())


def read_csv(rel: str) -> pd.DataFrame:
    return pd.read_csv(DATASETS_DIR / rel, dtype=str, keep_default_na=False)


def classes_of(name: str) -> list[str]:
    df = read_csv(doc(name)["classes"])
    assert list(df.columns) == ["index", "name"]
    assert df["index"].astype(int).tolist() == list(range(len(df)))
    return df["name"].tolist()


_splits_cache: dict[str, pd.DataFrame] = {}


def splits_of(name: str) -> pd.DataFrame:
    rel = doc(name)["splits"]
    if rel not in _splits_cache:
        df = read_csv(rel)
        assert list(df.columns) == ["id", "label", "split"]
        _splits_cache[rel] = df
    return _splits_cache[rel]


# ---- every manifest -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_manifest_basics(name):
    d = doc(name)
    assert d["name"] == name
    assert d["default_protocol"] in d["protocols"]
    classes = classes_of(name)
    assert d["num_classes"] == len(classes) == len(set(classes))
    assert d["data_root_env"].startswith("AVCL_")
    for pname, (num_tasks, memory) in PROTOCOLS[name].items():
        proto = d["protocols"][pname]
        assert proto["num_tasks"] == num_tasks and proto["memory"] == memory
        assert len(classes) % proto["num_tasks"] == 0, f"{name}/{pname}: classes not divisible into tasks"
    assert set(d["protocols"]) == set(PROTOCOLS[name])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_and_class_order(name):
    num_classes, counts, first = EXPECTED[name]
    d = doc(name)
    classes = classes_of(name)
    assert len(classes) == num_classes
    assert classes[: len(first)] == first
    assert d["counts"] == counts
    df = splits_of(name)
    assert df["split"].value_counts().to_dict() == counts
    assert len(df) == sum(counts.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_split_rows_valid_and_sorted(name):
    classes = classes_of(name)
    df = splits_of(name)
    assert set(df["split"]) == set(SPLITS)
    assert set(df["label"]) <= set(classes), "every split label is a known class"
    assert df["id"].is_unique, "ids are unique across all splits"
    assert not (df["id"].str.strip().isin(["-", ""])).any(), "no placeholder ids"
    # every class has clips in every split
    per = df.groupby(["label", "split"]).size()
    assert all(per.get((c, s), 0) > 0 for c in classes for s in SPLITS)
    # sorted deterministically: split (train, val, test), class index, id
    rank = {s: i for i, s in enumerate(SPLITS)}
    cidx = {c: i for i, c in enumerate(classes)}
    keys = list(zip(df["split"].map(rank), df["label"].map(cidx), df["id"]))
    assert keys == sorted(keys)


# ---- per benchmark ----------------------------------------------------------------------------


def test_instruments_order_and_placeholders():
    d = doc("vggsound-instruments")
    assert classes_of("vggsound-instruments") == INSTRUMENT_ORDER
    assert d["dropped_placeholder_rows"] == INSTRUMENT_DROPPED
    assert sum(d["dropped_placeholder_rows"].values()) == 36
    assert d["inputs"] == ["clips"] and "features" not in d
    # task t = official group t: each group's 9 classes are contiguous
    groups = [INSTRUMENT_ORDER[9 * t : 9 * (t + 1)] for t in range(4)]
    assert groups[1][0] == "acoustic_guitar" and groups[2][0] == "cymbal" and groups[3][0] == "saxophone"
    ids = splits_of("vggsound-instruments")["id"]
    assert ids.str.fullmatch(r"[A-Za-z0-9_-]{11}_\d{6}").all()


def test_vggsound100_and_vs100_share_csvs():
    a, b = doc("vggsound-100"), doc("vs100-ci")
    assert a["classes"] == b["classes"] == "vggsound-100/classes.csv"
    assert a["splits"] == b["splits"] == "vggsound-100/splits.csv"
    assert not (DATASETS_DIR / "vs100-ci").exists(), "vs100-ci must not duplicate the CSV files"
    assert a["inputs"] == ["clips", "features"] and b["inputs"] == ["features", "clips"]
    assert a["data_root_env"] == "AVCL_VGGSOUND_ROOT" and b["data_root_env"] == "AVCL_VS100_ROOT"
    classes = classes_of("vggsound-100")
    assert "subway, metr" in classes, "the truncated official name is kept as stored"
    assert "subway, metr" in a["notes"] and "never published" in a["notes"]


@pytest.mark.parametrize("name,fmt", [("ave-ci", "npy"), ("ks-ci", "h5"), ("vs100-ci", "h5"), ("vggsound-100", "h5")])
def test_feature_layout(name, fmt):
    feats = doc(name)["features"]
    assert feats == {"audio_dim": 768, "visual_shape": [8, 196, 768], "visual_format": fmt}


# ---- VGG-Sound Sources -------------------------------------------------------------------------


def test_vggss_manifest_and_class_decision():
    d = doc("vggsound-sources")
    assert d["splits"] is None and d["prepare"] == "vggss"
    assert d["class_order_seed"] == 0
    assert "counts" not in d  # known only after prepare
    classes = classes_of("vggsound-sources")
    # Decision: 220 classes = the 221 names of vggss.json minus 'singing choir' (outside the
    # official heard/unheard split); 220 = 4 x 55.
    assert len(classes) == d["num_classes"] == 220
    assert len(classes) % d["protocols"]["cign"]["num_tasks"] == 0
    assert "singing choir" not in classes
    assert vggss.EXCLUDED_CLASSES == ("singing choir",)
    assert "singing choir" in d["notes"] and "heard" in d["notes"]
    # the recorded seed reproduces the order written into classes.csv
    assert classes == vggss.permute_classes(classes, d["class_order_seed"])
    assert classes != sorted(classes)


def test_vggss_ids_and_test_annotation():
    d = doc("vggsound-sources")
    ids = read_csv(d["ids"])
    assert list(ids.columns) == ["id"]
    assert len(ids) == 144000 and ids["id"].is_unique
    assert ids["id"].str.fullmatch(r"[A-Za-z0-9_-]{11}_\d{6}").all()
    test = read_csv(d["test_annotated"])
    assert list(test.columns) == ["id", "label"]
    assert len(test) == 5158 and test["id"].is_unique
    labels = set(test["label"])
    assert len(labels) == 221
    assert labels - set(classes_of("vggsound-sources")) == {"singing choir"}
    assert (test["label"] == "singing choir").sum() == 19


# ---- prepare_vggsound_sources ------------------------------------------------------------------


def _write_annotations(path: Path, classes: list[str], pool: list[str]) -> dict[str, int]:
    """A small VGGSound-style annotation CSV: 10 classes x 200 pool clips, plus noise rows."""
    rows = []
    expected: dict[str, int] = {}
    chosen = classes[:10]
    for k, cid in enumerate(pool[:2000]):
        label = chosen[k % 10]
        expected[label] = expected.get(label, 0) + 1
        ytid, start = cid.rsplit("_", 1)
        rows.append([ytid, str(int(start)), label, "train" if k % 7 else "test"])
    for cid in pool[2000:2050]:  # pool clips of a class outside the benchmark
        ytid, start = cid.rsplit("_", 1)
        rows.append([ytid, str(int(start)), "singing choir", "train"])
    rows.append(["zzzzzzzzzzz", "10", classes[0], "train"])  # not in the pool: ignored
    rows.append([pool[0].rsplit("_", 1)[0], str(int(pool[0].rsplit("_", 1)[1])), classes[5], "test"])  # repeat
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return expected


@pytest.fixture(scope="module")
def pool_and_classes():
    return vggss.load_pool_ids(), vggss.load_classes()


def test_prepare_vggss_deterministic_and_ratios(tmp_path, pool_and_classes):
    pool, classes = pool_and_classes
    ann = tmp_path / "vggsound.csv"
    expected = _write_annotations(ann, classes, pool)

    out1 = vggss.prepare_vggsound_sources(ann, tmp_path / "a", seed=0)
    out2 = vggss.prepare_vggsound_sources(ann, tmp_path / "b", seed=0)
    assert out1 == tmp_path / "a" / "splits.csv"
    assert out1.read_bytes() == out2.read_bytes(), "two calls give the same splits"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["prepare_report.json", "splits.csv"]

    df = pd.read_csv(out1, dtype=str, keep_default_na=False)
    assert list(df.columns) == ["id", "label", "split"]
    assert df["id"].is_unique and set(df["id"]) <= set(pool)
    assert len(df) == 2000 and set(df["label"]) == set(classes[:10])
    per = df.groupby(["label", "split"]).size()
    for label, n in expected.items():  # 200 clips per class -> 160/20/20
        assert (per[(label, "train")], per[(label, "val")], per[(label, "test")]) == (0.8 * n, 0.1 * n, 0.1 * n)
    frac = df["split"].value_counts(normalize=True)
    assert frac["train"] == pytest.approx(0.8, abs=0.01) and frac["val"] == pytest.approx(0.1, abs=0.01)

    report = json.loads((tmp_path / "a" / "prepare_report.json").read_text())
    assert report["seed"] == 0
    assert report["counts"] == {"train": 1600, "val": 200, "test": 200}
    assert report["ids_outside_classes"] == 50
    assert report["ids_without_annotation_count"] == 144000 - 2050
    assert len(report["ids_without_annotation"]) == 144000 - 2050
    assert report["annotation_repeated_ids"] == 1 and report["annotation_repeated_ids_other_label"] == 1
    assert len(report["classes_without_clips"]) == 210

    # a different seed draws a different split of the same sizes
    out3 = vggss.prepare_vggsound_sources(ann, tmp_path / "c", seed=1)
    df3 = pd.read_csv(out3, dtype=str, keep_default_na=False)
    assert df3["split"].value_counts().to_dict() == df["split"].value_counts().to_dict()
    assert set(df3.loc[df3.split == "test", "id"]) != set(df.loc[df.split == "test", "id"])


def test_split_sizes():
    assert vggss.split_sizes(10) == (8, 1, 1)
    assert vggss.split_sizes(1) == (1, 0, 0)
    assert sum(vggss.split_sizes(137)) == 137


@pytest.mark.parametrize(
    "content",
    [
        "abc,1,playing cello\n",  # 3 fields
        "abc,1,playing cello,train,extra\n",  # 5 fields
        "abcdefghijk,one,playing cello,train\n",  # start is not a number
        "",  # empty file
    ],
)
def test_prepare_vggss_malformed_csv(tmp_path, content):
    ann = tmp_path / "bad.csv"
    ann.write_text(content)
    with pytest.raises(DataError) as info:
        vggss.prepare_vggsound_sources(ann, tmp_path / "out")
    msg = str(info.value)
    assert "bad.csv" in msg and "\n" not in msg
    assert not (tmp_path / "out" / "splits.csv").exists()


def test_prepare_vggss_missing_csv(tmp_path):
    with pytest.raises(DataError, match="missing.csv"):
        vggss.prepare_vggsound_sources(tmp_path / "missing.csv", tmp_path / "out")


def test_prepare_vggss_no_matching_ids(tmp_path):
    ann = tmp_path / "other.csv"
    ann.write_text("zzzzzzzzzzz,1,playing cello,train\n")
    with pytest.raises(DataError, match="other.csv"):
        vggss.prepare_vggsound_sources(ann, tmp_path / "out")
