"""One run: config -> data -> stream -> strategy -> accuracy matrices -> run directory.

The run directory is written as the run goes (partial accuracy matrices after every experience,
so nothing is lost on interruption) and marked ``COMPLETE`` only at the very end.
"""

from __future__ import annotations

import errno
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from . import cpu_isa, metrics, safe_yaml
from .config import resolve
from .data.manifest import load_manifest
from .errors import NO_SPACE, ConfigError, UserError
from .paths import BUNDLED_DIR, PROJECT_ROOT, in_workdir
from .rundir import (
    COMPLETE,
    LOCK,
    RunDir,
    acquire_run_lock,
    config_hash,
    held_by_this_process,
    lock_in_use_message,
    make_run_id,
    numpy_state_from_plain,
    numpy_state_to_plain,
)


def build_config(
    strategy: str, benchmark: str | None, overrides: dict, provenance: dict | None = None
) -> tuple[dict, object]:
    """Resolve the layered config of a run; returns (cfg, manifest).

    ``strategy`` is a built-in name or a spec of a method outside the package; the config records
    its canonical form (``strategy.name``), by which ``--resume`` finds the class again. With
    ``provenance`` (a dict) it is filled with the layer every value came from
    (:func:`avcl_bench.config.resolve`)."""
    from .strategies import canonical_spec

    bench = benchmark or overrides.get("benchmark") or "synth-av"
    manifest = load_manifest(bench)
    layer = manifest.config_layer(overrides.get("protocol"))
    cfg = resolve(
        canonical_spec(strategy),
        bench,
        layer,
        overrides,
        benchmark_name=manifest.name,
        manifest_overrides=manifest.doc.get("config"),
        default_profile="quick" if manifest.doc.get("generated") else "paper",  # embedded: CPU-sized
        protocol_settings=manifest.protocol_settings(),
        provenance=provenance,
    )
    if cfg["input"] is None:  # a higher layer set it to null: the benchmark's first form
        cfg["input"] = manifest.inputs[0]
        if provenance is not None:
            provenance["input"] = f"benchmark manifest '{manifest.name}' inputs"
    if cfg["input"] not in manifest.inputs:
        raise ConfigError(
            f"benchmark '{manifest.name}' does not support input '{cfg['input']}' "
            f"(supports: {', '.join(manifest.inputs)})"
        )
    return cfg, manifest


def quiet_third_party_warnings() -> None:
    """Avalanche's import pulls in qpsolvers, which warns about missing optional solvers."""
    warnings.filterwarnings("ignore", message="no QP solver found")
    # Our evaluation writes the accuracy matrix itself; Avalanche's evaluator runs without loggers.
    warnings.filterwarnings("ignore", message="No loggers specified")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def environment_info(device) -> dict:
    pkgs = {}
    # the suite's own version first: a wheel install has no commit to record
    for name in ("avcl-bench", "torch", "torchvision", "torchaudio", "avalanche-lib", "numpy", "av", "h5py", "pandas"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    try:
        if BUNDLED_DIR.is_dir():  # an installed wheel: no checkout of the suite to ask (git would answer
            raise OSError("installed package")  # for whatever repository site-packages sits in)
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    info = {
        "packages": pkgs,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
    }
    import torch

    info["torch_threads"] = torch.get_num_threads()
    info.update(cpu_isa.recorded())  # the kernels' instruction set and any pin (AVCL_BENCH_CPU_ISA)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _peak_memory(device) -> dict:
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) received: the run stops; its last checkpoint allows ``--resume``."""


def _on_signal(signum, frame):
    raise RunInterrupted(f"signal {signum}")


def _refuse_unconfirmed_code(rd: RunDir, saved_name, confirmed: str | None) -> None:
    """A run folder is data: resuming one whose config.yaml names a method outside the suite (a
    file, a module, an entry point) would import and run that code, so the user must name the same
    method with ``--strategy``; a ``--strategy`` that is another method is refused too."""
    from .strategies import canonical_spec, is_builtin

    if not isinstance(saved_name, str):
        raise TypeError(f"strategy.name is {type(saved_name).__name__}, not a name")
    if confirmed is not None and canonical_spec(confirmed) != canonical_spec(saved_name):
        raise ConfigError(f"cannot resume {rd.path}: it is a run of '{saved_name}', not of --strategy '{confirmed}'")
    if not is_builtin(saved_name) and confirmed is None:
        raise ConfigError(
            f"cannot resume {rd.path}: its config.yaml names code outside avcl-bench (strategy.name "
            f"'{saved_name}'), which resuming would import and run; if you trust it, pass "
            f"--strategy '{saved_name}' with --resume"
        )


def run(
    strategy_name: str | None,
    benchmark: str | None = None,
    overrides: dict | None = None,
    quiet: bool = False,
    resume: str | None = None,
    after_task: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> RunDir:
    """Execute one run end to end and return its (complete) run directory.

    With ``resume`` (a run directory), the run's saved config is used and training continues
    after the last experience checkpointed there. ``after_task(tasks_done)`` is called after every
    experience once its results (and, before the last, its checkpoint) are on disk; raising
    :class:`RunInterrupted` there stops the run as a signal would (tests interrupt runs this way).

    A run id that names an existing run folder is refused unless ``overwrite`` (which replaces its
    contents); the folder is locked while the run executes (a second ``run`` or ``--resume`` of it
    exits 2, a sweep that holds the lock itself runs it).
    """
    overrides = dict(overrides or {})
    if resume:
        rd = RunDir(Path(resume))
        if not (rd.path / "config.yaml").is_file():
            raise ConfigError(f"cannot resume: {rd.path} holds no config.yaml")
        if rd.complete:
            raise ConfigError(f"cannot resume: {rd.path} is already complete")
        import yaml

        try:
            saved = safe_yaml.safe_load((rd.path / "config.yaml").read_text())
            confirmed, strategy_name = strategy_name, saved["strategy"]["name"]
            _refuse_unconfirmed_code(rd, strategy_name, confirmed)
            cfg, manifest = build_config(strategy_name, saved["benchmark"], _config_overrides(saved))
        except (ConfigError, KeyError, TypeError, AttributeError, yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
            if isinstance(exc, ConfigError):
                why = exc
            elif isinstance(exc, yaml.YAMLError):
                why = f"malformed ({safe_yaml.problem(exc)})"
            else:
                why = f"malformed ({type(exc).__name__}: {exc})"
            raise ConfigError(
                f"cannot resume {rd.path}: its config.yaml does not match this version of avcl-bench: {why}"
            ) from None
        for key in ("device", "progress"):  # may differ on the machine that resumes
            if key in overrides:
                cfg[key] = overrides[key]
    else:
        cfg, manifest = build_config(strategy_name, benchmark, overrides)
    from .strategies import get_strategy

    quiet_third_party_warnings()
    strategy_cls = get_strategy(cfg["strategy"]["name"])
    strategy_cls.check_network(cfg)  # before any data is read
    from .data.streams import check_divisible

    if manifest.doc.get("num_classes"):  # fail before any data is decoded
        check_divisible(manifest.doc["num_classes"], cfg["num_tasks"], manifest.name)

    if not resume:
        results_dir = in_workdir(cfg["results_dir"])  # relative: from where the user works
        cfg["run_id"] = cfg["run_id"] or _default_run_id(cfg)
        _refuse_existing_run_folder(results_dir / cfg["run_id"], overwrite)
        rd = RunDir.create(results_dir, cfg["run_id"])
    lock = _lock_run_folder(rd)
    try:
        return _run_locked(cfg, manifest, strategy_cls, rd, quiet, resume, after_task, overwrite)
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)


def _run_locked(cfg, manifest, strategy_cls, rd: RunDir, quiet, resume, after_task, overwrite) -> RunDir:
    if not resume:
        if overwrite:
            _clear_run_folder(rd.path)
        rd.write_config(cfg)
    rd.write_status("running")
    t_start = time.time()
    if cfg["train"]["retain_freed_memory"]:
        from .allocator import retain_freed_memory

        retain_freed_memory()
    previous = signal.signal(signal.SIGTERM, _on_signal) if _main_thread() else None
    try:
        return _execute(cfg, manifest, strategy_cls, rd, t_start, quiet, resume=bool(resume), after_task=after_task)
    except KeyboardInterrupt:
        _try_status(rd, "interrupted", after_s=time.time() - t_start, resume_with=f"avcl-bench run --resume {rd.path}")
        raise
    except BaseException as exc:
        error = results_write_error(exc, rd.path)
        _try_status(rd, "failed", error=f"{type(error or exc).__name__}: {error or exc}", after_s=time.time() - t_start)
        if error is not None:
            raise error from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _try_status(rd: RunDir, state: str, **info) -> None:
    """Record the final state; when even that cannot be written (a full disk), the status stays
    'running' with no live process holding the folder's lock, which ``report`` lists as failed."""
    try:
        rd.write_status(state, **info)
    except OSError:
        pass


def results_write_error(exc: BaseException, folder: Path) -> UserError | None:
    """A one-line error for a failed write into the results folder (a full disk, a file-size limit,
    a read-only folder), or None for any other failure."""
    if not isinstance(exc, OSError) or exc.errno not in NO_SPACE | {errno.EROFS, errno.EACCES, errno.EIO}:
        return None
    what = Path(exc.filename).name if getattr(exc, "filename", None) else "a result file"
    why = "no space left (or the file-size limit reached)" if exc.errno in NO_SPACE else exc.strerror
    return UserError(f"cannot write {what} in the results folder {folder}: {why}")


def _refuse_existing_run_folder(path: Path, overwrite: bool) -> None:
    """A run id names a new run: an existing folder (complete, failed, interrupted, or another
    config's) is kept unless the user asks to overwrite it."""
    if overwrite or not path.is_dir() or not [p for p in path.iterdir() if p.name != LOCK]:
        return
    if (path / COMPLETE).is_file():
        raise ConfigError(
            f"run folder {path} already holds a complete run: choose another --run-id, or pass "
            "--overwrite to replace it"
        )
    raise ConfigError(
        f"run folder {path} already exists: resume it with 'avcl-bench run --resume {path}', choose "
        "another --run-id, or pass --overwrite to replace it"
    )


def _lock_run_folder(rd: RunDir) -> Path | None:
    """This process's lock on the run folder (None when it already holds it: a sweep worker)."""
    if held_by_this_process(rd.path):
        return None
    lock = acquire_run_lock(rd.path)
    if lock is None:
        raise ConfigError(lock_in_use_message(rd.path))
    return lock


def _clear_run_folder(path: Path) -> None:
    """--overwrite: remove what an earlier run left (its lock, now ours, stays)."""
    import shutil

    for entry in path.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _default_run_id(cfg: dict) -> str:
    """:func:`make_run_id` with the method's catalogue name where the config holds a spec (a file
    spec is an absolute path); the hash stays that of the real config."""
    from .strategies import strategy_catalogue

    h = config_hash(cfg)[:6]
    named = {**cfg, "strategy": {**cfg["strategy"], "name": strategy_catalogue(cfg["strategy"]["name"])["name"]}}
    return make_run_id(named)[: -len(h)] + h


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _config_overrides(saved: dict) -> dict:
    """A saved resolved config as --set overrides (every key is known, so it re-resolves exactly)."""
    over = {k: v for k, v in saved.items() if k != "strategy"}
    over["strategy"] = {k: v for k, v in saved["strategy"].items() if k != "name"}
    return over


CHECKPOINT = "checkpoint.pt"


def save_checkpoint(rd: RunDir, strategy, task: int, R: dict, timing: dict, cfg: dict, data_fp: dict) -> None:
    """State dicts at an experience boundary, written atomically (Avalanche's pickling fails here).

    Plain data only (tensors, numbers, strings, containers), so that :func:`load_checkpoint` reads it
    with ``weights_only=True``; the run's config hash is inside, so a checkpoint is never resumed
    into another config, and the data's fingerprint (``datasets.data_fingerprint``), so never onto
    other data."""
    import torch

    state = {
        "config_hash": config_hash(cfg),
        "data": data_fp,
        "task": task,
        "R": R,
        "timing": timing,
        "strategy": strategy.checkpoint_state(),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    tmp = rd.path / f".{CHECKPOINT}.{os.getpid()}.{os.urandom(4).hex()}.tmp"  # one per process
    try:
        torch.save(state, tmp)
        os.replace(tmp, rd.path / CHECKPOINT)
    except RuntimeError as exc:  # torch's writer reports a failed write (disk full, size limit) so
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "write failed"
        raise UserError(
            f"cannot write {CHECKPOINT} in the results folder {rd.path}: {first[:120]} (disk full or file-size limit?)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(rd: RunDir, cfg: dict, data_fp: dict) -> dict | None:
    """The run's checkpoint, read as plain data (no code runs from it), or None when there is none;
    a foreign or mismatched file, or data other than the checkpoint's, is a one-line ConfigError."""
    from .data.datasets import fingerprint_changes

    import pickle

    import torch

    path = rd.path / CHECKPOINT
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot read checkpoint {path}: not a plain avcl-bench checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or not {"config_hash", "task", "R", "timing", "strategy", "rng"} <= set(ckpt):
        raise ConfigError(f"cannot read checkpoint {path}: not an avcl-bench checkpoint of this version")
    if ckpt["config_hash"] != config_hash(cfg):
        raise ConfigError(
            f"checkpoint {path} belongs to another config (hash {str(ckpt['config_hash'])[:12]}, this run's "
            f"config.yaml {config_hash(cfg)[:12]}): start a new run instead of resuming this one"
        )
    if not isinstance(ckpt.get("data"), dict):
        raise ConfigError(
            f"cannot resume {rd.path}: its {CHECKPOINT} holds no fingerprint of the data it trained on (an "
            "older avcl-bench wrote it), so other data could not be told apart: start a new run"
        )
    if changes := fingerprint_changes(ckpt["data"], data_fp):
        raise ConfigError(
            f"cannot resume {rd.path}: the data changed since its last checkpoint ({'; '.join(changes)}): "
            "restore the data, or start a new run"
        )
    return ckpt


def _restore_rng(rng: dict) -> None:
    import torch

    torch.set_rng_state(rng["torch"])
    np.random.set_state(numpy_state_from_plain(rng["numpy"]))
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _execute(
    cfg,
    manifest,
    strategy_cls,
    rd: RunDir,
    t_start: float,
    quiet: bool,
    resume: bool = False,
    after_task: Callable[[int], None] | None = None,
) -> RunDir:
    from .data.datasets import load_data
    from .data.streams import make_streams

    device = pick_device(cfg["device"])
    seed_everything(cfg["seed"])
    t0 = time.time()
    manifest.materialize(cfg)
    data = load_data(manifest, cfg)
    num_tasks = cfg["num_tasks"]
    scenario = make_streams(data, num_tasks, manifest.name)
    t_data = time.time() - t0
    C = len(data.classes)
    method = describe_method(cfg, manifest)
    _log(
        f"[avcl-bench] {method['method']} ({cfg['strategy']['name']}) on {manifest.name} ({cfg['input']}, "
        f"{cfg['modality']}): "
        f"{C} classes, {num_tasks} tasks, train/val/test {len(data.train)}/{len(data.val)}/{len(data.test)}"
        f", device {device}, run {rd.path.name}",
        quiet,
    )
    tr, mo = cfg["train"], cfg["model"]
    _log(
        f"[avcl-bench] profile {cfg['profile']}: {tr['epochs']} epochs, batch {tr['batch_size']}, lr {tr['lr']:g}, "
        f"D={mo['dim']}, encoder width {mo['encoder_width']} (--profile quick|paper; --set key=value)",
        quiet,
    )
    if data.missing:
        _log(f"[avcl-bench] skipped {data.missing} missing clips (--allow-missing)", quiet)
    per_task = C // num_tasks
    for t in range(num_tasks):  # the class order decides what each task means: say it up front
        names = data.classes[t * per_task : (t + 1) * per_task]
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} classes)" if len(names) > 8 else "")
        _log(f"[avcl-bench] task {t + 1}: {shown}", quiet)

    seed_everything(cfg["seed"])  # the model's init must not depend on data preparation
    strategy = strategy_cls(cfg=cfg, num_classes=C, num_tasks=num_tasks, device=device)
    val_stream = list(getattr(scenario, "val_stream", []) or [])
    strategy.val_experiences = val_stream
    test_stream = list(scenario.test_stream)
    train_stream = list(scenario.train_stream)
    mods = strategy.reported_modalities()
    catalogue = _catalogue_of_run(cfg, mods)
    R = {m: [[None] * num_tasks for _ in range(num_tasks)] for m in mods}
    task_sizes = [len(exp.dataset) for exp in test_stream]
    # earlier_sessions: the sessions whose work the checkpoint holds (counted, not guessed, so the
    # eighth session of a run says 8)
    timing = {"train_s": 0.0, "eval_s": 0.0, "earlier_sessions_s": 0.0, "earlier_sessions": 0}
    start_task = 0
    if resume:
        ckpt = load_checkpoint(rd, cfg, data.fingerprint)
        if ckpt is not None:
            strategy.load_checkpoint_state(ckpt["strategy"], train_stream)
            R, timing, start_task = ckpt["R"], ckpt["timing"], ckpt["task"] + 1
            timing.setdefault("earlier_sessions_s", 0.0)
            timing.setdefault("earlier_sessions", 1)  # a checkpoint of before the count: one session at least
            _restore_rng(ckpt["rng"])
            _log(f"[avcl-bench] resuming {rd.path.name} after task {start_task}/{num_tasks}", quiet)
    if cfg["progress"] and not quiet:
        from .progress import TrainingProgress, planned_steps

        total_steps = planned_steps(strategy, train_stream[start_task:])
        strategy.progress = TrainingProgress(total_steps, num_tasks, device=device)
    try:
        _train_tasks(
            cfg, strategy, rd, t_start, quiet, start_task, train_stream, test_stream, R, timing, after_task, data.fingerprint
        )
    finally:
        if strategy.progress is not None:
            strategy.progress.close()

    export_run_embeddings(strategy, test_stream[0].dataset, rd, data.classes[: C // num_tasks], cfg, quiet)
    out = {"definitions": metrics.DEFINITIONS, "modalities": {}}
    for m in mods:
        full = [[np.nan if v is None else v for v in row] for row in R[m]]
        out["modalities"][m] = metrics.all_metrics(full, task_sizes, classes_per_task=C // num_tasks)
    n_params = sum(p.numel() for p in strategy.model.parameters())
    out["run"] = {
        "strategy": cfg["strategy"]["name"],
        "display_name": catalogue["display_name"],
        # what ran: the display name plus the named variant (empty: the paper's / release's method)
        "method": method["method"],
        "variant": method["variant"],
        "variant_name": method["variant_name"],
        "catalogue": catalogue,
        "benchmark": manifest.name,
        "protocol": cfg["protocol"],
        "modality": cfg["modality"],
        "input": cfg["input"],
        "seed": cfg["seed"],
        "num_tasks": num_tasks,
        "num_classes": C,
        "classes": data.classes,
        "test_clips_per_task": task_sizes,
        "missing_clips": data.missing,
        "parameters": n_params,
        "buffer_size": _buffer_size(strategy),
        # per task: epochs run (fewer than train.epochs when validation stopped it) and kept epoch
        "epochs_trained": strategy.epochs_trained,
        "resumed": bool(resume and start_task > 0),
        "config_hash": config_hash(cfg),
    }
    earlier = timing.pop("earlier_sessions_s")
    sessions = timing.pop("earlier_sessions") + 1
    # total_s: wall time of every session up to its last checkpoint plus this one (work lost to an
    # interruption after a checkpoint is not counted); sessions: those whose work the result holds
    # (> 1 marks a resumed run)
    out["timing"] = {"total_s": earlier + time.time() - t_start, "data_s": t_data, **timing, "sessions": sessions}
    out["memory"] = _peak_memory(device)
    rd.write_json("metrics.json", out)
    rd.write_json("environment.json", environment_info(device))
    rd.write_status("complete", elapsed_s=time.time() - t_start)
    rd.mark_complete()
    ckpt_path = rd.path / CHECKPOINT
    if ckpt_path.exists():
        ckpt_path.unlink()  # the complete result supersedes it
    _log(f"[avcl-bench] {method['method']}: {method['variant_note']}", quiet)
    _log(summary_table(out), quiet)
    _log(f"[avcl-bench] results: {rd.path}", quiet)
    return rd


def _train_tasks(cfg, strategy, rd, t_start, quiet, start_task, train_stream, test_stream, R, timing, after_task, data_fp):
    """Train and evaluate experiences ``start_task``.. in order, writing results and checkpoints."""
    num_tasks = len(train_stream)
    mods = list(R)
    task_sizes = [len(exp.dataset) for exp in test_stream]
    for t in range(start_task, num_tasks):
        t1 = time.time()
        strategy.train(train_stream[t], eval_streams=[])
        timing["train_s"] += time.time() - t1
        t1 = time.time()
        res = strategy.evaluate_experiences(test_stream[: t + 1])
        timing["eval_s"] += time.time() - t1
        for m in mods:
            for j, (correct, total) in enumerate(res[m]):
                R[m][t][j] = 100.0 * correct / max(1, total)
            rd.write_matrix(m, R[m], task_sizes)
        if t + 1 < num_tasks:
            # the wall time up to this boundary, so a resumed run's total counts every session
            save_checkpoint(
                rd,
                strategy,
                t,
                R,
                {
                    **timing,
                    "earlier_sessions_s": timing["earlier_sessions_s"] + time.time() - t_start,
                    "earlier_sessions": timing["earlier_sessions"] + 1,  # this session's work is in it now
                },
                cfg,
                data_fp,
            )
        rd.write_status("running", tasks_done=t + 1, num_tasks=num_tasks, elapsed_s=time.time() - t_start)
        row = "  ".join(f"{m}: " + " ".join(f"{v:5.1f}" for v in R[m][t][: t + 1]) for m in mods)
        when = f"({time.time() - t_start:6.1f}s){_epochs_note(strategy)}"
        _log(f"[avcl-bench] after task {t + 1}/{num_tasks} {when}  {row}", quiet)
        if after_task is not None:
            after_task(t + 1)


def _epochs_note(strategy) -> str:
    """' 7/30 epochs, kept 4' for the task just trained when validation chose the weights."""
    last = strategy.epochs_trained[-1] if strategy.epochs_trained else None
    if last is None or last["kept_epoch"] is None:
        return ""
    return f" {last['epochs']}/{strategy.train_epochs} epochs, kept {last['kept_epoch']}"


def export_run_embeddings(strategy, first_task_test, rd: RunDir, class_names, cfg, quiet: bool) -> None:
    """embeddings.npz of the final model on the first task's test clips (CIGN Fig. 3), for the
    t-SNE in ``avcl-bench report``; a model that exposes no embedding is skipped."""
    from .embeddings import export_embeddings, exposes_embeddings

    if not exposes_embeddings(strategy):
        _log(f"[avcl-bench] no embeddings exported: {type(strategy.model).__name__} exposes none", quiet)
        return
    export_embeddings(
        strategy, first_task_test, rd.path, class_names=class_names, batch_size=cfg["train"]["eval_batch_size"]
    )


def describe_method(cfg: dict, manifest) -> dict:
    """What a run's method is: ``method`` (the display name with the variant's name), ``variant``
    ({strategy key: value} of the declared variant parameters that differ from the method's own,
    :func:`avcl_bench.config.method_variant`), ``variant_name`` and a one-line ``variant_note``."""
    from .config import method_name, method_variant, variant_label
    from .strategies import strategy_catalogue

    variant = method_variant(cfg, manifest.protocol_settings(), manifest.name)
    label = variant_label(cfg, variant)
    display = strategy_catalogue(cfg["strategy"]["name"])["display_name"]
    if variant:
        keys = ", ".join(f"strategy.{k}={v}" for k, v in variant.items())
        note = f"a named variant of {display} ({keys}), not the method as its paper defines it"
    else:
        note = "the method as its strategy document defines it from its paper or release (no variant parameter changed)"
    return {"method": method_name(display, label), "variant": variant, "variant_name": label, "variant_note": note}


def _catalogue_of_run(cfg: dict, reported: list[str]) -> dict:
    """The method's catalogue entry, recorded in metrics.json so that reports never import
    strategy code; its ``modalities`` must be what an audio-visual run really reports."""
    from .strategies import strategy_catalogue

    spec = cfg["strategy"]["name"]
    entry = strategy_catalogue(spec)
    if cfg["modality"] == "audio-visual" and sorted(entry["modalities"]) != sorted(reported):
        raise ConfigError(
            f"strategy {spec}: its document declares modalities {entry['modalities']} but an "
            f"audio-visual run reports {list(reported)}"
        )
    return entry


def _buffer_size(strategy) -> int:
    """Exemplars held at the end: the size of the strategy's exemplar memory part (0 without one)."""
    from .strategies.memory import ExemplarMemory

    return sum(len(part) for part in strategy.parts.values() if isinstance(part, ExemplarMemory))


def summary_table(out: dict) -> str:
    lines = [
        f"{'modality':<14}{'avg acc %':>10}{'forgetting':>12}{'forg. (L2P)':>13}{'mean inc acc':>14}"
        f"{'AV-CIL forg.':>14}"
    ]
    for m, v in out["modalities"].items():
        lines.append(
            f"{m:<14}{v['avg_acc']:>10.2f}{v['forgetting']:>12.2f}{v['forgetting_l2p']:>13.2f}"
            f"{v['mean_inc_acc']:>14.2f}{v['avcil_forgetting']:>14.2f}"
            + (f"  did not learn task {', '.join(map(str, v['unlearned_tasks']))}" if v.get("unlearned_tasks") else "")
        )
    lines.append(
        "forgetting: best accuracy before the last step minus the last (Chaudhry et al. 2018, can be negative); "
        "forg. (L2P): the L2P release's, maximum including the last step (>= 0); definitions in metrics.json"
    )
    return "\n".join(lines)
