"""Sweeps: planning from presets, skip-if-complete (resume), failure recording, the local process
pool and the Ray executor (a local Ray instance with 2 CPUs running two tiny real runs)."""

import json
import os
import subprocess

import pytest
import yaml

from avcl_bench import sweep as sw
from avcl_bench.rundir import RunDir, acquire_run_lock, config_hash
from avcl_bench.runner import build_config

#: The cheapest real run: tiny synthetic clips, 2 tasks, 1 epoch, a narrow model.
TINY = {
    "synth": {"size": "tiny"},
    "num_tasks": 2,
    "train": {"epochs": 1, "batch_size": 16},
    "model": {"encoder_width": 8, "dim": 32},
}


def states(results, specs):
    out = {}
    for s in specs:
        p = results / s.run_id / "status.json"
        out[s.run_id] = json.loads(p.read_text()) if p.is_file() else None
    return out


def fake_complete(results, strategy, overrides):
    """A complete run directory for the config `build_config` resolves (no training)."""
    over = {**overrides, "results_dir": str(results), "progress": False}
    cfg, _ = build_config(strategy, "synth-av", over)
    cfg["run_id"] = "done-by-hand"
    rd = RunDir.create(results, "done-by-hand")
    rd.write_config(cfg)
    rd.write_status("complete")
    rd.mark_complete()
    return config_hash(cfg)


def test_presets_plan_grid_collapse_and_protocol(tmp_path):
    logs = []
    pre = sw.PRESETS["cign-table1"]
    specs = sw.plan(
        ["finetune", "joint", "cign"],
        ["synth-av"],
        pre.modalities,
        [0, 1],
        sets={"synth": {"size": "tiny"}},
        protocol=pre.protocol,
        results_dir=tmp_path,
        skip_unavailable=True,
        log=logs.append,
    )
    ft = [s for s in specs if s.strategy == "finetune"]
    assert sorted((s.modality, s.seed) for s in ft) == sorted((m, k) for m in sw.MODALITIES for k in (0, 1))
    assert len({s.run_id for s in specs}) == len(specs) and all(s.status == "pending" for s in ft)
    cign = [s for s in specs if s.strategy == "cign"]
    if sw.strategy_available("cign"):  # one audio-visual run per seed predicts all three modalities
        assert [s.modality for s in cign] == ["audio-visual", "audio-visual"]
        assert cign[0].predicted == sw.MODALITIES
    # the run's config carries the --set values and the chosen protocol
    cfg = yaml.safe_load(yaml.safe_dump(ft[0].overrides))
    assert cfg["synth"]["size"] == "tiny" and cfg["protocol"] == "cign" and cfg["results_dir"] == str(tmp_path)
    # a preset protocol the benchmark lacks falls back to the benchmark's default, with a note
    specs = sw.plan(
        ["finetune"], ["synth-av"], ["audio"], [0], protocol="cign-10", results_dir=tmp_path, log=logs.append
    )
    assert specs[0].status == "pending" and "protocol" not in specs[0].overrides
    assert any("no protocol 'cign-10'" in m for m in logs)
    # ... and applies where the benchmark has it (the 10-task protocol of VGGSound-100)
    specs = sw.plan(["finetune"], ["vggsound-100"], ["audio"], [0], protocol="cign-10", results_dir=tmp_path)
    assert specs[0].overrides["protocol"] == "cign-10" and "cign-10" in specs[0].run_id
    # variants (as the ablation preset's) give distinct configurations and run ids
    specs = sw.plan(
        ["joint"],
        ["synth-av"],
        ["audio"],
        [0],
        results_dir=tmp_path,
        variants={"reinit": {"strategy": {"reinit": True}}, "continue": {"strategy": {"reinit": False}}},
    )
    assert len({s.config_hash for s in specs}) == 2
    for name, pre in sw.PRESETS.items():
        assert pre.benchmarks and pre.strategies, name
    assert sw.PRESETS["cign-table4"].variants["avctd-only"] == {"strategy": {"avctd": True, "avcg": False}}
    assert list(sw.PRESETS["cign-tables"].strategies) == [
        "ewc",
        "lwf",
        "icarl",
        "il2m",
        "bic",
        "podnet",
        "ssil",
        "l2p",
        "dualprompt",
        "cign",
        "joint",
    ]


def test_skip_if_complete_and_failures_recorded_sweep_goes_on(tmp_path, monkeypatch):
    results = tmp_path / "runs"
    h = fake_complete(results, "finetune", {**TINY, "modality": "audio", "seed": 0})
    specs = sw.plan(
        ["finetune", "no-such-method"], ["synth-av"], ["audio", "visual"], [0], sets=TINY, results_dir=results
    )
    by = {(s.strategy, s.modality): s for s in specs}
    assert by[("finetune", "audio")].status == "skipped" and by[("finetune", "audio")].config_hash == h
    assert by[("finetune", "audio")].existing.endswith("done-by-hand")
    assert by[("finetune", "visual")].status == "pending"
    assert by[("no-such-method", "audio")].status == "failed"

    import avcl_bench.runner as runner

    calls = []

    def boom(cfg, *a, **k):
        calls.append(cfg["modality"])
        raise RuntimeError("boom in training")

    monkeypatch.setattr(runner, "_execute", boom)
    record = sw.run_sweep(specs, "t", results, progress=False)
    assert calls == ["visual"]  # the complete run was not redone
    st = states(results, specs)
    assert st[by[("finetune", "visual")].run_id]["state"] == "failed"
    assert "RuntimeError: boom in training" in st[by[("finetune", "visual")].run_id]["error"]
    assert "Traceback" in st[by[("finetune", "visual")].run_id]["traceback"]
    bad = st[by[("no-such-method", "audio")].run_id]
    assert bad["state"] == "failed" and "unknown strategy 'no-such-method'" in bad["error"]
    assert record["counts"] == {"failed": 3, "skipped": 1}
    saved = json.loads((tmp_path / "sweeps" / "t" / "sweep.json").read_text())
    assert saved["runs"][by[("finetune", "visual")].run_id]["status"] == "failed"
    # resuming: failed runs are retried by default, kept with retry_failed=False, complete ones skipped
    again = sw.plan(
        ["finetune"], ["synth-av"], ["audio", "visual"], [0], sets=TINY, results_dir=results, retry_failed=False
    )
    assert sorted(s.status for s in again) == ["skipped", "skipped-failed"]
    again = sw.plan(["finetune"], ["synth-av"], ["audio", "visual"], [0], sets=TINY, results_dir=results)
    assert sorted(s.status for s in again) == ["pending", "skipped"]


def test_concurrent_sweeps_do_not_run_the_same_run_twice(tmp_path):
    """A run directory is claimed with a lock file: a live holder makes another sweep pass it by
    ('busy'), a dead holder's lock is taken over, and a run completed meanwhile is skipped."""

    results = tmp_path / "runs"
    (spec,) = sw.plan(["finetune"], ["synth-av"], ["audio"], [0], sets=TINY, results_dir=results)
    payload = sw._spec_payload(spec)
    lock = acquire_run_lock(results / spec.run_id)  # held by this (live) process
    assert lock is not None and acquire_run_lock(results / spec.run_id) is None
    assert sw.execute_spec(payload)["state"] == "busy"
    assert not (results / spec.run_id / "status.json").exists()  # nothing was run or recorded
    dead_pid = next(p for p in range(2**22 + 12345, 2**22 + 22345) if not _pid_exists(p))
    lock.write_text(f"{__import__('socket').gethostname()} {dead_pid} 0\n")  # a pid that does not run
    lock2 = acquire_run_lock(results / spec.run_id)
    assert lock2 is not None
    lock2.unlink()
    done = RunDir(results / spec.run_id)  # completed meanwhile, as the runner ends a run
    done.write_status("complete")
    done.mark_complete()
    assert sw.execute_spec(payload)["state"] == "skipped"


def test_config_changed_since_planning_runs_under_the_new_hash(tmp_path):
    """The YAMLs may change between planning and running (a long sweep, a tree others edit): the
    run is re-resolved just before it runs, so its run id names the config it saves, and a
    complete run of the new config is not redone."""
    results = tmp_path / "runs"
    (spec,) = sw.plan(["finetune"], ["synth-av"], ["audio"], [0], sets=TINY, results_dir=results)
    true_hash = spec.config_hash
    h = fake_complete(results, "finetune", {**TINY, "modality": "audio", "seed": 0})
    assert h == true_hash
    stale = sw._spec_payload(spec)
    stale["run_id"] = stale["run_id"][: -len(true_hash)] + "0123456789ab"  # as planned before a YAML change
    stale["config_hash"] = "0123456789ab"
    res = sw.execute_spec(stale)
    assert res["state"] == "skipped" and res["existing"].endswith("done-by-hand")
    assert res["ran_as"].endswith(true_hash) and res["run_id"] == stale["run_id"]
    assert not (results / stale["run_id"]).exists()


def test_crashed_child_process_is_recorded(tmp_path, monkeypatch):
    results = tmp_path / "runs"
    (spec,) = sw.plan(["finetune"], ["synth-av"], ["audio"], [0], sets=TINY, results_dir=results)

    def killed(*a, **k):
        return subprocess.CompletedProcess(a[0], -9, stdout="", stderr="")

    monkeypatch.setattr(sw.subprocess, "run", killed)
    record = sw.run_sweep([spec], "crash", results, jobs=2, progress=False)
    assert record["counts"] == {"failed": 1}
    status = json.loads((results / spec.run_id / "status.json").read_text())
    assert status["state"] == "failed" and "exited with code -9" in status["error"]
    assert not (results / spec.run_id / "COMPLETE").exists()


@pytest.mark.slow
def test_local_pool_real_run_and_failure_then_resume_skips(tmp_path):
    """Two child processes at once: a tiny real finetune run and one that fails inside the runner."""
    results = tmp_path / "runs"
    good = sw.plan(["finetune"], ["synth-av"], ["audio-visual"], [0], sets=TINY, results_dir=results)
    bad = sw.plan(["finetune"], ["synth-av"], ["audio-visual"], [0], sets={**TINY, "num_tasks": 3}, results_dir=results)
    record = sw.run_sweep(good + bad, "pool", results, jobs=2, progress=False)
    assert record["counts"] == {"complete": 1, "failed": 1}, record
    assert (results / good[0].run_id / "COMPLETE").is_file()
    status = json.loads((results / bad[0].run_id / "status.json").read_text())
    assert status["state"] == "failed" and "not divisible" in status["error"]
    assert (tmp_path / "sweeps" / "pool" / "logs" / f"{bad[0].run_id}.log").is_file()
    # the config the run saved hashes like the planned one: an interrupted sweep resumes
    again = sw.plan(["finetune"], ["synth-av"], ["audio-visual"], [0], sets=TINY, results_dir=results)
    assert again[0].status == "skipped" and again[0].run_id == good[0].run_id


def test_interrupted_sweep_resumes_the_run_from_its_checkpoint(tmp_path, interrupt_after_task):
    """In process: the run is interrupted after task 1 (the runner's after_task callback), the sweep stops;
    the same sweep again continues that run from its checkpoint instead of starting over."""
    results = tmp_path / "runs"
    specs = sw.plan(["finetune"], ["synth-av"], ["audio"], [0], sets=TINY, results_dir=results)
    interrupt_after_task(1)
    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(specs, "resume", results, progress=False)
    rd = results / specs[0].run_id
    assert json.loads((rd / "status.json").read_text())["state"] == "interrupted"
    assert json.loads((tmp_path / "sweeps" / "resume" / "sweep.json").read_text())["interrupted"]
    interrupt_after_task(None)
    again = sw.plan(["finetune"], ["synth-av"], ["audio"], [0], sets=TINY, results_dir=results)
    assert again[0].status == "pending" and again[0].run_id == specs[0].run_id
    record = sw.run_sweep(again, "resume", results, progress=False)
    assert record["counts"] == {"complete": 1}
    m = json.loads((rd / "metrics.json").read_text())
    assert m["run"]["resumed"] is True and (rd / "COMPLETE").is_file()


@pytest.mark.slow
def test_ray_executor_two_tiny_runs(tmp_path):
    # deliberately NOT skipped when Ray is missing: the Ray path must be tested
    try:
        import ray  # noqa: F401
    except ImportError:  # pragma: no cover
        pytest.fail("Ray is not installed: pip install -e '.[ray]' (the Ray executor test must not be skipped)")
    results = tmp_path / "runs"
    specs = sw.plan(["finetune"], ["synth-av"], ["audio-visual"], [0, 1], sets=TINY, results_dir=results)
    assert [s.status for s in specs] == ["pending", "pending"]
    record = sw.run_sweep(specs, "ray", results, executor="ray", ray_num_cpus=2, cpus_per_run=1, progress=False)
    assert record["counts"] == {"complete": 2}, record
    for s in specs:
        assert (results / s.run_id / "COMPLETE").is_file()
        cfg = yaml.safe_load((results / s.run_id / "config.yaml").read_text())
        assert config_hash(cfg) == s.config_hash
    again = sw.plan(["finetune"], ["synth-av"], ["audio-visual"], [0, 1], sets=TINY, results_dir=results)
    assert [s.status for s in again] == ["skipped", "skipped"]


def test_sweep_cli_dry_run_and_presets(tmp_path, capsys):
    from avcl_bench.cli import main

    assert main(["sweep", "--list-presets"]) == 0
    out = capsys.readouterr().out
    for name in ("cign-table1", "cign-table2", "cign-table3", "cign-table4", "cign-10tasks", "avcil-tables"):
        assert name in out
    code = main(
        [
            "sweep",
            "--preset",
            "cign-table1",
            "--benchmarks",
            "synth-av",
            "--strategies",
            "finetune,joint",
            "--seeds",
            "0,1",
            "--set",
            "synth.size=tiny",
            "--results-dir",
            str(tmp_path),
            "--dry-run",
        ]
    )
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pending")]
    assert len(lines) == 2 * 3 * 2  # strategies x modalities x seeds
    assert main(["sweep", "--preset", "nope", "--dry-run"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_sweep_takes_the_options_run_takes(tmp_path, capsys):
    """run's --strategy/--benchmark/--modality/--seed/--profile work for a sweep (they were
    'unrecognized arguments', and a sweep without --set profile=quick planned the papers' sizes)."""
    from avcl_bench.cli import main

    base = ["sweep", "--strategy", "finetune", "--benchmark", "synth-av", "--modality", "audio", "--seed", "3"]
    base += ["--set", "synth.size=tiny", "--results-dir", str(tmp_path), "--dry-run"]
    for profile, epochs in (("paper", "epochs=100"), ("quick", "epochs=30")):
        assert main(base + ["--profile", profile]) == 0
        (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pending")]
        assert "finetune_synth-av_cign_audio_s3_" in line and epochs in line, line
    with pytest.raises(SystemExit) as exit_:
        main(base + ["--profile", "fast"])
    assert exit_.value.code == 2 and "invalid choice: 'fast'" in capsys.readouterr().err


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
