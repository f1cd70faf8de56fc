"""Decoding throughput by worker count and executor: clips/s of a cold decode into the cache.

The embedded benchmark's clips (generated first, not timed) are decoded with ``workers`` = 1, 2,
... threads and processes (``preprocess_clips(workers=..., executor=...)``: PyAV decode +
torchaudio log spectrogram + torchvision resize/crop, one torch thread per worker), each time into
a fresh cache folder, the settings taking turns over ``--repeats`` rounds; medians reported (a
process pool's time includes starting its workers). ``--preprocess paper`` uses
the CIGN preprocessing (3 s at 22050 Hz, 224 px frames) instead of the embedded benchmark's.

    python perf/bench_decode.py                       # 1, 2 and all cores
    python perf/bench_decode.py --workers 1,2,4,8,16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="default", help="synth-av size (default: 960 clips)")
    ap.add_argument("--clips", type=int, default=0, help="decode only the first N clips (0 = all)")
    ap.add_argument("--workers", default=",".join(str(w) for w in sorted({1, 2, cores})))
    ap.add_argument("--preprocess", choices=["synth", "paper"], default="synth")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--times",
        type=int,
        default=1,
        help="list every clip this many times (a larger set of rows: "
        "long enough for a process pool's start-up to pay off)",
    )
    ap.add_argument("--executors", default="threads,processes", help="threads and/or processes")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import pandas as pd

    from avcl_bench.data.clips import AudioSpec, VisualSpec, preprocess_clips
    from avcl_bench.data.synth import SYNTH_SIZES, generate_synth_av

    work = Path(tempfile.mkdtemp(prefix="bench-decode-"))
    try:
        t = time.perf_counter()
        root = generate_synth_av(work / "synth", size=args.size, seed=0, progress=False, workers=cores)
        gen_s = time.perf_counter() - t
        ids = pd.read_csv(root / "splits.csv")["id"].astype(str).tolist()
        ids = (ids[: args.clips] if args.clips else ids) * args.times
        if args.preprocess == "synth":
            p = SYNTH_SIZES[args.size]
            audio = AudioSpec(
                sample_rate=p["sample_rate"], duration=p["duration"], n_fft=256, win_length=256, hop_length=256
            )
            visual = VisualSpec(size=p["resolution"])
        else:
            audio, visual = AudioSpec(), VisualSpec()
        # warm-up (imports, codecs, page cache of the clips), not timed
        preprocess_clips(root / "clips", ids[:16], audio, visual, cache_dir=work / "warm", progress=False, workers=1)
        counts = [int(w) for w in args.workers.split(",")]
        plans = [(e, w) for e in args.executors.split(",") for w in counts if not (e == "processes" and w == 1)]
        times: dict[tuple, list[float]] = {plan: [] for plan in plans}
        for r in range(args.repeats):
            for e, w in plans:
                cache = work / f"cache-{e}-{w}-{r}"
                t = time.perf_counter()
                preprocess_clips(
                    root / "clips", ids, audio, visual, cache_dir=cache, progress=False, workers=w, executor=e
                )
                times[(e, w)].append(time.perf_counter() - t)
                shutil.rmtree(cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(times[plans[0]])
    rows = [
        {
            "executor": e,
            "workers": w,
            "seconds": statistics.median(times[(e, w)]),
            "clips_per_s": len(ids) / statistics.median(times[(e, w)]),
            "speedup": base / statistics.median(times[(e, w)]),
        }
        for e, w in plans
    ]
    print(
        f"{len(ids)} clips ({args.size}, preprocess {args.preprocess}: audio {audio.to_dict()}, visual "
        f"{visual.to_dict()}), {cores} cores ({platform.processor() or platform.machine()}), generation "
        f"{gen_s:.1f} s; median of {args.repeats}"
    )
    print(f"| executor | workers | seconds | clips/s | vs {plans[0][0]} x{plans[0][1]} |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['executor']} | {r['workers']} | {r['seconds']:.2f} | {r['clips_per_s']:.1f} | {r['speedup']:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "cores": cores, "clips": len(ids), "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
