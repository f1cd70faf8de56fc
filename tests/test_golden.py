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
import sys
from pathlib import Path

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


@pytest.mark.slow
@pytest.mark.parametrize("strategy", strategy_names())
def test_accuracy_matrices_unchanged(strategy, tmp_path):
    expected = json.loads(GOLDEN.read_text())[strategy]
    assert accuracy_matrices(strategy, tmp_path) == expected


if __name__ == "__main__":  # re-record: python tests/test_golden.py [strategy ...]
    import tempfile

    import torch

    torch.set_num_threads(1)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in sys.argv[1:] or strategy_names():
            golden[name] = accuracy_matrices(name, Path(tmp))
            print(name, "recorded", flush=True)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
