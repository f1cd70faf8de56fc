"""Benchmark manifests: ``datasets/<name>.yaml`` plus its class-order and split CSVs.

A manifest is cheap to load (YAML only). :meth:`Manifest.materialize` then resolves the class
list and the split table, generating the embedded benchmark or reading a prepared split where
the manifest says so. The layout is documented in ARCHITECTURE.md; a user's own dataset is a
YAML of the same form pointing to its own CSV (``avcl-bench run --benchmark path/to/my.yaml``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import load_yaml
from ..errors import ConfigError, DataError
from ..paths import DATASETS_DIR, name_problem

MANIFEST_KEYS = {
    "name",
    "title",
    "source",
    "classes",
    "splits",
    "num_classes",
    "counts",
    "protocols",
    "default_protocol",
    "inputs",
    "data_root_env",
    "data_root",
    "features",
    "clips",
    "notes",
    "generated",
    "prepare",
    "ids",
    "class_order_seed",
    "config",
    "dropped_placeholder_rows",
    "test_annotated",
    "citation",
}
#: ``settings``: which per-dataset settings of the protocol the strategies apply (their
#: ``protocols.<protocol>.settings.<name>`` sections; for av-cil the release's dataset names AVE,
#: ksounds, VGGSound_100)
PROTOCOL_KEYS = {"num_tasks", "memory", "description", "settings"}
#: the manifest keys whose value must be a mapping, and those that must be a positive integer
MAPPING_KEYS = ("protocols", "config", "clips", "features", "counts")
POSITIVE_INT_KEYS = ("num_classes",)


def benchmark_names() -> list[str]:
    return sorted(p.stem for p in DATASETS_DIR.glob("*.yaml"))


@dataclass
class Manifest:
    name: str
    path: Path
    doc: dict
    classes: list[str] = field(default_factory=list)
    splits: pd.DataFrame | None = None  # columns id, label (int, presentation order), split
    data_root: Path | None = None

    # ---- declared properties -------------------------------------------------------------
    @property
    def inputs(self) -> list[str]:
        return list(self.doc.get("inputs") or ["clips"])

    @property
    def protocols(self) -> dict:
        return self.doc.get("protocols") or {}

    def protocol(self, name: str | None) -> tuple[str, dict]:
        name = name or self.doc.get("default_protocol") or next(iter(self.protocols), None)
        if name not in self.protocols:
            known = ", ".join(self.protocols) or "none"
            raise ConfigError(f"unknown protocol '{name}' for benchmark '{self.name}' (known: {known})")
        return name, dict(self.protocols[name])

    def config_layer(self, protocol_name: str | None) -> dict:
        """The manifest's layer of the run configuration (see avcl_bench.config)."""
        pname, proto = self.protocol(protocol_name)
        layer = {"protocol": pname, "input": self.inputs[0]}  # (its own config: section is a higher layer)
        layer["num_tasks"] = proto.get("num_tasks")
        mem = proto.get("memory") or {}
        layer["memory"] = {"per_class": mem.get("per_class"), "total": mem.get("total")}
        if self.doc.get("clips"):
            layer["clips"] = self.doc["clips"]
        if self.doc.get("features"):
            layer["features"] = self.doc["features"]
        return layer

    def protocol_settings(self) -> dict:
        """{protocol: the settings name it declares (``settings:``), None where it names none}."""
        return {name: (proto or {}).get("settings") for name, proto in self.protocols.items()}

    def resolve_data_root(self, cli_root: str | None) -> Path | None:
        if cli_root:
            return Path(cli_root).expanduser()
        env = self.doc.get("data_root_env")
        if env and os.environ.get(env):
            return Path(os.environ[env]).expanduser()
        if self.doc.get("data_root"):
            root = Path(str(self.doc["data_root"])).expanduser()
            return root if root.is_absolute() else (self.path.parent / root)
        return None

    # ---- materialisation -----------------------------------------------------------------
    def materialize(self, cfg: dict) -> "Manifest":
        """Resolve the data root, the class list and the split table for a run config."""
        gen = self.doc.get("generated")
        if gen == "synth-av":
            from .synth import generate_synth_av

            root = Path(cfg["data_root"]).expanduser() if cfg.get("data_root") else None
            root = generate_synth_av(
                root, size=cfg["synth"]["size"], seed=cfg["synth"]["seed"], progress=cfg.get("progress", True)
            )
            self.data_root = root
            classes_csv, splits_csv = root / "classes.csv", root / "splits.csv"
        elif gen:
            raise ConfigError(f"{self.path}: unknown generator '{gen}'")
        else:
            self.data_root = self.resolve_data_root(cfg.get("data_root"))
            classes_csv = self._relpath(self.doc.get("classes"))
            splits_csv = self._relpath(self.doc.get("splits"))
            if self.doc.get("prepare"):
                if self.data_root is None:
                    env = self.doc.get("data_root_env", "the data root")
                    raise DataError(
                        f"benchmark '{self.name}' needs --data-root (or ${env}) holding "
                        f"the splits written by 'avcl-bench prepare {self.name}'"
                    )
                splits_csv = self.data_root / "splits.csv"
                if not splits_csv.is_file():
                    raise DataError(
                        f"{splits_csv} not found: run 'avcl-bench prepare {self.name} "
                        f"--annotations VGGSOUND_CSV --data-root {self.data_root}' first"
                    )
        self.classes = self._read_classes(classes_csv, splits_csv)
        self.splits = self._read_splits(splits_csv)
        self._check_counts()
        return self

    def _relpath(self, value) -> Path | None:
        if not value:
            return None
        p = Path(str(value)).expanduser()
        if p.is_absolute():
            return p
        # Relative to datasets/ for the suite's own manifests, to the YAML for a user's own.
        for base in (DATASETS_DIR, self.path.parent):
            if (base / p).exists():
                return base / p
        return self.path.parent / p

    def _read_csv(self, path: Path, columns: list[str]) -> pd.DataFrame:
        if not path.is_file():
            raise DataError(f"manifest file not found: {path} (named by {self.path})")
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as exc:  # pandas raises many types for malformed CSVs
            raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(df.columns)})")
        return df

    def _read_classes(self, classes_csv: Path | None, splits_csv: Path | None) -> list[str]:
        if classes_csv is None:
            # A user's own dataset may omit the class list: sorted label names give the order.
            if splits_csv is None:
                raise DataError(f"{self.path}: neither 'classes' nor 'splits' is given")
            return sorted(set(self._read_csv(splits_csv, ["id", "label", "split"])["label"]))
        df = self._read_csv(classes_csv, ["index", "name"])
        idx = pd.to_numeric(df["index"], errors="coerce")
        if idx.isna().any() or (idx != idx.round()).any():
            row = int(idx.isna().to_numpy().nonzero()[0][0]) if idx.isna().any() else int((idx != idx.round()).to_numpy().nonzero()[0][0])
            raise DataError(
                f"{classes_csv}: row {row + 2}: column 'index' is {str(df['index'].iloc[row])[:40]!r}, not an integer"
            )
        idx = idx.astype(int).tolist()
        if idx != list(range(len(idx))):
            raise DataError(f"{classes_csv}: column 'index' must be 0..{len(idx) - 1} in order")
        names = df["name"].tolist()
        declared = self.doc.get("num_classes")
        if declared is not None and declared != len(names):
            raise DataError(f"{classes_csv}: {len(names)} classes, manifest {self.path.name} declares {declared}")
        return names

    def _read_splits(self, splits_csv: Path | None) -> pd.DataFrame:
        if splits_csv is None:
            raise DataError(f"{self.path}: no 'splits' file")
        df = self._read_csv(splits_csv, ["id", "label", "split"])
        bad_split = sorted(set(df["split"]) - {"train", "val", "test"})
        if bad_split:
            raise DataError(f"{splits_csv}: unknown split value(s) {bad_split} (allowed: train, val, test)")
        for row, vid in enumerate(df["id"]):  # ids name files under the data root: names, not paths
            problem = name_problem(vid)
            if problem:
                raise DataError(f"{splits_csv}: row {row + 2}: clip id {str(vid)[:80]!r} {problem}")
        _refuse_repeated_ids(df, splits_csv)
        index = {name: i for i, name in enumerate(self.classes)}
        unknown = sorted(set(df["label"]) - set(index))
        if unknown:
            raise DataError(f"{splits_csv}: {len(unknown)} label(s) not in the class list, e.g. '{unknown[0]}'")
        out = pd.DataFrame({"id": df["id"], "label": df["label"].map(index).astype(int), "split": df["split"]})
        empty = [
            self.classes[c] for c in range(len(self.classes)) if not (out.loc[out.split == "train", "label"] == c).any()
        ]
        if empty:
            raise DataError(f"{splits_csv}: class '{empty[0]}' has no training clip ({len(empty)} empty classes)")
        return out

    def _check_counts(self) -> None:
        counts = self.doc.get("counts")
        if not counts:
            return
        got = self.splits["split"].value_counts().to_dict()
        for split, n in counts.items():
            if got.get(split, 0) != n:
                raise DataError(
                    f"{self.path.name}: split '{split}' has {got.get(split, 0)} rows, manifest declares {n}"
                )


def _refuse_repeated_ids(df: pd.DataFrame, splits_csv: Path) -> None:
    """A clip in two splits is train/test leakage; a clip twice in one split weighs it twice in
    training or evaluation. Either is one line naming the file, the first such clip and the count."""
    ids = df["id"].astype(str)
    splits_of = df.groupby(ids)["split"].agg(lambda s: sorted(set(s)))
    shared = splits_of[splits_of.map(len) > 1]
    if len(shared):
        vid, where = shared.index[0], shared.iloc[0]
        raise DataError(
            f"{splits_csv}: clip id {vid[:80]!r} is in splits {' and '.join(where)} ({len(shared)} clip(s) in "
            "more than one split): a clip trained on must not be evaluated"
        )
    counts = ids.value_counts()
    repeated = counts[counts > 1]
    if len(repeated):
        vid = repeated.index[0]
        raise DataError(
            f"{splits_csv}: clip id {vid[:80]!r} is listed {repeated.iloc[0]} times ({len(repeated)} repeated "
            "clip id(s)): each clip once"
        )


def _check_manifest_types(doc: dict, path: Path) -> None:
    """The shape of the keys the suite walks: one line naming the key, not a traceback later."""
    for key in MAPPING_KEYS:
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise ConfigError(f"'{key}' in benchmark manifest {path} must be a mapping, got {type(doc[key]).__name__}")
    for key in POSITIVE_INT_KEYS:
        value = doc.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"'{key}' in benchmark manifest {path} must be an integer >= 1, got {value!r}")
    if doc.get("inputs") is not None and not isinstance(doc["inputs"], list):
        raise ConfigError(f"'inputs' in benchmark manifest {path} must be a list, got {type(doc['inputs']).__name__}")


def load_manifest(name_or_path: str) -> Manifest:
    """Load ``datasets/<name>.yaml`` or a user's YAML given by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        path = p.expanduser()
        if not path.is_file():
            raise ConfigError(f"benchmark file not found: {path}")
    else:
        path = DATASETS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown benchmark '{name_or_path}' (known: {', '.join(benchmark_names())})")
    doc = load_yaml(path, "benchmark")
    unknown = sorted(set(doc) - MANIFEST_KEYS)
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}' in benchmark manifest {path}")
    _check_manifest_types(doc, path)
    for pname, proto in (doc.get("protocols") or {}).items():
        if proto is not None and not isinstance(proto, dict):
            raise ConfigError(f"protocols.{pname} in {path} must be a mapping, got {type(proto).__name__}")
        bad = sorted(set(proto or {}) - PROTOCOL_KEYS)
        if bad:
            raise ConfigError(f"unknown key 'protocols.{pname}.{bad[0]}' in {path}")
        settings = (proto or {}).get("settings")
        if settings is not None and (not isinstance(settings, str) or not settings):
            raise ConfigError(f"protocols.{pname}.settings in {path} must be a name (e.g. AVE), got {settings!r}")
    return Manifest(name=doc.get("name") or path.stem, path=path, doc=doc)
