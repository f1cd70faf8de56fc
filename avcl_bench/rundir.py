"""Run directories: every file written atomically, ``COMPLETE`` written last.

Layout of ``results/runs/<run-id>/``::

    config.yaml            resolved configuration (written first)
    status.json            running | failed (with the error) | complete
    accuracy_<modality>.csv  accuracy matrix R[i][j] per predicted modality (rows: after task i)
    metrics.json           every metric with its definition, per modality; timing, memory
    environment.json       package versions, git commit, device
    COMPLETE               marker; a run without it is not a result
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path

import yaml

COMPLETE = "COMPLETE"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and ``os.replace`` (no torn files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_beside(path)
    try:
        # UTF-8, never the locale's (ASCII under LC_ALL=C); surrogateescape writes back the bytes of a
        # file name that such a locale could not decode
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_beside(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A new temporary file beside ``path`` (to ``os.replace`` onto it), as readable as the user's
    umask allows: mkstemp makes 0600, and a results folder shared by a group follows the umask."""
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=suffix)
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, tmp


def complete_conflict(path: Path) -> str | None:
    """Why a folder that holds ``COMPLETE`` is still not a result (None: it is one): the run writes
    status.json 'complete' just before the marker, so any other state means the folder was
    changed afterwards or by something else, and its files cannot be trusted."""
    try:
        status = json.loads((Path(path) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "it holds COMPLETE, but its status.json is missing or unreadable"
    state = status.get("state") if isinstance(status, dict) else None
    if state != "complete":
        return f"it holds COMPLETE, but its status.json says {state!r}"
    return None


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def config_hash(cfg: dict) -> str:
    """Hash of the resolved config minus fields that do not change results."""
    keep = {k: v for k, v in cfg.items() if k not in ("run_id", "results_dir", "progress", "device")}
    text = json.dumps(keep, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def make_run_id(cfg: dict) -> str:
    """``<time>_<strategy>_<benchmark>_<modality>_s<seed>_<hash>``, a plain name: a benchmark given as a
    YAML path contributes its file stem (a path here once put the run folder outside --results-dir)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parts = [cfg["strategy"]["name"], Path(str(cfg["benchmark"])).stem, cfg["modality"]]
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)) for p in parts]
    return f"{stamp}_{'_'.join(parts)}_s{cfg['seed']}_{config_hash(cfg)[:6]}"


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, results_dir: Path, run_id: str) -> "RunDir":
        from .errors import ConfigError
        from .paths import name_problem

        problem = name_problem(run_id)
        if problem:
            raise ConfigError(f"run id {str(run_id)[:80]!r} {problem}")
        path = Path(results_dir) / run_id
        if path.is_symlink():  # --overwrite (or a sweep's fresh attempt) would empty its target
            raise ConfigError(
                f"run folder {path} is a link (to {os.readlink(path)}): a run writes only into a real "
                "folder of the results directory; remove the link or choose another --run-id"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            from .errors import UserError

            raise UserError(f"results directory {results_dir} is not writable: {exc.strerror}") from None
        return cls(path)

    @property
    def complete(self) -> bool:
        return (self.path / COMPLETE).is_file()

    def write_config(self, cfg: dict) -> None:
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))

    def write_status(self, state: str, **info) -> None:
        atomic_write_json(self.path / "status.json", {"state": state, "time": time.time(), **info})

    def write_matrix(self, modality: str, R, task_sizes) -> None:
        lines = ["after_task," + ",".join(f"task_{j}" for j in range(len(R)))]
        for i, row in enumerate(R):
            lines.append(f"{i}," + ",".join("" if v is None else f"{v:.4f}" for v in row))
        lines.append("test_clips," + ",".join(str(int(n)) for n in task_sizes))
        atomic_write_text(self.path / f"accuracy_{modality}.csv", "\n".join(lines) + "\n")

    def write_json(self, name: str, obj) -> None:
        atomic_write_json(self.path / name, obj)

    def mark_complete(self) -> None:
        atomic_write_text(self.path / COMPLETE, time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")


def numpy_state_to_plain(state: tuple) -> dict:
    """A numpy ``RandomState.get_state()`` tuple as plain data (its own form holds an ndarray, which a
    checkpoint read with ``weights_only=True`` refuses)."""
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": [int(k) for k in keys],
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def numpy_state_from_plain(plain: dict) -> tuple:
    """Inverse of :func:`numpy_state_to_plain`, for ``RandomState.set_state``."""
    import numpy as np

    return (plain["name"], np.array(plain["keys"], dtype=np.uint32), plain["pos"], plain["has_gauss"], plain["cached"])


def read_matrix(path: Path):
    """Inverse of :meth:`RunDir.write_matrix`: (R as list of lists with None, task_sizes)."""
    rows, sizes = [], []
    for line in Path(path).read_text().splitlines()[1:]:
        head, *vals = line.split(",")
        if head == "test_clips":
            sizes = [int(v) for v in vals]
        else:
            rows.append([float(v) if v != "" else None for v in vals])
    return rows, sizes


# ----------------------------------------------------------------------------- locks
#: a run folder's lock file: "<host> <pid> <time> <process start>", created with O_EXCL by the
#: process running it (the start time tells a live holder from a later process given the same pid)
LOCK = ".run-lock"
#: a lock file with fewer than two fields this long (seconds) after or before its mtime is torn
TORN_LOCK_AGE_S = 60


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, to the clock tick), from /proc; None
    where /proc does not say (another OS, or no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, starttime, after "pid (comm) "
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def lock_state(lock: Path) -> tuple[bool, str]:
    """(stale, why) of a run folder's lock: stale when it is torn (not "<host> <pid> ..." and
    written over a minute from now, either way: a future mtime included), or its pid on this host
    has ended or now belongs to a process started after the lock was written (a reused pid). A
    lock of another host is respected."""
    try:
        text = lock.read_text(errors="replace").split()
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return False, "unreadable"
    if len(text) < 2 or not text[1].isdigit():
        if abs(age) > TORN_LOCK_AGE_S:
            return True, "torn (no host and pid in it)"
        return False, "being written"
    host, pid = text[0], int(text[1])
    if host != socket.gethostname():
        return False, f"held on host {host}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True, f"pid {pid} has ended"
    except (PermissionError, OverflowError):
        pass  # a live process of another user (or an impossible pid: not ours to judge)
    started = process_start_time(pid)
    if started is not None:
        recorded = None
        if len(text) >= 4:
            try:
                recorded = float(text[3]) or None  # 0: the writer's /proc did not say
            except ValueError:
                recorded = None
        try:
            written = float(text[2]) if len(text) >= 3 else lock.stat().st_mtime
        except (ValueError, OSError):
            written = None
        if recorded is not None and abs(started - recorded) > 1.0:
            return True, f"pid {pid} now belongs to another process"
        if recorded is None and written is not None and started > written + 2.0:
            return True, f"pid {pid} now belongs to a process started after the lock was written"
    return False, f"held by pid {pid} on {host}"


def _lock_is_stale(lock: Path) -> bool:
    return lock_state(lock)[0]


def lock_holder(path: Path) -> tuple[str, int] | None:
    """(host, pid) of the process holding the run folder's lock, or None."""
    try:
        host, pid = (path / LOCK).read_text().split()[:2]
        return host, int(pid)
    except (OSError, ValueError):
        return None


def lock_in_use_message(path: Path) -> str:
    """One line for a run folder whose lock is held: who holds it and how to clear a lock that is
    not really held."""
    holder = lock_holder(path)
    who = f"pid {holder[1]} on {holder[0]}" if holder else "a process that has not written its pid yet"
    return (
        f"run folder {path} is in use by another process ({who}; lock file {path / LOCK}): wait for it, "
        f"or if no such run is alive (e.g. a run on another host that died), delete {path / LOCK}"
    )


def held_by_this_process(path: Path) -> bool:
    return lock_holder(path) == (socket.gethostname(), os.getpid())


def acquire_run_lock(path: Path) -> Path | None:
    """Claim a run directory for this process (O_EXCL lock file); None if another live process has it.
    One lock serves ``run``, ``run --resume`` and a sweep's runs (a sweep worker takes it before it
    calls the runner, which then finds it held by its own process)."""
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not _lock_is_stale(lock):
                return None
            try:
                lock.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            started = process_start_time(os.getpid())
            fh.write(f"{socket.gethostname()} {os.getpid()} {time.time():.0f} {started or 0:.2f}\n")
        return lock
    return None
