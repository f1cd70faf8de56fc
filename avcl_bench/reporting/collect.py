"""Read run directories and group them; every metric is recomputed from the accuracy matrices.

A *group* is every complete run with the same resolved configuration except the seed (same
``config_id``) and the same predicted modality: the unit that is averaged over seeds. Metric
values come from :func:`avcl_bench.metrics.all_metrics` applied to ``accuracy_<modality>.csv``;
``metrics.json`` is only read for what is not a function of the matrix (names, timing, memory,
parameters, buffer size, the method's catalogue entry) and is cross-checked against the
recomputation.

Method names come from the catalogue (:mod:`avcl_bench.strategies`: ``strategies/*.yaml``, read
as data) overlaid with the entry each run recorded, so a method from outside the package is shown
under the display name its run recorded; no strategy code is imported.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .. import metrics, safe_yaml
from ..config import method_name
from ..rundir import COMPLETE, complete_conflict, config_hash, read_matrix

#: Config keys that do not distinguish a configuration (seed is what groups average over).
NOT_CONFIG = ("seed", "run_id", "results_dir", "progress", "device")
#: Scalar metrics (all keys of metrics.all_metrics except the per-step list).
SCALAR_METRICS = (
    "avg_acc",
    "forgetting",
    "forgetting_l2p",
    "mean_inc_acc",
    "avcil_forgetting",
    "forgetting_first_last",
    "bwt",
)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_id(cfg: dict) -> str:
    """Hash of the resolved config without the seed (and fields that do not change results)."""
    keep = {k: v for k, v in cfg.items() if k not in NOT_CONFIG}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class ModalityResult:
    R: np.ndarray  # T x T, NaN above the diagonal
    task_sizes: list[int]
    metrics: dict  # metrics.all_metrics(R, task_sizes)


@dataclass
class Run:
    run_id: str
    path: Path
    cfg: dict
    strategy: str
    benchmark: str
    protocol: str
    trained_modality: str
    input: str
    seed: int
    num_tasks: int
    num_classes: int | None
    results: dict[str, ModalityResult]
    info: dict  # metrics.json without the metric values (run, timing, memory)
    completed_at: float
    config_id: str
    config_hash: str
    variant: str = ""  # the leaderboard's variant: the named variant, then config keys that differ
    git_commit: str | None = None
    catalogue: dict | None = None  # the method's catalogue entry the run recorded (metrics.json)
    #: {strategy key: value} of the named variant the run recorded (empty: the method itself)
    method_variant: dict = field(default_factory=dict)
    variant_name: str = ""  # its name, e.g. "+ old-class BCE" (config.variant_label)

    def flat_cfg(self) -> dict:
        return flatten(self.cfg)


@dataclass
class Group:
    """Complete runs of one configuration and one predicted modality (over seeds)."""

    config_id: str
    modality: str
    runs: list[Run] = field(default_factory=list)
    display_name: str = ""  # the method's name in tables and figures (Collection.display)

    @property
    def first(self) -> Run:
        return self.runs[0]

    strategy = property(lambda self: self.first.strategy)
    benchmark = property(lambda self: self.first.benchmark)
    protocol = property(lambda self: self.first.protocol)
    trained_modality = property(lambda self: self.first.trained_modality)
    variant = property(lambda self: self.first.variant)
    method_variant = property(lambda self: self.first.method_variant)
    variant_name = property(lambda self: self.first.variant_name)
    cfg = property(lambda self: self.first.cfg)
    num_tasks = property(lambda self: self.first.num_tasks)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def latest(self) -> float:
        return max(r.completed_at for r in self.runs)

    def values(self, metric: str) -> list[float]:
        return [float(r.results[self.modality].metrics[metric]) for r in self.runs]

    def stat(self, metric: str) -> "Stat":
        return Stat.of(self.values(metric))

    def matrices(self) -> np.ndarray:
        return np.stack([r.results[self.modality].R for r in self.runs])

    def step_acc(self) -> np.ndarray:
        """seeds x T step accuracies (AV-CIL), from metrics.step_accuracies."""
        return np.array([r.results[self.modality].metrics["step_acc"] for r in self.runs], dtype=float)

    def avg_acc_curve(self) -> np.ndarray:
        """seeds x T: average accuracy over the tasks seen after each step (CIGN's metric applied
        to the leading sub-matrix R[:i+1, :i+1])."""
        out = []
        for r in self.runs:
            R = r.results[self.modality].R
            out.append([metrics.average_accuracy(R[: i + 1, : i + 1]) for i in range(R.shape[0])])
        return np.array(out, dtype=float)


@dataclass
class Stat:
    mean: float | None
    std: float | None
    n: int
    ci95: float | None

    @classmethod
    def of(cls, values) -> "Stat":
        vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        n = len(vals)
        if n == 0:
            return cls(None, None, 0, None)
        mean = float(np.mean(vals))
        if n == 1:
            return cls(mean, None, 1, None)
        std = float(np.std(vals, ddof=1))
        return cls(mean, std, n, t_quantile_975(n - 1) * std / math.sqrt(n))


_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


def t_quantile_975(df: int) -> float:
    """Student t 0.975 quantile (two-sided 95 % CI half-width factor)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn / avalanche
        keys = sorted(_T975)
        for k in keys:
            if df <= k:
                return _T975[k]
        return 1.96


@dataclass
class Collection:
    runs: list[Run]
    groups: list[Group]
    incomplete: list[dict]  # run dirs without COMPLETE: {run_id, path, state, error}
    warnings: list[str]
    #: strategy -> catalogue entry: the built-in strategies' overlaid with what the runs recorded
    catalogue: dict[str, dict] = field(default_factory=dict)

    def display(self, strategy: str) -> str:
        return (self.catalogue.get(strategy) or {}).get("display_name") or strategy


def _benchmark_name(cfg: dict, info: dict) -> str:
    name = (info.get("run") or {}).get("benchmark")
    if name:
        return str(name)
    b = str(cfg.get("benchmark") or "")
    return Path(b).stem if b.endswith((".yaml", ".yml")) else b


class MalformedRun(Exception):
    """A complete-looking run folder whose files do not hold what a run writes."""


def load_run(path: Path, warnings: list[str]) -> Run | None:
    """A complete run directory -> Run (None, with a warning, if it holds no readable matrix).

    Raises :class:`MalformedRun` naming the file when the folder's files are not what a run writes
    (another tool's files, a hand edit, a torn copy): the report lists it and goes on."""
    try:
        return _load_run(path, warnings)
    except MalformedRun:
        raise
    except Exception as exc:  # noqa: BLE001 - any other surprise in one folder must not stop the report
        raise MalformedRun(f"{type(exc).__name__}: {exc}") from None


def _read_mapping(path: Path, what: str, missing_ok: bool = False) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise MalformedRun(f"{path.name} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MalformedRun(f"{path.name} is unreadable ({type(exc).__name__})") from None
    try:
        data = safe_yaml.safe_load(text) if what == "yaml" else json.loads(text)
    except safe_yaml.YAMLTooLarge as exc:
        raise MalformedRun(f"{path.name} is refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise MalformedRun(f"{path.name} is not valid YAML: {safe_yaml.problem(exc)}") from None
    except ValueError:
        raise MalformedRun(f"{path.name} is not valid {what.upper()}") from None
    if data is None and missing_ok:
        return {}
    if not isinstance(data, dict):
        raise MalformedRun(f"{path.name} holds a {type(data).__name__}, not a mapping")
    return data


def _load_run(path: Path, warnings: list[str]) -> Run | None:
    cfg = _read_mapping(path / "config.yaml", "yaml")
    info = _read_mapping(path / "metrics.json", "json", missing_ok=True)
    for key in ("run", "modalities"):
        if not isinstance(info.get(key) or {}, dict):
            raise MalformedRun(f"metrics.json '{key}' is a {type(info[key]).__name__}, not a mapping")
    if not isinstance(cfg.get("strategy") or {}, dict):
        raise MalformedRun("config.yaml 'strategy' is not a mapping")
    results = {}
    for csv in sorted(path.glob("accuracy_*.csv")):
        modality = csv.stem[len("accuracy_") :]
        try:
            rows, sizes = read_matrix(csv)
            R = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
            if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
                raise ValueError(f"not square: {R.shape}")
            if np.isnan(R[np.tril_indices(R.shape[0])]).any():
                raise ValueError("missing entries on or below the diagonal")
            known = R[~np.isnan(R)]
            if not np.isfinite(known).all() or (known < 0).any() or (known > 100).any():
                raise MalformedRun(f"{csv.name} holds accuracies outside [0, 100]")
            if len(sizes) != R.shape[0]:
                sizes = None
        except (OSError, ValueError) as exc:
            warnings.append(f"{csv}: skipped ({exc})")
            continue
        num_classes = (info.get("run") or {}).get("num_classes")
        per_task = num_classes // R.shape[0] if isinstance(num_classes, int) and num_classes >= R.shape[0] else None
        m = metrics.all_metrics(R, sizes, classes_per_task=per_task)
        stored = (info.get("modalities") or {}).get(modality) or {}
        for key in SCALAR_METRICS:
            if key in stored and stored[key] is not None and not math.isclose(float(stored[key]), m[key], abs_tol=1e-3):
                warnings.append(
                    f"{path.name}: metrics.json {modality}.{key}={stored[key]} differs from the value "
                    f"recomputed from {csv.name} ({m[key]:.4f}); the recomputed value is reported"
                )
        results[modality] = ModalityResult(R, list(sizes or []), m)
    if not results:
        warnings.append(f"{path}: complete but holds no readable accuracy matrix")
        return None
    run_info = info.get("run") or {}
    try:
        completed_at = (path / COMPLETE).stat().st_mtime
    except OSError:
        completed_at = 0.0
    env = _read_mapping(path / "environment.json", "json", missing_ok=True)
    T = next(iter(results.values())).R.shape[0]
    strategy = (cfg.get("strategy") or {}).get("name") or run_info.get("strategy") or "?"
    return Run(
        run_id=path.name,
        path=path,
        cfg=cfg,
        strategy=str(strategy),
        benchmark=_benchmark_name(cfg, info),
        protocol=str(cfg.get("protocol") or run_info.get("protocol") or ""),
        trained_modality=str(cfg.get("modality") or run_info.get("modality") or ""),
        input=str(cfg.get("input") or run_info.get("input") or ""),
        seed=_seed(cfg, run_info),
        num_tasks=T,
        num_classes=run_info.get("num_classes"),
        results=results,
        info={k: v for k, v in info.items() if k not in ("modalities", "definitions")},
        completed_at=completed_at,
        config_id=config_id(cfg),
        config_hash=config_hash(cfg),
        git_commit=env.get("git_commit"),
        catalogue=run_info.get("catalogue"),
        **_recorded_variant(cfg, run_info, str(strategy)),
    )


def _recorded_variant(cfg: dict, run_info: dict, strategy: str) -> dict:
    """The named variant a run recorded (metrics.json ``run.variant``, ``run.variant_name``). A run
    written before runs recorded it gets it from its config and the built-in strategy's document
    (its protocol sections without per-dataset settings); a method outside the package is never
    loaded here (that would run its code), so such a run counts as the method itself."""
    if "variant" in run_info:
        variant, name = run_info.get("variant"), run_info.get("variant_name", "")
        if not isinstance(variant, dict) or not isinstance(name, str):
            raise MalformedRun("metrics.json 'run.variant' is not a mapping with a name")
        return {"method_variant": variant, "variant_name": name}
    from ..config import method_variant, variant_label
    from ..errors import ConfigError
    from ..strategies import is_builtin

    if not is_builtin(strategy):
        return {}
    try:
        variant = method_variant(cfg)
        return {"method_variant": variant, "variant_name": variant_label(cfg, variant)}
    except (ConfigError, KeyError, TypeError, ValueError):
        return {}


def _seed(cfg: dict, run_info: dict) -> int:
    seed = cfg.get("seed", run_info.get("seed", 0))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MalformedRun(f"config.yaml seed {seed!r} is not an integer")
    return seed


def _incomplete_state(path: Path) -> dict:
    """State and error of a run folder without COMPLETE, as its status.json says; a 'running' run
    that no live process holds was killed or could not write its last status: it is failed."""
    from ..rundir import LOCK, _lock_is_stale

    try:
        status = json.loads((path / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        status = {}
    if not isinstance(status, dict):
        status = {}
    state, error = str(status.get("state", "unknown")), str(status.get("error", ""))
    lock = path / LOCK
    if state == "running" and (not lock.exists() or _lock_is_stale(lock)):
        state = "failed"
        error = "status says running, but no process holds the run (killed, or its final status not written)"
    return {"state": state, "error": error}


def matches(cfg: dict, where: dict | None) -> bool:
    """``where`` (nested dict from --where KEY=VALUE) holds in ``cfg``."""
    if not where:
        return True
    flat, want = flatten(cfg), flatten(where)
    for k, v in want.items():
        if k not in flat:
            return False
        if flat[k] != v and str(flat[k]) != str(v):
            return False
    return True


def _label_variants(runs: list[Run]) -> None:
    """Within each (strategy, benchmark, protocol), name each configuration by the config keys
    whose values differ between the configurations present (empty when there is only one)."""
    by_cell: dict[tuple, dict[str, dict]] = {}
    named: dict[tuple, set] = {}  # the variant keys of a cell: named by the variant, not listed again
    for r in runs:
        flat = {k: v for k, v in r.flat_cfg().items() if k.split(".")[0] not in NOT_CONFIG and k != "modality"}
        by_cell.setdefault((r.strategy, r.benchmark, r.protocol), {})[r.config_id] = flat
        named.setdefault((r.strategy, r.benchmark, r.protocol), set()).update(f"strategy.{k}" for k in r.method_variant)
    for cell, cfgs in by_cell.items():
        for f in cfgs.values():
            for k in named[cell]:
                f.pop(k, None)
    labels: dict[str, str] = {}
    for cfgs in by_cell.values():
        if len(cfgs) < 2:
            continue
        keys = sorted({k for f in cfgs.values() for k in f})
        varying = [
            k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in cfgs.values()}) > 1
        ]
        for cid, f in cfgs.items():
            labels[cid] = ", ".join(f"{k}={f.get(k)}" for k in varying)
    for r in runs:
        r.variant = "; ".join(x for x in (r.variant_name, labels.get(r.config_id, "")) if x)


def collect(results_dirs, where: dict | None = None) -> Collection:
    """Scan run directories (``<dir>/<run-id>/``) and build the seed groups."""
    warnings: list[str] = []
    runs: list[Run] = []
    incomplete: list[dict] = []
    seen: set[Path] = set()
    for rdir in results_dirs:
        rdir = Path(rdir)
        if not rdir.is_dir():
            warnings.append(f"results folder {rdir} does not exist")
            continue
        try:
            entries = sorted(rdir.iterdir())
        except OSError as exc:
            warnings.append(f"results folder {rdir} is unreadable ({exc.strerror or type(exc).__name__})")
            continue
        for path in entries:
            try:
                if not (path.is_dir() and (path / "config.yaml").is_file()):
                    continue
                complete = (path / COMPLETE).is_file()
            except OSError as exc:  # a folder this user may not enter: listed, the others reported
                incomplete.append(
                    {"run_id": path.name, "path": str(path), "state": "malformed",
                     "error": f"unreadable folder ({exc.strerror or type(exc).__name__})"}
                )
                continue
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            if not complete:
                incomplete.append({"run_id": path.name, "path": str(path), **_incomplete_state(path)})
                continue
            conflict = complete_conflict(path)
            if conflict:  # COMPLETE that its own status contradicts: listed, never a result
                incomplete.append({"run_id": path.name, "path": str(path), "state": "malformed", "error": conflict})
                continue
            try:
                run = load_run(path, warnings)
            except MalformedRun as exc:
                incomplete.append({"run_id": path.name, "path": str(path), "state": "malformed", "error": str(exc)})
                continue
            if run is not None and matches(run.cfg, where):
                runs.append(run)
    _label_variants(runs)
    groups: dict[tuple, Group] = {}
    for r in sorted(runs, key=lambda r: (r.seed, r.completed_at)):
        for m in r.results:
            g = groups.setdefault((r.config_id, m), Group(r.config_id, m))
            if r.seed in g.seeds:  # the same config and seed twice: keep the latest
                old = next(x for x in g.runs if x.seed == r.seed)
                if r.completed_at >= old.completed_at:
                    g.runs[g.runs.index(old)] = r
                warnings.append(f"runs {old.run_id} and {r.run_id} have the same config and seed; the latest is used")
                continue
            g.runs.append(r)
    col = Collection(runs, list(groups.values()), incomplete, warnings, method_catalogue(runs))
    for g in col.groups:
        g.display_name = method_name(col.display(g.strategy), g.variant_name)
    return col


def method_catalogue(runs: list[Run]) -> dict[str, dict]:
    """The built-in catalogue, then each run's recorded entry (the latest run of a method wins)."""
    from ..strategies import builtin_catalogue

    catalogue = builtin_catalogue()
    for r in sorted(runs, key=lambda r: r.completed_at):
        if isinstance(r.catalogue, dict) and r.catalogue.get("display_name"):
            catalogue[r.strategy] = {**catalogue.get(r.strategy, {}), **r.catalogue}
    return catalogue


def pick_group(
    groups: list[Group], strategy: str, benchmark: str, protocol: str, modality: str, predicate=None
) -> tuple[Group | None, int]:
    """The group shown in a table cell, and how many other configurations were left out
    (``predicate(group)``: which groups the cell may show).

    Preference: a run trained in the predicted modality, then the most seeds, then the latest.
    """
    cands = [
        g
        for g in groups
        if g.strategy == strategy
        and g.benchmark == benchmark
        and g.protocol == protocol
        and g.modality == modality
        and (predicate is None or predicate(g))
    ]
    if not cands:
        return None, 0
    cands.sort(key=lambda g: (g.trained_modality == modality, g.n, g.latest), reverse=True)
    return cands[0], len({g.config_id for g in cands}) - 1
