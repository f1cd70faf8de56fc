"""Shared fixtures: every test session gets its own data cache (generated clips, decoded arrays)."""

import os

# Every test runs with the CPU kernels pinned to AVX2 (avcl_bench/cpu_isa.py), set before torch
# loads: the golden matrices then hold on any x86-64 CPU with AVX2 or better. Child processes
# (the CLI runs of the safety tests) inherit it.
os.environ["AVCL_BENCH_CPU_ISA"] = "avx2"
from avcl_bench.cpu_isa import apply_pin  # noqa: E402  (imports no torch)

apply_pin()

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny test models run faster on one thread than two (thread start-up dominates)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    if "AVCL_BENCH_TEST_CACHE" in os.environ:  # reuse generated data across local runs
        os.environ["AVCL_BENCH_CACHE"] = os.environ["AVCL_BENCH_TEST_CACHE"]
    else:
        os.environ["AVCL_BENCH_CACHE"] = str(tmp_path_factory.mktemp("avcl-cache"))
    yield


@pytest.fixture(scope="session")
def feature_benchmark(tmp_path_factory):
    """Manifest YAML of a tiny generated AV-CIL-format feature benchmark (8 classes, 4 tasks)."""
    from avcl_bench.data.featsynth import generate_feature_benchmark

    return generate_feature_benchmark(tmp_path_factory.mktemp("featbench"))


@pytest.fixture(scope="session")
def total_memory_benchmark(tmp_path_factory):
    """Generated features with AVE-CI's memory form: 8 classes, 4 tasks, 40/10/20 clips per class,
    a fixed total of 48 exemplars (enough data for forgetting comparisons)."""
    from avcl_bench.data.featsynth import generate_feature_benchmark

    return generate_feature_benchmark(
        tmp_path_factory.mktemp("fb"),
        num_classes=8,
        num_tasks=4,
        clips={"train": 40, "val": 10, "test": 20},
        audio_dim=16,
        visual_shape=(2, 4, 16),
        memory={"total": 48},
        name="fb-total",
    )


@pytest.fixture(scope="session")
def build_strategy(feature_benchmark):
    """``build_strategy(name, overrides=None, benchmark=None, seed=None)`` -> the strategy on the CPU,
    built as the runner builds it from the resolved config (``overrides`` in ``build_config``'s form)
    on the tiny generated feature benchmark unless ``benchmark`` names another; ``seed`` seeds every
    generator right before the model is built, as the runner does."""
    import copy

    import torch

    from avcl_bench.runner import build_config, seed_everything
    from avcl_bench.strategies import get_strategy

    def _build(name, overrides=None, benchmark=None, seed=None):
        cfg, manifest = build_config(name, str(benchmark or feature_benchmark), copy.deepcopy(overrides or {}))
        if seed is not None:
            seed_everything(seed)
        return get_strategy(name)(
            cfg=cfg, num_classes=manifest.doc["num_classes"], num_tasks=cfg["num_tasks"], device=torch.device("cpu")
        )

    return _build


#: CLI arguments of the smallest model on the tiny generated feature benchmark (``feature_benchmark``):
#: D=16, 2 heads, batch 8; tests add their epochs (``["--set", "train.epochs=1", *SMALL_FEATURE_RUN]``).
SMALL_FEATURE_RUN = ["--set", "train.batch_size=8", "--set", "model.dim=16", "--set", "model.heads=2", "--quiet"]

#: CLI arguments of the smallest end-to-end run on the embedded benchmark.
TINY_RUN = ["--set", "synth.size=tiny", "--set", "train.epochs=1", "--set", "train.batch_size=16", "--quiet"]


@pytest.fixture
def run_tiny(tmp_path, feature_benchmark):
    """``run_tiny(strategy, modality='audio-visual', input='clips', extra=[])`` -> metrics dict.

    One complete run through the CLI on the tiny synthetic clips or the tiny generated features;
    asserts exit code 0 and a complete run directory.
    """
    import json

    from avcl_bench.cli import main

    def _run(strategy, modality="audio-visual", input="clips", extra=()):
        run_id = f"{strategy}-{modality}-{input}"
        args = (
            ["run", "--strategy", strategy, "--modality", modality, "--results-dir", str(tmp_path), "--run-id", run_id]
            + TINY_RUN
            + list(extra)
        )
        if input == "features":
            args += ["--benchmark", str(feature_benchmark)]
        code = main(args)
        assert code == 0, f"{strategy} {modality} {input} exited {code}"
        assert (tmp_path / run_id / "COMPLETE").is_file()
        return json.loads((tmp_path / run_id / "metrics.json").read_text())

    return _run


@pytest.fixture
def interrupt_after_task(monkeypatch):
    """``interrupt_after_task(n)``: every run started from now on in this process (through the CLI,
    a sweep or ``runner.run``) stops after its n-th experience as if SIGTERM had arrived there, via
    the runner's ``after_task`` callback; ``interrupt_after_task(None)`` lets runs complete again."""
    import functools

    from avcl_bench import runner

    uninterrupted = runner.run

    def _interrupt(task):
        if task is None:
            monkeypatch.setattr(runner, "run", uninterrupted)
            return

        def stop(tasks_done):
            if tasks_done == task:
                raise runner.RunInterrupted(f"interrupted by the test after task {task}")

        monkeypatch.setattr(runner, "run", functools.partial(uninterrupted, after_task=stop))

    return _interrupt
