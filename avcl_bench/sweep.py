"""Sweeps: strategies x benchmarks x variants x modalities x seeds, resumable, on several executors.

A sweep is first *planned*: every cell is resolved with :func:`avcl_bench.runner.build_config`
(the same resolution as ``avcl-bench run``), hashed with :func:`avcl_bench.rundir.config_hash`
and given a deterministic run id ``<strategy>_<benchmark>_<protocol>_<modality>_s<seed>_<hash>``.
A cell whose resolved config already has a complete run directory anywhere under the results
folder (same hash, ``COMPLETE`` present) is skipped, so re-running an interrupted sweep resumes
it. Failed runs are retried on the next invocation (``--no-retry-failed`` keeps them).

Executors
---------
``local`` with ``--jobs 1``
    sequential, in this process (fastest to start; a crash of the interpreter ends the sweep).
``local`` with ``--jobs N``
    a pool of N concurrent child processes, one fresh process per run (a crashed or killed run
    is recorded as failed and the sweep goes on); each gets ``cpu_count // N`` torch threads.
``ray``
    one run per Ray task on a local instance or a cluster (``--address``); each task asks for
    ``--cpus-per-run`` CPUs and, where the cluster has GPUs, ``--gpus-per-run`` GPUs (default 1).
    On a cluster the package must be installed on every node and the results folder must be on a
    shared file system.

A run that fails (any exception, a crashed process, a config that does not resolve) leaves a run
directory whose ``status.json`` has ``state: failed`` and the error; the sweep continues. The sweep
itself is recorded in ``<results>/../sweeps/<name>/sweep-<time>-<pid>.json`` (per-run state, error,
seconds; ``sweep.json`` beside it is a copy of the latest) with one log per child-process run under
``logs/``.

Strategies that predict every modality from one model (CIGN: audio, visual and audio-visual from
one run; the ``modalities`` of their catalogue entry) are run once, trained audio-visually, whatever
modalities the sweep asks for; the report reads each predicted modality from that run. A preset's
methods are those whose catalogue entry lists the preset in ``tables``, in the paper's row order
(``digits-av``, the README's table on the real set, names its nine methods itself).
A strategy is a built-in name or the spec of a method outside the package
(``path/to/file.py:Class``, ``package.module:Class``, an entry-point name).

This module imports neither torch nor Avalanche at import time.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import safe_yaml
from .errors import ConfigError, UserError
from .modalities import MODALITIES
from .strategies import canonical_spec, members, strategy_catalogue


@dataclass(frozen=True)
class Preset:
    title: str
    benchmarks: tuple[str, ...]
    strategies: tuple[str, ...]
    modalities: tuple[str, ...] = MODALITIES
    protocol: str | None = None  # applied to the preset's own benchmarks only
    #: label -> overrides merged into each run's config (e.g. the ablation switches)
    variants: dict = field(default_factory=lambda: {"": {}})
    seeds: tuple[int, ...] = (0, 1, 2)
    #: config applied to every run of the preset (below the user's ``--set``), e.g. a size profile
    sets: dict = field(default_factory=dict)


def _methods(*tables: str, family: str = "cign") -> tuple[str, ...]:
    """The methods whose catalogue entry lists any of ``tables``, in the paper's row order."""
    return tuple(members(tables, family))


#: Named sweeps; a preset's name is the ``tables`` key by which strategies declare that they belong
#: to it (``cign-tables``: Tables 1-3). ``--benchmarks``, ``--strategies``, ``--modalities``,
#: ``--seeds`` and ``--set`` adapt any of them (e.g. ``--preset cign-table1 --benchmarks synth-av
#: --set synth.size=tiny``).
PRESETS: dict[str, Preset] = {
    "cign-table1": Preset(
        "CIGN Table 1: VGGSound-Instruments", ("vggsound-instruments",), _methods("cign-table1"), protocol="cign"
    ),
    "cign-table2": Preset("CIGN Table 2: VGGSound-100", ("vggsound-100",), _methods("cign-table2"), protocol="cign"),
    "cign-table3": Preset(
        "CIGN Table 3: VGG-Sound Sources", ("vggsound-sources",), _methods("cign-table3"), protocol="cign"
    ),
    "cign-tables": Preset(
        "CIGN Tables 1-3",
        ("vggsound-instruments", "vggsound-100", "vggsound-sources"),
        _methods("cign-table1", "cign-table2", "cign-table3"),
        protocol="cign",
    ),
    "cign-table4": Preset(
        "CIGN Table 4: ablation of AVCTD / AVCG on VGGSound-100",
        ("vggsound-100",),
        _methods("cign-table4"),
        modalities=("audio-visual",),
        protocol="cign",
        variants={
            "no-avctd-no-avcg": {"strategy": {"avctd": False, "avcg": False}},
            "avctd-only": {"strategy": {"avctd": True, "avcg": False}},
            "avcg-only": {"strategy": {"avctd": False, "avcg": True}},
            "avctd-avcg": {"strategy": {"avctd": True, "avcg": True}},
        },
    ),
    "cign-10tasks": Preset(
        "CIGN Sec. 4.3: 10 tasks x 10 classes on VGGSound-100",
        ("vggsound-100",),
        _methods("cign-10tasks"),
        protocol="cign-10",
    ),
    "avcil-tables": Preset(
        "AV-CIL protocol: AVE-CI, K-S-CI, VS100-CI",
        ("ave-ci", "ks-ci", "vs100-ci"),
        _methods("avcil-tables", family="avcil"),
        protocol="av-cil",
    ),
    "digits-av": Preset(
        "digits-av (real recordings, quick profile): the README's table",
        ("digits-av/digits-av.yaml",),  # where the README's `avcl-bench generate digits-av --out digits-av` puts it
        ("finetune", "joint", "ewc", "lwf", "icarl", "bic", "ssil", "cign", "av-cil"),
        sets={"profile": "quick"},
    ),
}


# ---- planning --------------------------------------------------------------------------------


@dataclass
class RunSpec:
    """One planned run: what to call ``runner.run`` with, and where it lands."""

    strategy: str
    benchmark: str
    modality: str
    seed: int
    variant: str
    overrides: dict
    run_id: str
    config_hash: str | None  # None when the config does not resolve (error set)
    error: str | None = None  # planning error (unknown strategy, bad key ...)
    status: str = "pending"  # pending | skipped (complete) | skipped-failed | complete | failed | busy
    existing: str | None = None  # path of the complete run that made it skip
    predicted: tuple[str, ...] = ()
    ran_as: str | None = None  # the run id it ran under, when the config changed after planning
    settings: str = ""  # its training settings in one line (config.settings_summary; the dry run shows it)

    def to_json(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "strategy",
                "benchmark",
                "modality",
                "seed",
                "variant",
                "overrides",
                "run_id",
                "config_hash",
                "error",
                "status",
                "existing",
                "ran_as",
            )
        }


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(text)).strip("-") or "x"


def strategy_available(name: str) -> bool:
    """Whether a built-in strategy has its YAML and its module (without importing it), or a spec
    names a class that loads."""
    from .paths import PROJECT_ROOT
    from .strategies import is_builtin, module_name  # light: the registry module imports no torch

    if is_builtin(name):
        return (PROJECT_ROOT / "avcl_bench" / "strategies" / f"{module_name(name)}.py").is_file()
    try:
        strategy_catalogue(name)
    except UserError:
        return False
    return True


def predicted_modalities(name: str) -> tuple[str, ...]:
    """The modalities one audio-visual run of the strategy reports (its catalogue's
    ``modalities``); () when it reports only the modality it trains, or when it does not resolve
    (the run is then recorded as failed at planning)."""
    try:
        mods = strategy_catalogue(name)["modalities"]
    except UserError:
        return ()
    return tuple(m for m in MODALITIES if m in mods) if len(mods) > 1 else ()


def run_name(name: str) -> str:
    """The method's name in run ids: its catalogue name (a spec holds a path or a module)."""
    try:
        return strategy_catalogue(name)["name"]
    except UserError:
        return name


def index_complete_runs(results_dirs) -> dict[str, Path]:
    """config_hash -> path of a complete run directory, over every run directory found."""
    from .rundir import COMPLETE, complete_conflict, config_hash

    found: dict[str, Path] = {}
    for rdir in results_dirs:
        rdir = Path(rdir)
        if not rdir.is_dir():
            continue
        for marker in sorted(rdir.glob(f"*/{COMPLETE}")):
            if complete_conflict(marker.parent):
                continue  # not a result (its own run says why)
            try:
                cfg = safe_yaml.safe_load((marker.parent / "config.yaml").read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):  # one bad folder is no reason to stop
                continue
            if isinstance(cfg, dict):
                found.setdefault(config_hash(cfg), marker.parent)
    return found


def _run_state(path: Path) -> str | None:
    try:
        return json.loads((path / "status.json").read_text()).get("state")
    except (OSError, ValueError):
        return None


def plan(
    strategies,
    benchmarks,
    modalities,
    seeds,
    sets: dict | None = None,
    variants: dict | None = None,
    protocol: str | None = None,
    results_dir: Path | None = None,
    skip_unavailable: bool = False,
    retry_failed: bool = True,
    extra: dict | None = None,
    log=print,
) -> list[RunSpec]:
    """Resolve every cell of the grid into a :class:`RunSpec` (skips marked, duplicates dropped).

    ``sets`` are the user's ``--set`` overrides (nested dict); ``variants`` label -> overrides;
    ``protocol`` is used for a benchmark only if the benchmark has it and ``sets`` names none;
    ``extra`` are the sweep's own run options (device, data root), merged last.
    """
    from .config import settings_summary
    from .data.manifest import load_manifest
    from .paths import default_results_dir, in_workdir
    from .rundir import config_hash
    from .runner import build_config, describe_method

    results_dir = in_workdir(results_dir) if results_dir else default_results_dir()
    complete = index_complete_runs([results_dir])
    variants = variants or {"": {}}
    sets = sets or {}
    specs: list[RunSpec] = []
    seen: set[str] = set()
    for bench in benchmarks:
        proto = None
        if protocol and "protocol" not in sets:
            try:
                man = load_manifest(bench)
                if protocol in man.protocols:
                    proto = protocol
                else:
                    log(
                        f"[sweep] benchmark '{bench}' has no protocol '{protocol}': using its default "
                        f"'{man.doc.get('default_protocol')}'"
                    )
            except UserError:
                proto = protocol  # reported per run below
        for strategy in map(canonical_spec, strategies):  # a file spec runs from any directory (Ray)
            if skip_unavailable and not strategy_available(strategy):
                log(
                    f"[sweep] strategy '{strategy}' is not available yet (no strategies/{strategy}.yaml or module): "
                    "skipped"
                )
                continue
            mods = list(modalities)
            predicted = predicted_modalities(strategy)
            if predicted:
                mods = ["audio-visual"]
            for vlabel, vover in variants.items():
                for modality in mods:
                    for seed in seeds:
                        over = deep_merge(vover, sets)
                        if proto is not None:
                            over["protocol"] = proto
                        over.update({"modality": modality, "seed": int(seed)})
                        over = deep_merge(over, extra or {})
                        over.update({"results_dir": str(results_dir), "progress": False})
                        bname = Path(bench).stem if bench.endswith((".yaml", ".yml")) else bench
                        try:
                            provenance: dict = {}
                            cfg, manifest = build_config(strategy, bench, over, provenance=provenance)
                            # what will run, by name (a named variant carries it), then its settings
                            settings = f"[{describe_method(cfg, manifest)['method']}] " + settings_summary(cfg, provenance)
                            h = config_hash(cfg)
                            run_id = (
                                "_".join(
                                    _slug(p)
                                    for p in (run_name(strategy), manifest.name, cfg["protocol"], modality, f"s{seed}")
                                )
                                + f"_{h}"
                            )
                            err = None
                        except UserError as exc:
                            h, err, settings = None, str(exc), ""
                            run_id = "_".join(
                                _slug(p)
                                for p in (
                                    run_name(strategy),
                                    bname,
                                    over.get("protocol") or "default",
                                    modality,
                                    f"s{seed}",
                                    vlabel or "base",
                                    "unresolved",
                                )
                            )
                        key = h or run_id
                        if key in seen:
                            continue
                        seen.add(key)
                        over["run_id"] = run_id
                        spec = RunSpec(
                            strategy,
                            bench,
                            modality,
                            int(seed),
                            vlabel,
                            over,
                            run_id,
                            h,
                            err,
                            predicted=predicted,
                            settings=settings,
                        )
                        if err:
                            spec.status = "failed"
                        elif h in complete:
                            spec.status, spec.existing = "skipped", str(complete[h])
                        elif not retry_failed and _run_state(results_dir / run_id) == "failed":
                            spec.status = "skipped-failed"
                        specs.append(spec)
    return specs


# ---- executing one run ------------------------------------------------------------------------


def _record_failure(results_dir: Path, spec_json: dict, error: str, tb: str | None = None) -> None:
    """Make sure the run directory says ``failed`` with the error (never touching a complete run)."""
    from .rundir import RunDir, atomic_write_json, atomic_write_text

    path = Path(results_dir) / spec_json["run_id"]
    rd = RunDir(path)
    if rd.complete:
        return
    path.mkdir(parents=True, exist_ok=True)
    status = {}
    try:
        status = json.loads((path / "status.json").read_text())
    except (OSError, ValueError):
        pass
    if not (path / "config.yaml").is_file():
        # The config did not resolve (or the run died before writing it): keep what was asked.
        atomic_write_text(
            path / "config.yaml",
            yaml.safe_dump(
                {
                    "unresolved": True,
                    "strategy": {"name": spec_json["strategy"]},
                    "benchmark": spec_json["benchmark"],
                    "requested_overrides": spec_json["overrides"],
                },
                sort_keys=False,
            ),
        )
    if status.get("state") == "interrupted":  # the runner's own record (resumable): keep it, add the error
        status["sweep_error"] = error
    elif status.get("state") != "failed":
        status = {
            "state": "failed",
            "time": time.time(),
            "error": error,
            **{k: v for k, v in status.items() if k not in ("state", "time", "error")},
        }
    status["error"] = status.get("error") or error
    if tb:
        status["traceback"] = tb
    status["recorded_by"] = "sweep"
    atomic_write_json(path / "status.json", status)


def _resumable(path: Path, expected_hash: str | None) -> bool:
    """An incomplete run directory of the same resolved config holding a task-boundary checkpoint."""
    from .rundir import COMPLETE, config_hash

    if not (path / "checkpoint.pt").is_file() or (path / COMPLETE).exists() or not expected_hash:
        return False
    try:
        return config_hash(safe_yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))) == expected_hash
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError, TypeError):
        return False


def _refresh(spec_json: dict, results_dir: Path) -> tuple[dict, Path | None]:
    """Resolve the run's config again right before running it.

    The strategy and benchmark YAMLs may have changed since the sweep was planned (hours earlier,
    or a tree other people edit): the run id must name the config the run will really save. If the
    hash changed, the run gets the run id of the new hash, and is skipped if a complete run of the
    new config exists. Returns (spec, path of that complete run or None).
    """
    from .rundir import config_hash
    from .runner import build_config

    if not spec_json.get("config_hash"):
        return spec_json, None
    cfg, _ = build_config(spec_json["strategy"], spec_json["benchmark"], copy.deepcopy(spec_json["overrides"]))
    h = config_hash(cfg)
    if h == spec_json["config_hash"]:
        return spec_json, None
    prefix = spec_json["run_id"][: -len(spec_json["config_hash"])]
    new_id = prefix + h if spec_json["run_id"].endswith(spec_json["config_hash"]) else f"{spec_json['run_id']}_{h}"
    spec_json = {
        **spec_json,
        "config_hash": h,
        "run_id": new_id,
        "overrides": {**spec_json["overrides"], "run_id": new_id},
    }
    return spec_json, index_complete_runs([results_dir]).get(h)


def execute_spec(spec_json: dict) -> dict:
    """Run one planned run in this process; never raises except KeyboardInterrupt.

    Returns ``{"run_id", "state", "error", "seconds"}`` with state ``complete`` or ``failed``, or
    ``skipped`` when the run became complete meanwhile or ``busy`` when another live process (a
    concurrent sweep) holds it. Used by every executor (in process, in a child process, in a Ray
    task). A run interrupted at a task boundary (checkpoint present) is resumed, not restarted.
    """
    from .rundir import COMPLETE, acquire_run_lock, complete_conflict, lock_in_use_message

    t0 = time.time()
    results_dir = Path(spec_json["overrides"]["results_dir"])
    base = {"run_id": spec_json["run_id"], "error": None}
    try:
        spec_json, existing = _refresh(spec_json, results_dir)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the config no longer resolves: a failed run
        error = f"{type(exc).__name__}: {exc}"
        _record_failure(results_dir, spec_json, error, traceback.format_exc())
        return {**base, "state": "failed", "error": error, "seconds": time.time() - t0}
    base["ran_as"] = spec_json["run_id"]
    if existing is not None:
        return {**base, "state": "skipped", "seconds": 0.0, "existing": str(existing)}
    path = results_dir / spec_json["run_id"]

    def finished() -> dict | None:
        """skipped for a complete run; failed, and left as it is, for a folder whose COMPLETE its
        status.json contradicts (not a result, and not the suite's to clear)"""
        if not (path / COMPLETE).is_file():
            return None
        conflict = complete_conflict(path)
        if conflict:
            error = f"run folder {path}: {conflict}; not counted as a result (remove the folder to run it again)"
            return {**base, "state": "failed", "error": error, "seconds": 0.0}
        return {**base, "state": "skipped", "seconds": 0.0}

    done = finished()
    if done:
        return done
    lock = acquire_run_lock(path)
    if lock is None:
        return {**base, "state": "busy", "error": lock_in_use_message(path), "seconds": 0.0}
    try:
        done = finished()  # finished by another sweep between the check and the lock
        if done:
            return done
        threads = spec_json.get("threads")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        from .runner import run

        resumed = _resumable(path, spec_json.get("config_hash"))
        if resumed:
            # An interrupted (or failed) attempt left a checkpoint at a task boundary: continue it.
            run(
                spec_json["strategy"],  # the sweep names the method: the folder's own name must agree
                None,
                {k: v for k, v in spec_json["overrides"].items() if k in ("device", "progress")},
                quiet=True,
                resume=str(path),
            )
        else:
            # a fresh attempt: what an earlier failed attempt left in the folder is replaced
            run(
                spec_json["strategy"],
                spec_json["benchmark"],
                copy.deepcopy(spec_json["overrides"]),
                quiet=True,
                overwrite=True,
            )
        return {**base, "state": "complete", "seconds": time.time() - t0, "resumed": resumed}
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure is recorded, the sweep goes on
        error = f"{type(exc).__name__}: {exc}"
        _record_failure(results_dir, spec_json, error, traceback.format_exc())
        return {**base, "state": "failed", "error": error, "seconds": time.time() - t0}
    finally:
        try:
            lock.unlink()
        except FileNotFoundError:
            pass


def _spec_payload(spec: RunSpec, threads: int | None = None) -> dict:
    d = spec.to_json()
    d["threads"] = threads
    return d


# ---- executors -----------------------------------------------------------------------------------


class Progress:
    """tqdm bar over the runs to execute, with done / failed counts."""

    def __init__(self, total: int, enabled: bool = True, desc: str = "sweep"):
        self.ok = self.failed = self.other = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)

    def update(self, result: dict) -> None:
        if result["state"] == "complete":
            self.ok += 1
        elif result["state"] == "failed":
            self.failed += 1
        else:  # skipped (completed meanwhile) or busy (another sweep runs it)
            self.other += 1
        if self.bar is not None:
            other = f" skipped={self.other}" if self.other else ""
            self.bar.set_postfix_str(f"ok={self.ok} failed={self.failed}{other} last={result['run_id'][:40]}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_local(
    specs: list[RunSpec],
    jobs: int = 1,
    on_result=None,
    progress: bool = True,
    log_dir: Path | None = None,
    threads: int | None = None,
) -> list[dict]:
    """Sequential in-process (jobs=1) or a pool of ``jobs`` concurrent child processes."""
    bar = Progress(len(specs), progress)
    results = []

    def done(res):
        results.append(res)
        bar.update(res)
        if on_result:
            on_result(res)

    try:
        if jobs <= 1:
            for spec in specs:
                done(execute_spec(_spec_payload(spec, threads)))
        else:
            per_run = threads or max(1, (os.cpu_count() or 1) // jobs)
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futs = [pool.submit(_run_child, _spec_payload(spec, per_run), log_dir) for spec in specs]
                for fut in as_completed(futs):
                    done(fut.result())
    finally:
        bar.close()
    return results


def _run_child(payload: dict, log_dir: Path | None) -> dict:
    """One run in a fresh Python process (``python -m avcl_bench.sweep --worker``)."""
    t0 = time.time()
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(payload.get("threads") or 1))
    log_path = None
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        log_path = Path(log_dir) / f"{payload['run_id']}.log"
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "avcl_bench.sweep", "--worker", json.dumps(payload)],
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            env=env,
        )
    finally:
        if log_path:
            out.close()
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    error = f"run process exited with code {proc.returncode}" + (f" (log: {log_path})" if log_path else "")
    results_dir = Path(payload["overrides"]["results_dir"])
    _record_failure(results_dir, payload, error)
    return {"run_id": payload["run_id"], "state": "failed", "error": error, "seconds": time.time() - t0}


def run_ray(
    specs: list[RunSpec],
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float | None = None,
    on_result=None,
    progress: bool = True,
) -> list[dict]:
    """One run per Ray task; GPUs are requested per task when the cluster has any."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'avcl-bench[ray]'") from None
    started = False
    if not ray.is_initialized():
        env_vars = {k: os.environ[k] for k in ("AVCL_BENCH_CACHE", "AVCL_BENCH_TEST_CACHE") if k in os.environ}
        kwargs = {"runtime_env": {"env_vars": env_vars}, "log_to_driver": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
        started = True
    try:
        if gpus_per_run is None:
            gpus_per_run = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(execute_spec)
        payloads = {}
        pending = []
        for spec in specs:
            ref = remote.remote(_spec_payload(spec, max(1, int(cpus_per_run))))
            payloads[ref] = spec
            pending.append(ref)
        bar = Progress(len(specs), progress, desc="sweep (ray)")
        results = []
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ref = ready[0]
                spec = payloads[ref]
                try:
                    res = ray.get(ref)
                except Exception as exc:  # worker crash, OOM kill, node loss ...
                    error = f"ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    _record_failure(Path(spec.overrides["results_dir"]), spec.to_json(), error)
                    res = {"run_id": spec.run_id, "state": "failed", "error": error, "seconds": None}
                results.append(res)
                bar.update(res)
                if on_result:
                    on_result(res)
        finally:
            bar.close()
        return results
    finally:
        if started:
            ray.shutdown()


# ---- the sweep as a whole -----------------------------------------------------------------------


def sweeps_dir(results_dir: Path) -> Path:
    results_dir = Path(results_dir)
    return results_dir.parent / "sweeps" if results_dir.name == "runs" else results_dir / "_sweeps"


def run_sweep(
    specs: list[RunSpec],
    name: str,
    results_dir: Path,
    executor: str = "local",
    jobs: int = 1,
    address: str | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float | None = None,
    ray_num_cpus: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    description: dict | None = None,
) -> dict:
    """Execute the pending specs, recording failures; returns the sweep record."""
    from .rundir import atomic_write_json

    results_dir = Path(results_dir)
    record_dir = sweeps_dir(results_dir) / _slug(name)
    # each sweep keeps its own record (two sweeps of one name, even at once, never overwrite each
    # other's); sweep.json is a copy of the latest sweep's, for convenience
    record_path = record_dir / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    by_id = {s.run_id: s for s in specs}
    for s in specs:  # planning failures: recorded like any failed run
        if s.status == "failed" and s.error:
            _record_failure(results_dir, s.to_json(), s.error)
    record = {
        "name": name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "executor": executor,
        "results_dir": str(results_dir),
        **(description or {}),
        "runs": {},
    }

    def save():
        record["runs"] = {s.run_id: s.to_json() for s in specs}
        record["counts"] = {st: sum(1 for s in specs if s.status == st) for st in sorted({s.status for s in specs})}
        atomic_write_json(record_path, record)
        atomic_write_json(record_dir / "sweep.json", record)

    def on_result(res):
        s = by_id[res["run_id"]]
        s.status = res["state"]
        s.error = res.get("error")
        if res.get("ran_as") and res["ran_as"] != s.run_id:
            s.ran_as = res["ran_as"]
        if res.get("existing"):
            s.existing = res["existing"]
        save()

    save()
    todo = [s for s in specs if s.status == "pending"]
    try:
        if not todo:
            pass
        elif executor == "ray":
            run_ray(
                todo,
                address=address,
                num_cpus=ray_num_cpus,
                cpus_per_run=cpus_per_run,
                gpus_per_run=gpus_per_run,
                on_result=on_result,
                progress=progress,
            )
        elif executor == "local":
            run_local(
                todo, jobs=jobs, on_result=on_result, progress=progress, log_dir=record_dir / "logs", threads=threads
            )
        else:
            raise ConfigError(f"unknown executor '{executor}' (known: local, ray)")
    except KeyboardInterrupt:
        record["interrupted"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        save()
        raise
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    save()
    record["record_path"] = str(record_path)
    return record


def parse_list(text: str | None, cast=str) -> list:
    if text is None:
        return []
    return [cast(x.strip()) for x in str(text).split(",") if x.strip()]


def _worker_main(argv) -> int:
    payload = json.loads(argv[1])
    res = execute_spec(payload)
    print(json.dumps(res), flush=True)
    return 0 if res["state"] == "complete" else 1


if __name__ == "__main__":  # child process of the local pool
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[1:]))
    print("usage: python -m avcl_bench.sweep --worker SPEC_JSON (internal; use 'avcl-bench sweep')", file=sys.stderr)
    sys.exit(2)
