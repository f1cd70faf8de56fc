"""Inputs that must not harm: no input file runs code, ids are names and not paths.

Each case goes through the real CLI and asserts the one-line message, exit code 2, no COMPLETE,
and that nothing the crafted input asked for happened.
"""

from __future__ import annotations

import os
import pickle
import signal
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_FEATURE_RUN

from avcl_bench.cli import main

QUICK = ["--set", "train.epochs=1", *SMALL_FEATURE_RUN]


def run_args(benchmark, results, run_id=None, strategy="finetune") -> list[str]:
    """``avcl-bench run`` arguments of one run of ``strategy`` on ``benchmark`` into ``results``."""
    args = ["run", "--strategy", strategy, "--benchmark", str(benchmark), "--results-dir", str(results)]
    return args + (["--run-id", run_id] if run_id is not None else [])


def _failing_run(args, run_dir: Path, file_size_limit: int | None = None, env=None) -> str:
    """``avcl-bench`` ARGS in a real process (its file size capped by RLIMIT_FSIZE when given), which
    must fail cleanly: exit 2, one stderr line (returned), status failed, no COMPLETE."""
    import json
    import resource
    import subprocess
    import sys

    def limit_file_size():
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    proc = subprocess.run(
        [sys.executable, "-m", "avcl_bench.cli", *args],
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=300,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    assert not (run_dir / "COMPLETE").exists()
    return err[0]


class _RunsCode:
    """Pickles to a call of os.system: what a crafted feature file would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _copy_benchmark(feature_benchmark: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bench"
    shutil.copytree(feature_benchmark.parent, dst)
    return dst / feature_benchmark.name


def _run_cli(args, capsys):
    capsys.readouterr()  # what earlier calls printed is not this call's
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_feature_pickle_naming_code_is_refused_unexecuted(feature_benchmark, tmp_path, capsys):
    yaml_path = _copy_benchmark(feature_benchmark, tmp_path)
    audio = yaml_path.parent / "audio_pretrained_feature" / "audio_pretrained_feature_dict.npy"
    d = np.load(audio, allow_pickle=True).item()  # the test's own generated file
    marker = tmp_path / "code-ran"
    d[next(iter(d))] = _RunsCode(marker)
    with open(audio, "wb") as fh:
        np.save(fh, np.array(d, dtype=object), allow_pickle=True)
    results = tmp_path / "runs"
    code, err = _run_cli(
        run_args(yaml_path, results, "r") + QUICK,
        capsys,
    )
    assert code == 2
    assert len(err) == 1 and "refused to load posix.system" in err[0] and str(audio) in err[0], err
    assert not marker.exists()  # the crafted call never ran
    assert not (results / "r" / "COMPLETE").exists()


def test_feature_pickle_naming_a_missing_module_is_one_line(feature_benchmark, tmp_path, capsys):
    yaml_path = _copy_benchmark(feature_benchmark, tmp_path)
    audio = yaml_path.parent / "audio_pretrained_feature" / "audio_pretrained_feature_dict.npy"
    # a pickle that names a module nobody has installed (hand-written protocol-2 opcodes)
    payload = b"\x80\x02cno_such_module\nThing\nq\x00)\x81q\x01."
    header = {"descr": "|O", "fortran_order": False, "shape": ()}
    with open(audio, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(payload)
    code, err = _run_cli(
        run_args(yaml_path, tmp_path / "runs", "r") + QUICK,
        capsys,
    )
    assert code == 2
    assert len(err) == 1 and "refused to load no_such_module.Thing" in err[0], err


def test_release_feature_dictionaries_still_load(feature_benchmark, tmp_path):
    """The release's own format (an np.save'd dict of float arrays) loads through the safe reader."""
    from avcl_bench.data.features import _load_npy_dict

    audio = feature_benchmark.parent / "audio_pretrained_feature" / "audio_pretrained_feature_dict.npy"
    safe = _load_npy_dict(audio)
    plain = np.load(audio, allow_pickle=True).item()
    assert safe.keys() == plain.keys()
    assert all(np.array_equal(safe[k], plain[k]) for k in plain)
    # a pickle written with numpy < 2's module path (numpy.core.multiarray) loads too
    legacy = tmp_path / "legacy.npy"
    data = pickle.dumps(np.array(plain, dtype=object), protocol=2).replace(
        b"numpy._core.multiarray", b"numpy.core.multiarray"
    )
    with open(legacy, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        fh.write(data)
    assert _load_npy_dict(legacy).keys() == plain.keys()


@pytest.mark.parametrize(
    "bad_id, why",
    [
        ("../../etc/passwd", "path separator"),
        ("/etc/passwd", "path separator"),
        ("..", "relative path"),
        ("x" * 300, "at most 200"),
    ],
)
def test_clip_ids_are_names_not_paths(feature_benchmark, tmp_path, capsys, bad_id, why):
    import pandas as pd

    yaml_path = _copy_benchmark(feature_benchmark, tmp_path)
    splits = yaml_path.parent / "splits.csv"
    df = pd.read_csv(splits)
    df.loc[3, "id"] = bad_id
    df.to_csv(splits, index=False)
    code, err = _run_cli(
        run_args(yaml_path, tmp_path / "runs", "r") + QUICK,
        capsys,
    )
    assert code == 2
    assert len(err) == 1 and "row 5" in err[0] and why in err[0] and str(splits) in err[0], err


@pytest.mark.parametrize("run_id", ["../escaped", "/tmp/abs-run", "a/b", "..", "r" * 300])
def test_run_ids_are_names_not_paths(feature_benchmark, tmp_path, capsys, run_id):
    results = tmp_path / "inner" / "runs"
    code, err = _run_cli(
        run_args(feature_benchmark, results, run_id) + QUICK,
        capsys,
    )
    assert code == 2
    assert len(err) == 1 and "run id" in err[0], err
    assert not (tmp_path / "inner" / "escaped").exists() and not Path("/tmp/abs-run").exists()
    assert not results.exists() or not any(results.iterdir())


def test_generated_run_id_of_a_benchmark_path_stays_inside_results_dir(feature_benchmark, tmp_path):
    """A benchmark given as a YAML path once put its '/'s into the generated run id, and so the run
    folder outside --results-dir."""
    results = tmp_path / "runs"
    assert main(run_args(feature_benchmark, results) + QUICK) == 0
    (run,) = results.iterdir()
    assert (run / "COMPLETE").is_file() and f"_{feature_benchmark.stem}_" in run.name


# ----------------------------------------------------------------------------- damaged caches and full disks
def _feature_cache_entry(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "features").iterdir() if (p / "done").is_file()]
    return entry


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _poison(path: Path) -> None:
    """NaN in a middle row of a cached array (its shape and meta.json still agree): training on it
    once failed with "lower train.lr", in every later run too, as the entry was never rebuilt."""
    arr = np.load(path, mmap_mode="r+")
    arr[len(arr) // 2].flat[0] = np.nan
    arr.flush()


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: _truncate(e / "audio.npy"),
        lambda e: (e / "meta.json").write_text('{"ids": ['),
        lambda e: (e / "visual.npy").unlink(),
        lambda e: (e / "meta.json").write_bytes(b"\xff\xfe not utf-8"),
        lambda e: _poison(e / "audio.npy"),
    ],
    ids=["truncated-npy", "torn-meta", "missing-array", "non-utf8-meta", "nan-in-array"],
)
def test_damaged_cache_entry_is_rebuilt(feature_benchmark, tmp_path, monkeypatch, damage):
    cache = tmp_path / "cache"
    monkeypatch.setenv("AVCL_BENCH_CACHE", str(cache))
    args = run_args(feature_benchmark, tmp_path)
    assert main(args + ["--run-id", "first"] + QUICK) == 0
    entry = _feature_cache_entry(cache)
    damage(entry)
    assert main(args + ["--run-id", "second"] + QUICK) == 0  # rebuilt, not a traceback
    assert (tmp_path / "second" / "COMPLETE").is_file()
    assert _feature_cache_entry(cache) == entry  # the same key, healthy again
    for name in ("accuracy_audio-visual.csv",):  # same data, same numbers
        assert (tmp_path / "first" / name).read_text() == (tmp_path / "second" / name).read_text()


def test_damaged_entry_that_cannot_be_removed_names_the_folder(tmp_path, monkeypatch):
    from avcl_bench.data import arrays
    from avcl_bench.errors import DataError

    def refuse(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(arrays.shutil, "rmtree", refuse)
    with pytest.raises(DataError, match=f"cache entry {tmp_path} is damaged .*delete that folder"):
        arrays.discard_damaged_entry(tmp_path, "audio.npy truncated")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 4 MB file system (tmpfs, mounted as root, as CI runs): a disk that fills up."""
    import subprocess

    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


FULL_DISK_CASES = [
    "rlimit-fsize",
    pytest.param(
        "tmpfs", marks=pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("how", FULL_DISK_CASES)
def test_full_cache_disk_fails_in_one_line_without_sigbus(tmp_path, request, how):
    """A cache that does not fit (a 4 MB tmpfs, or RLIMIT_FSIZE: what a full disk looks like to a
    writer): a real process exits 2 with one line naming the cache folder, status failed, no
    temporary folder left, no COMPLETE (the memory-mapped writes once died by SIGBUS here)."""
    from avcl_bench.data.featsynth import generate_feature_benchmark

    bench = generate_feature_benchmark(tmp_path / "src", audio_dim=32, visual_shape=(8, 49, 64), name="big")
    results = tmp_path / "runs"
    limit = 4 << 20  # the visual cache needs 8*49*64*4 B = 100 kB per clip x 128 clips = 12.8 MB
    cache = request.getfixturevalue("small_tmpfs") / "cache" if how == "tmpfs" else tmp_path / "cache"
    env = {**os.environ, "AVCL_BENCH_CACHE": str(cache)}
    line = _failing_run(
        run_args(bench, results, "full") + QUICK, results / "full", limit if how == "rlimit-fsize" else None, env
    )
    assert "no space left" in line and str(cache / "features") in line, line
    assert not [p for p in (cache / "features").iterdir() if p.name.startswith(".")]  # no temp folder left


@pytest.mark.slow
def test_generated_benchmark_with_a_truncated_clip_is_regenerated(tmp_path, monkeypatch):
    from avcl_bench.data.synth import generate_synth_av

    monkeypatch.setenv("AVCL_BENCH_CACHE", str(tmp_path / "cache"))
    out = generate_synth_av(None, size="tiny", seed=0, progress=False)
    clip = sorted((out / "clips").iterdir())[3]
    whole = clip.read_bytes()
    _truncate(clip)
    # a killed generation left its temporary folder (a pid that no longer runs)
    stale = out.parent / f".{out.name}.tmp-999999999-deadbeef"
    stale.mkdir()
    assert generate_synth_av(None, size="tiny", seed=0, progress=False) == out
    assert clip.read_bytes() == whole  # regenerated, bit for bit (the generator is deterministic)
    assert not stale.exists()


def test_run_folder_files_follow_the_umask(feature_benchmark, tmp_path):
    """A results folder shared by a group: files are as readable as the user's umask allows (they
    were 0600, from mkstemp)."""
    previous = os.umask(0o002)
    try:
        assert main(run_args(feature_benchmark, tmp_path, "r") + QUICK) == 0
    finally:
        os.umask(previous)
    for name in ("config.yaml", "status.json", "metrics.json", "accuracy_audio-visual.csv", "embeddings.npz", "COMPLETE"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o664, name


# ----------------------------------------------------------------------------- run folders and checkpoints
def _interrupted_run(feature_benchmark, tmp_path, interrupt_after_task, run_id="cut") -> Path:
    """A run stopped after its 2nd task: a checkpoint and status 'interrupted'."""
    interrupt_after_task(2)
    code = main(run_args(feature_benchmark, tmp_path, run_id, strategy="icarl") + QUICK)
    interrupt_after_task(None)
    assert code == 130 and (tmp_path / run_id / "checkpoint.pt").is_file()
    return tmp_path / run_id


def _resume(run_dir: Path, capsys):
    code, err = _run_cli(["run", "--resume", str(run_dir), "--quiet"], capsys)
    assert not (run_dir / "COMPLETE").exists()
    return code, err


def test_checkpoint_of_another_config_is_refused(feature_benchmark, tmp_path, capsys, interrupt_after_task):
    """config.yaml says seed 7, the checkpoint holds seed 0's tasks: resuming would complete a run
    labelled seed 7 whose first tasks came from seed 0."""
    run_dir = _interrupted_run(feature_benchmark, tmp_path, interrupt_after_task)
    cfg = run_dir / "config.yaml"
    cfg.write_text(cfg.read_text().replace("\nseed: 0\n", "\nseed: 7\n"))
    code, err = _resume(run_dir, capsys)
    assert code == 2 and len(err) == 1 and "belongs to another config" in err[0] and str(run_dir) in err[0], err


def test_resume_refuses_changed_data(tmp_path, capsys, interrupt_after_task):
    """Issue #22: after task 2 two classes' labels swap and a third of the train rows go, or a
    feature file is rewritten: --resume names what changed, exit 2, no COMPLETE, the checkpoint
    kept; with the data restored it completes."""
    import os

    import pandas as pd

    from avcl_bench.data.featsynth import generate_feature_benchmark

    bench = generate_feature_benchmark(tmp_path / "bench")
    run_dir = _interrupted_run(bench, tmp_path, interrupt_after_task)
    ckpt = (run_dir / "checkpoint.pt").read_bytes()
    splits_csv = bench.parent / "splits.csv"
    original = splits_csv.read_bytes()
    df = pd.read_csv(splits_csv)
    swapped = df.assign(label=df["label"].replace({0: 1, 1: 0}))
    train = swapped.index[swapped["split"] == "train"]
    swapped.drop(train[::3]).to_csv(splits_csv, index=False)  # every third train row
    code, err = _resume(run_dir, capsys)
    assert code == 2 and len(err) == 1 and "the data changed since its last checkpoint" in err[0], err
    rows = df["split"].value_counts()
    assert f"train/val/test rows {rows['train']}/{rows['val']}/{rows['test']} -> " in err[0], err
    assert (run_dir / "checkpoint.pt").read_bytes() == ckpt
    splits_csv.write_bytes(original)
    audio = bench.parent / "audio_pretrained_feature" / "audio_pretrained_feature_dict.npy"
    st = audio.stat()
    os.utime(audio, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    code, err = _resume(run_dir, capsys)
    assert code == 2 and len(err) == 1 and "the source files" in err[0] and "the split rows" not in err[0], err
    os.utime(audio, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, err = _run_cli(["run", "--resume", str(run_dir), "--quiet"], capsys)
    assert code == 0 and (run_dir / "COMPLETE").is_file(), err


def test_checkpoint_that_would_run_code_is_refused_unexecuted(
    feature_benchmark, tmp_path, capsys, interrupt_after_task
):
    import torch

    run_dir = _interrupted_run(feature_benchmark, tmp_path, interrupt_after_task)
    marker = tmp_path / "code-ran"
    torch.save({"config_hash": _RunsCode(marker)}, run_dir / "checkpoint.pt")  # a run folder from someone else
    code, err = _resume(run_dir, capsys)
    assert code == 2 and len(err) == 1 and "cannot read checkpoint" in err[0], err
    assert not marker.exists()


@pytest.mark.parametrize("payload", [{"x": 1}, [1, 2, 3]], ids=["wrong-keys", "a-list"])
def test_checkpoint_of_the_wrong_structure_is_one_line(
    feature_benchmark, tmp_path, capsys, interrupt_after_task, payload
):
    import torch

    run_dir = _interrupted_run(feature_benchmark, tmp_path, interrupt_after_task)
    torch.save(payload, run_dir / "checkpoint.pt")
    code, err = _resume(run_dir, capsys)
    assert code == 2 and len(err) == 1 and "not an avcl-bench checkpoint" in err[0], err


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"\xff\xfe\x00seed: 0\n", "cannot resume"),
        # a tag that would build an object: refused unbuilt, one line naming the tag and line (was four)
        (
            b"seed: 0\nstrategy: !!python/object/apply:os.system ['touch code-ran']\n",
            "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system' (line 2)",
        ),
    ],
    ids=["non-utf8", "python-object-tag"],
)
def test_unreadable_config_on_resume_is_one_line(
    feature_benchmark, tmp_path, capsys, interrupt_after_task, monkeypatch, content, needle
):
    run_dir = _interrupted_run(feature_benchmark, tmp_path, interrupt_after_task)
    (run_dir / "config.yaml").write_bytes(content)
    monkeypatch.chdir(tmp_path)
    code, err = _resume(run_dir, capsys)
    assert code == 2 and len(err) == 1 and "cannot resume" in err[0] and needle in err[0], err
    assert not (tmp_path / "code-ran").exists() and (run_dir / "checkpoint.pt").is_file()


def test_existing_run_folder_is_kept_unless_overwrite(feature_benchmark, tmp_path, capsys, interrupt_after_task):
    run_dir = _interrupted_run(feature_benchmark, tmp_path, interrupt_after_task)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    args = run_args(feature_benchmark, tmp_path, "cut") + ["--seed", "7"] + QUICK
    code, err = _run_cli(args, capsys)
    assert code == 2 and len(err) == 1 and "already exists" in err[0] and "--overwrite" in err[0], err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # nothing lost
    code, err = _run_cli(args + ["--overwrite"], capsys)
    assert code == 0 and (run_dir / "COMPLETE").is_file()
    assert not (run_dir / "checkpoint.pt").exists()  # the old run's checkpoint went with it
    code, err = _run_cli(args, capsys)  # a complete run is refused too
    assert code == 2 and "already holds a complete run" in err[0], err


@pytest.mark.slow
def test_two_runs_of_one_run_id_at_once(feature_benchmark, tmp_path, capsys):
    """A real second process: while one `run` holds the folder, another exits 2 naming the holder;
    the first completes untouched."""
    import subprocess
    import sys
    import time

    from avcl_bench.rundir import LOCK

    run_dir = tmp_path / "shared"
    args = run_args(feature_benchmark, tmp_path, "shared") + [
        "--set",
        "train.epochs=2",
        "--set",
        "train.batch_size=8",
        "--quiet",
    ]
    first = subprocess.Popen([sys.executable, "-m", "avcl_bench.cli"] + args, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not ((run_dir / LOCK).exists() and (run_dir / "config.yaml").exists()):
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "slow"
            time.sleep(0.01)
        # paused while it holds the folder: the other two meet a live holder however loaded the
        # machine is, and the first run needs no length of its own
        os.kill(first.pid, signal.SIGSTOP)
        assert not (run_dir / "COMPLETE").exists()
        code, err = _run_cli(["run", "--resume", str(run_dir), "--quiet"], capsys)
        assert code == 2 and len(err) == 1 and "in use by another process" in err[0] and str(first.pid) in err[0], err
        code, err = _run_cli(args + ["--overwrite"], capsys)
        assert code == 2 and "in use by another process" in err[0], err
    finally:
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=600) == 0, first.stderr.read()
    assert (run_dir / "COMPLETE").is_file() and not (run_dir / LOCK).exists()


def test_diverging_training_is_failed_not_complete(feature_benchmark, tmp_path, capsys):
    import json

    code, err = _run_cli(
        run_args(feature_benchmark, tmp_path, "div")
        + [
            "--set",
            "train.lr=1e9",
            "--set",
            "train.epochs=2",
            "--set",
            "train.batch_size=8",
            "--set",
            "model.dim=16",
            "--set",
            "model.heads=2",
            "--quiet",
        ],
        capsys,
    )
    assert code == 2 and len(err) == 1, err
    assert "training diverged at task 1, epoch" in err[0] and "lower train.lr" in err[0], err
    assert json.loads((tmp_path / "div" / "status.json").read_text())["state"] == "failed"
    assert not (tmp_path / "div" / "COMPLETE").exists()


@pytest.mark.slow
def test_full_results_disk_fails_in_one_line(feature_benchmark, tmp_path):
    """RLIMIT_FSIZE below the checkpoint's size: one line naming the results folder, status
    failed, no temporary checkpoint file left, no COMPLETE, exit 2."""
    results = tmp_path / "runs"
    limit = 48 << 10  # config.yaml and status.json fit; the first checkpoint (~150 kB) does not
    args = run_args(feature_benchmark, results, "full") + [
        "--set",
        "train.epochs=1",
        "--set",
        "model.dim=64",
        "--quiet",
    ]
    line = _failing_run(args, results / "full", limit)
    assert "checkpoint.pt" in line and str(results / "full") in line, line
    assert not [p.name for p in (results / "full").iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- reports
def _alias_bomb(levels: int = 9) -> str:
    text = 'lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels):
        text += f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n"
    return text


ALIAS_BOMB = _alias_bomb()


def test_an_alias_bomb_manifest_is_one_line(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB + "name: *l8\n")
    code, err = _run_cli(["check", "--benchmark", str(bomb)], capsys)
    assert code == 2 and len(err) == 1 and "bomb.yaml" in err[0] and "aliases expand it" in err[0], err


def _corrupt_copies(good: Path, results: Path) -> dict[str, str]:
    """Copies of a complete run folder, each broken in one way; {run id: the reason expected}."""
    import shutil

    cases = {
        "metrics-list": (lambda d: (d / "metrics.json").write_text("[1, 2]"), "metrics.json holds a list"),
        "config-non-utf8": (
            lambda d: (d / "config.yaml").write_bytes(b"\xff\xfe seed: 0"),
            "config.yaml is unreadable",
        ),
        "config-list": (lambda d: (d / "config.yaml").write_text("- a\n- b\n"), "config.yaml holds a list"),
        "seed-abc": (
            lambda d: (d / "config.yaml").write_text(
                (d / "config.yaml").read_text().replace("\nseed: 0\n", "\nseed: abc\n")
            ),
            "seed 'abc' is not an integer",
        ),
        "environment-list": (lambda d: (d / "environment.json").write_text("[]"), "environment.json holds a list"),
        # a 1.5 kB "billion laughs": 9**9 strings once expanded
        "config-alias-bomb": (
            lambda d: (d / "config.yaml").write_text((d / "config.yaml").read_text() + ALIAS_BOMB),
            "config.yaml is refused: its aliases expand it",
        ),
        "accuracy-inf": (lambda d: _edit_matrix(d, "inf"), "outside [0, 100]"),
        "accuracy-150": (lambda d: _edit_matrix(d, "150.0000"), "outside [0, 100]"),
        # COMPLETE beside a status its run never writes before it
        "complete-but-failed": (
            lambda d: (d / "status.json").write_text('{"state": "failed", "error": "boom"}'),
            "it holds COMPLETE, but its status.json says 'failed'",
        ),
    }
    for run_id, (damage, _) in cases.items():
        shutil.copytree(good, results / run_id)
        damage(results / run_id)
    return {run_id: why for run_id, (_, why) in cases.items()}


def _edit_matrix(run: Path, value: str) -> None:
    csv = run / "accuracy_audio-visual.csv"
    lines = csv.read_text().splitlines()
    head, *vals = lines[2].split(",")
    lines[2] = ",".join([head, value, *vals[1:]])
    csv.write_text("\n".join(lines) + "\n")


def test_report_skips_malformed_run_folders_and_lists_them(feature_benchmark, tmp_path, capsys):
    import pandas as pd

    results = tmp_path / "runs"
    assert main(run_args(feature_benchmark, results, "good") + QUICK) == 0
    expected = _corrupt_copies(results / "good", results)
    # a run whose status says running but that no process holds (killed before it could say failed)
    (results / "ghost").mkdir()
    (results / "ghost" / "config.yaml").write_text((results / "good" / "config.yaml").read_text())
    (results / "ghost" / "status.json").write_text('{"state": "running"}')
    leaderboard = tmp_path / "lb.csv"
    out_dir = tmp_path / "reports"
    report = ["report", "--results-dir", str(results), "--out", str(out_dir), "--leaderboard", str(leaderboard)]
    code = main(report + ["--no-plots"])
    out = capsys.readouterr().out
    assert code == 0
    board = pd.read_csv(leaderboard)
    assert set(board["run_id"]) == {"good"}  # the one sound run, nothing of the broken copies
    listed = pd.read_csv(tmp_path / "lb_incomplete.csv").set_index("run_id")
    for run_id, why in expected.items():
        assert listed.loc[run_id, "state"] == "malformed" and why in listed.loc[run_id, "error"], run_id
        assert f"skipped {results / run_id}" in out
    assert listed.loc["ghost", "state"] == "failed"


@pytest.mark.slow
def test_two_sweeps_of_one_name_keep_their_own_records(feature_benchmark, tmp_path):
    """Two real sweep processes with the same --name over one results folder, at once: each record
    holds its own runs (one sweep.json once held only the last writer's)."""
    import json
    import subprocess
    import sys

    results = tmp_path / "runs"

    def sweep(strategy):
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "avcl_bench.cli",
                "sweep",
                "--name",
                "same",
                "--strategies",
                strategy,
                "--benchmarks",
                str(feature_benchmark),
                "--modalities",
                "audio-visual",
                "--seeds",
                "0",
                "--results-dir",
                str(results),
                "--set",
                "train.epochs=1",
                "--set",
                "model.dim=16",
                "--set",
                "model.heads=2",
                "--quiet",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    procs = [sweep("finetune"), sweep("lwf")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    records = sorted((tmp_path / "sweeps" / "same").glob("sweep-*.json"))
    assert len(records) == 2
    strategies = sorted(run["strategy"] for r in records for run in json.loads(r.read_text())["runs"].values())
    assert strategies == ["finetune", "lwf"]


def test_a_run_id_that_is_a_link_is_refused_and_its_target_kept(feature_benchmark, tmp_path, capsys):
    """`run --overwrite` on a run id that links elsewhere would empty the link's target."""
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    results = tmp_path / "results"
    results.mkdir()
    (results / "link").symlink_to(target, target_is_directory=True)
    code, err = _run_cli(run_args(feature_benchmark, results, "link") + ["--overwrite", "--quiet"], capsys)
    assert code == 2 and len(err) == 1 and "is a link" in err[0] and "link" in err[0], err
    assert [p.name for p in target.iterdir()] == ["thesis.tex"]
    assert (target / "thesis.tex").read_text() == "years of work"


def test_a_sweep_passes_over_run_folders_it_cannot_read(tmp_path):
    """A complete run folder whose config.yaml is not UTF-8, is an alias bomb or is torn does not
    stop the sweep's index of complete runs; the sound folder is found."""
    from avcl_bench.rundir import COMPLETE, config_hash
    from avcl_bench.sweep import index_complete_runs

    import yaml

    good = {"seed": 0, "strategy": {"name": "finetune"}}
    for name, content in (
        ("good", yaml.safe_dump(good).encode()),
        ("latin1", "seed: 0\nnote: caf\xe9\n".encode("latin-1")),
        ("bomb", ALIAS_BOMB.encode()),
        ("torn", b"seed: [0,\n"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_bytes(content)
        (tmp_path / name / "status.json").write_text('{"state": "complete"}')
        (tmp_path / name / COMPLETE).write_text("")
    # the same sound config, but a status that contradicts its COMPLETE: not a result
    (tmp_path / "contradicted").mkdir()
    (tmp_path / "contradicted" / "config.yaml").write_text(yaml.safe_dump({**good, "seed": 1}))
    (tmp_path / "contradicted" / "status.json").write_text('{"state": "failed"}')
    (tmp_path / "contradicted" / COMPLETE).write_text("")
    assert index_complete_runs([tmp_path]) == {config_hash(good): tmp_path / "good"}


def test_a_sweep_does_not_count_a_complete_run_its_status_contradicts(feature_benchmark, tmp_path, capsys):
    """COMPLETE beside status.json 'failed': the sweep records the run failed in one line naming the
    folder, and leaves every file of it as it was (not the suite's result, not its to clear)."""
    results = tmp_path / "runs"
    sweep = ["sweep", "--strategies", "finetune", "--benchmarks", str(feature_benchmark), "--modalities", "audio-visual"]
    sweep += ["--results-dir", str(results)] + QUICK
    assert main(sweep) == 0
    (run,) = [p for p in results.iterdir() if (p / "COMPLETE").is_file()]
    (run / "status.json").write_text('{"state": "failed", "error": "boom"}')
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code = main(sweep)
    out = capsys.readouterr()
    assert code != 0 and f"run folder {run}: it holds COMPLETE, but its status.json says 'failed'" in out.out + out.err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    "damage, needle",
    [
        # a train clip also listed as a test clip: leakage
        (lambda rows: rows + [rows[1].replace(",train", ",test")], "is in splits test and train"),
        # one train clip listed 20 times
        (lambda rows: rows + [rows[1]] * 19, "is listed 20 times"),
    ],
)
def test_a_splits_csv_that_repeats_clips_is_refused(feature_benchmark, tmp_path, capsys, damage, needle):
    yaml_path = _copy_benchmark(feature_benchmark, tmp_path)
    splits = yaml_path.parent / "splits.csv"
    lines = splits.read_text().splitlines()
    assert lines[0].split(",")[-1] == "split" and lines[1].endswith(",train"), lines[:2]
    splits.write_text("\n".join([lines[0]] + damage(lines[1:])) + "\n")
    for args in (["check", "--benchmark", str(yaml_path)], run_args(yaml_path, tmp_path / "r", "x") + ["--quiet"]):
        code, err = _run_cli(args, capsys)
        assert code == 2 and len(err) == 1 and "splits.csv" in err[0] and needle in err[0], (args[0], err)
    assert not (tmp_path / "r" / "x" / "COMPLETE").exists()


def _lock_file(run_dir: Path, text: str, mtime: float | None = None) -> Path:
    from avcl_bench.rundir import LOCK

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    lock.write_text(text)
    if mtime is not None:
        os.utime(lock, (mtime, mtime))
    return lock


def test_stale_locks_are_recognised(tmp_path):
    """Issue #22: torn locks (a future mtime too), ended pids and reused pids are stale; a live
    holder, one of another host and a lock being written are not."""
    import socket
    import subprocess
    import time

    from avcl_bench.rundir import acquire_run_lock, lock_state, process_start_time

    host, now = socket.gethostname(), time.time()
    assert lock_state(_lock_file(tmp_path / "a", "", mtime=now + 3600)) == (True, "torn (no host and pid in it)")
    assert lock_state(_lock_file(tmp_path / "b", "", mtime=now - 3600))[0]
    assert lock_state(_lock_file(tmp_path / "c", ""))[0] is False  # being written right now
    ended = subprocess.Popen(["true"])
    ended.wait()
    assert lock_state(_lock_file(tmp_path / "d", f"{host} {ended.pid} {now:.0f} 0"))[0]
    live = subprocess.Popen(["sleep", "60"])
    try:
        started = process_start_time(live.pid)
        assert started is not None and abs(started - time.time()) < 60
        held = _lock_file(tmp_path / "e", f"{host} {live.pid} {now:.0f} {started:.2f}")
        assert lock_state(held) == (False, f"held by pid {live.pid} on {host}")
        assert acquire_run_lock(tmp_path / "e") is None and held.read_text().split()[1] == str(live.pid)
        # the same pid, but the lock records another start: the pid was reused
        assert lock_state(_lock_file(tmp_path / "f", f"{host} {live.pid} {now:.0f} {started - 500:.2f}"))[0]
        # an old-format lock (no start time) written an hour before the process started
        assert lock_state(_lock_file(tmp_path / "g", f"{host} {live.pid} {now - 3600:.0f}"))[0]
        assert lock_state(_lock_file(tmp_path / "h", f"other-host {live.pid} {now:.0f}")) == (False, "held on host other-host")
    finally:
        live.kill()
        live.wait()
    lock = acquire_run_lock(tmp_path / "a")  # a stale lock is replaced by this process's
    fields = lock.read_text().split()
    assert fields[:2] == [host, str(os.getpid())] and abs(float(fields[3]) - process_start_time(os.getpid())) < 1


def test_held_lock_message_names_the_lock_file(feature_benchmark, tmp_path, capsys):
    """A lock held on another host: one line naming .run-lock and how to clear it; nothing else in
    the folder is touched, and with the lock deleted as it says the run completes."""
    from avcl_bench.rundir import LOCK

    run_dir = tmp_path / "held"
    lock = _lock_file(run_dir, "other-host 4242 1 0")
    code, err = _run_cli(run_args(feature_benchmark, tmp_path, "held") + QUICK + ["--overwrite"], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"{run_dir / LOCK}" in err[0] and "pid 4242 on other-host" in err[0] and "delete" in err[0], err
    assert lock.read_text() == "other-host 4242 1 0" and sorted(p.name for p in run_dir.iterdir()) == [LOCK]
    lock.unlink()
    code, err = _run_cli(run_args(feature_benchmark, tmp_path, "held") + QUICK + ["--overwrite"], capsys)
    assert code == 0 and (run_dir / "COMPLETE").is_file(), err


def _without_root_file_access():
    """preexec_fn for a child that obeys mode bits even as root: root reads and writes through any
    mode (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so the child drops both from its capability
    bounding set before it executes (a root process then gets neither); None when not root."""
    if os.geteuid() != 0:
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def drop():
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


def test_report_skips_an_unreadable_folder_and_refuses_unwritable_places(feature_benchmark, tmp_path, capsys):
    """Issue #22: a run folder the user may not enter is listed and skipped; a report onto a
    folder it may not write is one line, exit 2, the folder unchanged; in the C locale (no UTF-8
    coercion) a non-ASCII run id is reported."""
    import shutil
    import subprocess
    import sys
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="avcl-report-perm-"))
    try:
        base.chmod(0o777)
        results = base / "results"
        code, err = _run_cli(run_args(feature_benchmark, results, "good") + QUICK + ["--quiet"], capsys)
        assert code == 0, err
        shutil.copytree(results / "good", results / "güt")  # a non-ASCII run id
        shutil.copytree(results / "good", results / "locked")
        for p in [results, *results.rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o666)
        (results / "locked").chmod(0o000)
        env = {**os.environ, "MPLCONFIGDIR": str(base / "mpl"), "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}

        def report(out: Path):
            return subprocess.run(
                [sys.executable, "-m", "avcl_bench.cli", "report", "--results-dir", str(results), "--out", str(out),
                 "--leaderboard", str(out / "leaderboard.csv"), "--no-plots"],
                capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
                preexec_fn=_without_root_file_access(), cwd=base, timeout=300,
            )

        out = base / "out"
        out.mkdir(mode=0o777)
        out.chmod(0o777)
        proc = report(out)
        assert proc.returncode == 0, proc.stderr
        assert f"skipped {results / 'locked'}: unreadable folder (Permission denied)" in proc.stdout, proc.stdout
        board = (out / "leaderboard.csv").read_text(encoding="utf-8")
        # good and güt hold the same config and seed: one row (the latest); the locked copy none
        rows = board.strip().splitlines()[1:]
        assert len(rows) == 1 and ("good" in rows[0] or "güt" in rows[0]) and "locked" not in board, board
        assert "have the same config and seed" in proc.stdout
        closed = base / "closed"
        closed.mkdir()
        (closed / "leaderboard.md").write_text("an earlier report\n")
        closed.chmod(0o555)
        proc = report(closed)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "report: cannot write" in lines[0], proc.stderr
        assert "Permission denied" in lines[0] and "Traceback" not in proc.stderr
        assert sorted(p.name for p in closed.iterdir()) == ["leaderboard.md"]
        assert (closed / "leaderboard.md").read_text() == "an earlier report\n"
    finally:
        for p in [base, *base.rglob("*")] if base.exists() else []:
            try:
                p.chmod(0o777)
            except OSError:
                pass
        shutil.rmtree(base, ignore_errors=True)
