"""Golden accuracy matrices: every built-in strategy on the tiny embedded benchmark (audio-visual,
seed 0, one torch thread) must reproduce, digit for digit, the matrices (and the final model's
embeddings, by digest) recorded in
``tests/golden/accuracy_matrices.json``. A refactoring that changes no number keeps this green;
a change that moves numbers on purpose re-records them (``python tests/test_golden.py``) and says
why in its commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

# the recording's kernels: AVX2 on every x86-64 CPU (avcl_bench/cpu_isa.py), pinned before torch
# loads, also when this file is run to re-record
os.environ.setdefault("AVCL_BENCH_CPU_ISA", "avx2")

import numpy as np
import pytest

from avcl_bench.config import strategy_names

GOLDEN = Path(__file__).parent / "golden" / "accuracy_matrices.json"
#: the tiny embedded benchmark's smallest complete run (as conftest.TINY_RUN), seed 0
ARGS = [
    "--modality",
    "audio-visual",
    "--seed",
    "0",
    "--set",
    "synth.size=tiny",
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=16",
    "--quiet",
]


def accuracy_matrices(strategy: str, results_dir: Path) -> dict:
    """{file name: text} of the accuracy CSVs of one complete run."""
    from avcl_bench.cli import main

    code = main(["run", "--strategy", strategy, "--results-dir", str(results_dir), "--run-id", strategy] + ARGS)
    assert code == 0, f"{strategy} exited {code}"
    run = results_dir / strategy
    assert (run / "COMPLETE").is_file()
    out = {p.name: p.read_text() for p in sorted(run.glob("accuracy_*.csv"))}
    # the final model itself, far more sensitive than accuracies over 8 test clips per task: a
    # digest of its embeddings of the first task's test clips, bit for bit
    with np.load(run / "embeddings.npz") as emb:
        digest = hashlib.sha256()
        for key in sorted(k for k in emb.files if k.startswith("emb_")):
            digest.update(key.encode() + np.ascontiguousarray(emb[key]).tobytes())
    out["embeddings_sha256"] = digest.hexdigest()
    return out


#: the key of the recording's platform in the golden file
PLATFORM_KEY = "_recorded_on"


def this_platform() -> dict:
    """The CPU and the kernels a recording ran with."""
    from avcl_bench.cpu_isa import recorded

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "machine": platform.machine(), **recorded()}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", strategy_names())
def test_accuracy_matrices_unchanged(strategy, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    here, there = this_platform(), golden[PLATFORM_KEY]
    if here["cpu_capability"] != there["cpu_capability"]:
        # no other kernels can give these bits: say so instead of failing (or passing) falsely
        pytest.skip(
            f"golden matrices recorded with {there['cpu_capability']} kernels; this CPU's torch runs "
            f"{here['cpu_capability']} ({here['machine']}): not comparable bit for bit"
        )
    got = accuracy_matrices(strategy, tmp_path)
    assert got == golden[strategy], f"recorded on {there['cpu']} ({there['cpu_pins']}); this machine {here['cpu']}"


def test_the_golden_runs_are_pinned_to_avx2_kernels():
    """The pin took effect in this process (set before torch loaded), wherever AVX2 exists."""
    here = this_platform()
    pins = here["cpu_pins"]
    assert (pins["ATEN_CPU_CAPABILITY"], pins["MKL_ENABLE_INSTRUCTIONS"], pins["MKL_CBWR"], pins["DNNL_MAX_CPU_ISA"]) == ("avx2", "AVX2", "AVX2", "AVX2")
    if here["machine"] in ("x86_64", "AMD64"):
        assert here["cpu_capability"] in ("AVX2", "DEFAULT"), here


if __name__ == "__main__":  # re-record: python tests/test_golden.py [strategy ...]
    import tempfile

    import torch

    torch.set_num_threads(1)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in sys.argv[1:] or strategy_names():
            golden[name] = accuracy_matrices(name, Path(tmp))
            print(name, "recorded", flush=True)
    golden[PLATFORM_KEY] = this_platform()
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
