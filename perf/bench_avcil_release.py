"""The suite against the official AV-CIL release on the same files: accuracy, forgetting, wall and
CPU time and peak memory, the two taking turns (issue #12, points 4 and 6; issue #21, point 4).

    python perf/bench_avcil_release.py --release /path/to/AV-CIL_ICCV2023 \
        --manifest /path/to/AVE/manifest.yaml --methods ours,ft,lwf,icarl,ssil,afc --seeds 42,43,44 \
        --epochs 10 --out perf/results/avcil_release.json

Methods (release folder -> suite strategy): ``ft`` fine_tuning -> finetune, ``lwf`` LwF -> lwf,
``icarl`` iCaRL (NME classifier) -> icarl, ``ssil`` SSIL -> ssil, ``afc`` AFC (NME classifier, the
suite's ``afc`` default) -> afc, ``ours`` (AV-CIL) -> av-cil; all audio-visual.

``--release``: a checkout of weiguoPian/AV-CIL_ICCV2023 whose ``data/AVE`` folder holds the files
(split dictionaries and feature dictionaries, the release's layout), patched to run on a CPU with a
current torch: ``torch.load(..., weights_only=False)`` on its model loads, the LwF ``CE_loss``
rename, the unused ``librosa`` import (``perf/notes/avcil-release.md``). ``--manifest``: the suite's
manifest over the same folder (``avcl-bench import-avcil``). Nothing of the release is copied or
imported here: it runs as its own process, with the command line of its ``run_incremental_*.sh``
for AVE and the epochs, batch and lr given below.

For every seed and method the release runs, then the suite, one process at a time with one torch
thread each (``OMP_NUM_THREADS=1``); per process the wall time, the CPU time (user + system, from
``wait4``) and the peak resident size. Accuracy: the mean over steps of the accuracy on all classes
seen (the release prints each step's; the suite's ``mean_inc_acc``) and AV-CIL's forgetting (the
release's per-step "forgetting", averaged = its "Average Forgetting"; the suite's ``avcil_forgetting``,
the same definition). Every release script prints both in the same format (fractions; iCaRL and
AFC with NME give the nearest-mean accuracy there).
Run it on an otherwise idle machine: the ratio of the two wall times is the figure.

    python perf/bench_avcil_release.py --table perf/results/avcil_release_*.json

prints the side-by-side accuracy table of the runs those files hold (``perf/notes/avcil-side-by-side.md``,
the README), each gap paired by seed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the release's per-method folder, script and arguments (run_incremental_<method>.sh for AVE,
#: audio-visual; epochs, lr, batch from the command line here). iCaRL and AFC: the NME classifier
#: (``run_incremental_icarl.sh AVE audio-visual NME``, ``run_incremental_afc.sh ... NME``; the suite's
#: ``strategy.classifier`` default for both is nme too).
RELEASE = {
    "ours": (
        "ours",
        "train_incremental_ours.py",
        "--memory_size 340 --instance_contrastive --class_contrastive --attn_score_distil "
        "--instance_contrastive_temperature 0.05 --class_contrastive_temperature 0.05 --lam 0.5 "
        "--lam_I 0.5 --lam_C 1.0 --exemplar_batch_size 128",
    ),
    "ft": ("fine_tuning", "train_incremental_fine_tuning.py", "--modality audio-visual"),
    "lwf": ("LwF", "train_incremental_lwf.py", "--modality audio-visual"),
    "icarl": (
        "iCaRL",
        "train_incremental_icarl.py",
        "--modality audio-visual --classifier NME --memory_size 340 --gen_exem_batch_size 256",
    ),
    "ssil": ("SSIL", "train_incremental_ssil.py", "--modality audio-visual --memory_size 340 --exemplar_batch_size 128"),
    "afc": (
        "AFC",
        "train_incremental_afc.py",
        "--modality audio-visual --classify NME --memory_size 340 --lam_disc 0.5 --gen_exem_batch_size 256",
    ),
}
#: the suite's strategy for each release method
SUITE = {"ours": "av-cil", "ft": "finetune", "lwf": "lwf", "icarl": "icarl", "ssil": "ssil", "afc": "afc"}


def run_measured(cmd: list[str], cwd: Path, log: Path) -> dict:
    """Run ``cmd``; wall s, CPU s (user + system) and peak RSS GB of that process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"bench_avcil_release: {' '.join(cmd[:3])} ... exited {proc.returncode}; see {log}")
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
    }


def release_run(root: Path, method: str, seed: int, epochs: int, work: Path) -> dict:
    folder, script, extra = RELEASE[method]
    cwd = root / folder
    shutil.rmtree(cwd / "save" / "AVE", ignore_errors=True)
    cmd = (
        f"{sys.executable} -u {script} --dataset AVE --num_classes 28 --class_num_per_step 7 "
        f"--max_epoches {epochs} --num_workers 0 --lr 1e-3 --lr_decay False --milestones 100 "
        f"--weight_decay 1e-4 --train_batch_size 256 --infer_batch_size 128 --seed {seed} {extra}"
    ).split()
    log = work / f"release_{method}_s{seed}.log"
    cost = run_measured(cmd, cwd, log)
    text = log.read_text()
    steps = [100 * float(x) for x in re.findall(r"Incremental step \d+ Testing res: ([0-9.]+)", text)]
    forgetting = [100 * float(x) for x in re.findall(r"^forgetting: ([-0-9.]+)", text, re.M)]
    if len(steps) != 4 or len(forgetting) != 3:
        sys.exit(
            f"bench_avcil_release: the release ({method}) printed {len(steps)} step accuracies and "
            f"{len(forgetting)} forgettings, not 4 and 3; see {log}"
        )
    # per step (the log up to each step's test): the epoch kept, the last "Saving best model"
    # (0-based, as the release counts; +1 here to count as the suite does), and each epoch's
    # validation accuracy
    parts = re.split(r"Testing res:", text)[:-1]
    kept = [
        int(m[-1]) + 1 if m else None for m in (re.findall(r"Saving best model at Epoch (\d+)", part) for part in parts)
    ]
    val_acc = [[round(100 * float(v), 4) for v in re.findall(r"Epoch:\d+ val_res:([0-9.]+)", part)] for part in parts]
    return {
        **cost,
        "step_acc": [round(a, 2) for a in steps],
        "mean_acc": statistics.fmean(steps),
        "avcil_forgetting": statistics.fmean(forgetting),
        "step_forgetting": [round(f, 2) for f in forgetting],
        "kept_epochs": kept,
        "val_acc": val_acc,
    }


def suite_run(manifest: Path, method: str, seed: int, epochs: int, work: Path, sets: list[str]) -> dict:
    run_id = f"{method}_s{seed}"
    cmd = [sys.executable, "-m", "avcl_bench.cli", "run", "--strategy", SUITE[method], "--benchmark", str(manifest)]
    cmd += ["--results-dir", str(work / "suite"), "--run-id", run_id, "--overwrite"]
    settings = [
        f"seed={seed}",
        f"train.epochs={epochs}",
        "train.batch_size=256",
        "train.eval_batch_size=128",
        "train.lr=1e-3",
        "train.weight_decay=1e-4",
        "train.select_best_on_val=true",
        "device=cpu",
        "progress=false",
        *sets,
    ]
    for s in settings:
        cmd += ["--set", s]
    cost = run_measured(cmd, Path.cwd(), work / f"suite_{method}_s{seed}.log")
    run_dir = work / "suite" / run_id
    document = json.loads((run_dir / "metrics.json").read_text())
    metrics = document["modalities"]["audio-visual"]
    from avcl_bench.metrics import avcil_forgetting_per_step
    from avcl_bench.rundir import read_matrix

    R = read_matrix(run_dir / "accuracy_audio-visual.csv")[0]
    return {
        **cost,
        "step_acc": [round(a, 2) for a in metrics["step_acc"]],
        "mean_acc": metrics["mean_inc_acc"],
        "avcil_forgetting": metrics["avcil_forgetting"],
        "step_forgetting": [round(f, 2) for f in avcil_forgetting_per_step(R)],
        "kept_epochs": [e.get("kept_epoch") for e in document["run"].get("epochs_trained") or []],
        "val_acc": [e.get("val_acc") for e in document["run"].get("epochs_trained") or []],
    }


def mean_std(values: list[float], digits: int = 1, sign: str = "") -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{sign}.{digits}f} ± {sd:.{digits}f}"


def accuracy_table(paths: list[Path]) -> str:
    """The side-by-side accuracy table (Markdown) of one or more ``--out`` files: per method, the
    seeds both sides ran, each side's mean +- sample std and the paired gap (suite - release)."""
    runs = []
    for path in paths:
        runs += json.loads(path.read_text())["runs"]
    # a suite run's --set values (a named variant) make a row of their own beside the same release runs
    by = {(r["method"], r["side"], r["seed"], tuple(r.get("sets", ()))): r for r in runs}
    lines = [
        "| method | seeds | release mean acc | suite mean acc | gap | release forgetting | suite forgetting | gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in [m for m in RELEASE if any(r["method"] == m for r in runs)]:
        variants = sorted({sets for (m, side, _, sets) in by if m == method and side == "suite"}, key=len)
        for sets in variants:
            seeds = sorted(
                {s for (m, side, s, _) in by if m == method and side == "release" and (m, "suite", s, sets) in by}
            )
            if not seeds:
                continue
            cells = []
            for key in ("mean_acc", "avcil_forgetting"):
                rel = [by[(method, "release", s, ())][key] for s in seeds]
                sui = [by[(method, "suite", s, sets)][key] for s in seeds]
                cells += [mean_std(rel), mean_std(sui), mean_std([b - a for a, b in zip(rel, sui)], sign="+")]
            span = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))
            label = SUITE[method] + (f" `{' '.join(sets)}`" if sets else "")
            lines.append(f"| {label} | {span} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--table"]:  # python perf/bench_avcil_release.py --table perf/results/avcil_release_*.json
        print(accuracy_table([Path(p) for p in argv[1:]]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", required=True, type=Path, help="AV-CIL release checkout, files in data/AVE")
    ap.add_argument("--manifest", required=True, type=Path, help="the suite's manifest over the same files")
    ap.add_argument("--methods", default="ours,ft", help="comma-separated: ours (AV-CIL), ft, lwf, icarl, ssil, afc")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--sides", default="release,suite", help="which sides to run (release,suite)")
    ap.add_argument("--set", action="append", default=[], help="extra suite --set key=value")
    ap.add_argument("--out", type=Path, help="write every run's figures here (JSON)")
    args = ap.parse_args(argv)
    for name, path in (("--release", args.release / "ours"), ("--manifest", args.manifest)):
        if not path.exists():
            sys.exit(f"bench_avcil_release: {name}: {path} not found")
    methods = args.methods.split(",")
    if unknown := [m for m in methods if m not in RELEASE]:
        sys.exit(f"bench_avcil_release: unknown method(s) {unknown}; choose from {sorted(RELEASE)}")
    sides = args.sides.split(",")
    work = Path(tempfile.mkdtemp(prefix="avcil_release_"))
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in methods:
            for side in sides:
                if side == "release":
                    r = release_run(args.release, method, seed, args.epochs, work)
                else:
                    r = suite_run(args.manifest.resolve(), method, seed, args.epochs, work, args.set)
                runs.append({"side": side, "method": method, "seed": seed, **r})
                if side == "suite" and args.set:
                    runs[-1]["sets"] = list(args.set)
                print(json.dumps(runs[-1]), flush=True)
                if args.out:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"epochs": args.epochs, "runs": runs}, indent=1))
    print(f"\nlogs: {work}\n")
    print("| method | side | mean acc | AV-CIL forgetting | wall s | CPU s | peak RSS GB |")
    print("|---|---|---|---|---|---|---|")
    for method in methods:
        for side in sides:
            rs = [r for r in runs if r["method"] == method and r["side"] == side]
            print(
                f"| {method} | {side} | {mean_std([r['mean_acc'] for r in rs])} | "
                f"{mean_std([r['avcil_forgetting'] for r in rs])} | {mean_std([r['wall_s'] for r in rs])} | "
                f"{mean_std([r['cpu_s'] for r in rs])} | {max(r['peak_rss_gb'] for r in rs):.2f} |"
            )
        if set(sides) == {"release", "suite"}:
            pairs = [
                (s["wall_s"] / r["wall_s"], s["cpu_s"] / r["cpu_s"])
                for r in runs
                for s in runs
                if r["method"] == s["method"] == method and r["seed"] == s["seed"]
                if (r["side"], s["side"]) == ("release", "suite")
            ]
            print(
                f"| {method} | suite / release | | | {mean_std([p[0] for p in pairs], 3)} x | "
                f"{mean_std([p[1] for p in pairs], 3)} x | |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
