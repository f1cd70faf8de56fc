"""Scaling: time per training step and peak memory of CIGN and AV-CIL as the classes grow, and of
the replay strategies as the exemplar buffer grows.

Every measurement is one real run of the strategy (its own loss, previous model, memory and
end-of-experience work) in a fresh child process, on generated AV-CIL-format features, so that the
child's peak resident memory belongs to that configuration alone. The children of one table run in
turn, repeated ``--repeats`` times in interleaved order (the machine's load hits all of them alike),
and the medians are reported:

- ``step ms``: median wall time of one training iteration (forward, losses, backward, update) in
  the last experience (all old classes present, the previous model and the memory in use);
- ``end-of-exp s``: what the strategy does after the last experience's epochs (exemplar selection,
  bias correction, class means; the previous model is copied when an experience starts);
- ``steps``: iterations of the last experience (grows when exemplars are merged into the data);
- ``peak RSS MB``: the child's peak resident memory (``ru_maxrss``), imports (~0.8 GB, mostly
  Avalanche's), data and model included; ``+train MB``: its growth during training (peak minus
  the peak before the first experience).

    python perf/bench_scaling.py                      # both tables, small CPU sizes
    python perf/bench_scaling.py --part classes --classes 36,100,220
    python perf/bench_scaling.py --part buffer --buffer 5,20,80
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPLAY = ("icarl", "il2m", "bic", "podnet", "ssil", "cign", "av-cil")


def child(spec: dict) -> dict:
    """One run in this process; returns the figures (printed as one JSON line by ``--child``)."""
    warnings.filterwarnings("ignore")
    import torch
    from avalanche.core import SupervisedPlugin

    from avcl_bench.data.datasets import load_data
    from avcl_bench.data.featsynth import generate_feature_benchmark
    from avcl_bench.data.streams import make_streams
    from avcl_bench.runner import _buffer_size, build_config, seed_everything
    from avcl_bench.strategies import get_strategy

    torch.set_num_threads(spec["threads"])
    K, T = spec["classes"], spec["tasks"]
    with tempfile.TemporaryDirectory(prefix="avcl-scaling-") as tmp:
        os.environ["AVCL_BENCH_CACHE"] = str(Path(tmp) / "cache")
        manifest_path = generate_feature_benchmark(
            Path(tmp) / "feat",
            num_classes=K,
            num_tasks=T,
            clips={"train": spec["train_per_class"], "val": 1, "test": 2},
            audio_dim=spec["feat_dim"],
            visual_shape=(2, 4, spec["feat_dim"]),
            seed=0,
        )
        cfg, manifest = build_config(
            spec["strategy"],
            str(manifest_path),
            {
                "input": "features",
                "modality": "audio-visual",
                "progress": False,
                "seed": 0,
                "memory": {"per_class": spec["per_class"], "total": None},
                "train": {"epochs": spec["epochs"], "batch_size": spec["batch"]},
                "model": {"dim": spec["dim"], "heads": 4},
                **spec.get("overrides", {}),
            },
        )
        seed_everything(0)
        manifest.materialize(cfg)
        data = load_data(manifest, cfg)
        scenario = make_streams(data, T)
        strategy = get_strategy(spec["strategy"])(cfg=cfg, num_classes=K, num_tasks=T, device=torch.device("cpu"))

        class StepTimer(SupervisedPlugin):
            def __init__(self):
                super().__init__()
                self.steps, self.t0, self.last_step_end = [], 0.0, 0.0

            def before_training_iteration(self, strategy, **kwargs):
                self.t0 = time.perf_counter()

            def after_training_iteration(self, strategy, **kwargs):
                self.last_step_end = time.perf_counter()
                self.steps.append(self.last_step_end - self.t0)

        timer = StepTimer()
        strategy.plugins.append(timer)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for exp in scenario.train_stream:
            timer.steps = []
            strategy.train(exp, eval_streams=[])
            end = time.perf_counter()
        return {
            "step_ms": 1000 * statistics.median(timer.steps),
            "steps": len(timer.steps),
            "end_of_exp_s": end - timer.last_step_end,
            "buffer": _buffer_size(strategy),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_training_mb": rss_before / 1024,
        }


def run_child(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"child failed ({spec['strategy']}): {proc.stderr.strip().splitlines()[-1:]}")


def measure(specs: list[dict], repeats: int) -> list[dict]:
    results = [[] for _ in specs]
    for _ in range(repeats):
        for i, spec in enumerate(specs):
            results[i].append(run_child(spec))
    out = []
    for spec, runs in zip(specs, results):
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        out.append({**spec, **med, "step_ms_runs": [round(r["step_ms"], 1) for r in runs]})
    return out


def _growth(r: dict) -> float:
    return r["peak_rss_mb"] - r["rss_before_training_mb"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--part", choices=("classes", "buffer", "both"), default="both")
    ap.add_argument("--classes", default="36,100,220", help="class counts of the CIGN / AV-CIL table")
    ap.add_argument("--buffer", default="5,20,80", help="exemplars per class of the replay table")
    ap.add_argument("--strategies", default=",".join(REPLAY), help="replay strategies of the buffer table")
    ap.add_argument("--buffer-classes", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--train-per-class", type=int, default=8, help="classes table: training clips per class")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--feat-dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    base = {
        "tasks": args.tasks,
        "epochs": args.epochs,
        "batch": args.batch,
        "dim": args.dim,
        "feat_dim": args.feat_dim,
        "threads": args.threads,
    }
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s), "
        f"{time.strftime('%Y-%m-%d')}; features: audio {args.feat_dim}-d, visual 2x4x{args.feat_dim}; "
        f"D={args.dim}, batch {args.batch}, {args.tasks} tasks, {args.epochs} epoch(s), median of {args.repeats}"
    )
    figures = {}
    if args.part in ("classes", "both"):
        ks = [int(k) for k in args.classes.split(",")]
        specs = [
            {**base, "strategy": s, "classes": k, "per_class": 2, "train_per_class": args.train_per_class}
            for s in ("finetune", "cign", "av-cil")
            for k in ks
        ]
        rows = measure(specs, args.repeats)
        figures["classes"] = rows
        print("\n| strategy | classes | step ms | step vs first K | steps | end-of-exp s | peak RSS MB | +train MB |")
        print("|---|---|---|---|---|---|---|---|")
        first = {}
        for r in rows:
            first.setdefault(r["strategy"], r["step_ms"])
            print(
                f"| {r['strategy']} | {r['classes']} | {r['step_ms']:.1f} | {r['step_ms'] / first[r['strategy']]:.2f}x"
                f" | {r['steps']:.0f} | {r['end_of_exp_s']:.2f} | {r['peak_rss_mb']:.0f} | {_growth(r):.0f} |"
            )
    if args.part in ("buffer", "both"):
        ms = [int(m) for m in args.buffer.split(",")]
        per_class_train = max(ms) + 8
        specs = [
            {**base, "strategy": s, "classes": args.buffer_classes, "per_class": m, "train_per_class": per_class_train}
            for s in args.strategies.split(",")
            for m in ms
        ]
        rows = measure(specs, args.repeats)
        figures["buffer"] = rows
        print(f"\n{args.buffer_classes} classes, {per_class_train} training clips per class")
        print(
            "| strategy | exemplars/class | buffer | step ms | step vs smallest | steps | end-of-exp s | peak RSS MB "
            "| +train MB |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        first = {}
        for r in rows:
            first.setdefault(r["strategy"], r["step_ms"])
            print(
                f"| {r['strategy']} | {r['per_class']} | {r['buffer']:.0f} | {r['step_ms']:.1f} | "
                f"{r['step_ms'] / first[r['strategy']]:.2f}x | {r['steps']:.0f} | {r['end_of_exp_s']:.2f} | "
                f"{r['peak_rss_mb']:.0f} | {_growth(r):.0f} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
