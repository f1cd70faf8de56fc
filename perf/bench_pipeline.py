"""Raw-clip pipeline: decoding + spectrogram + frame transforms versus the model's consumption,
and the data-loading share of a training epoch once the on-disk cache exists.

Measured side by side in one run on the embedded benchmark's clips (generated if needed):
1. clips/s of a cold decode (PyAV decode + torchaudio spectrogram + torchvision resize/crop),
2. clips/s the model consumes in training steps (forward + backward + Adam) with the synth-av
   CPU configuration,
3. one epoch over the cached (memory-mapped) arrays: the share of time spent waiting for data.

    python perf/bench_pipeline.py [--size default|tiny] [--clips 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="default")
    ap.add_argument("--clips", type=int, default=200, help="clips decoded cold")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    import pandas as pd

    from avcl_bench.data.clips import AudioSpec, VisualSpec, preprocess_clips
    from avcl_bench.data.datasets import AVArrayDataset
    from avcl_bench.data.loading import as_avalanche, make_loader
    from avcl_bench.data.synth import generate_synth_av
    from avcl_bench.models.avnet import AVNet
    from avcl_bench.runner import build_config

    cfg, _ = build_config("finetune", "synth-av", {"synth": {"size": args.size}})
    cfg["input"] = "clips"
    root = generate_synth_av(None, size=args.size, seed=0, progress=False)
    ids = pd.read_csv(root / "splits.csv")["id"].tolist()[: args.clips]
    aspec, vspec = AudioSpec.from_dict(cfg["clips"]["audio"]), VisualSpec.from_dict(cfg["clips"]["visual"])

    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        arrays = preprocess_clips(root, ids, aspec, vspec, cache_dir=Path(cache), progress=False)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        arrays = preprocess_clips(root, ids, aspec, vspec, cache_dir=Path(cache), progress=False)
        warm_open = time.perf_counter() - t

        labels = torch.arange(len(ids)) % 4
        ds = AVArrayDataset(arrays.audio, arrays.visual, labels.numpy(), range(len(ids)))
        model = AVNet(cfg)
        model.grow(4)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        avl = as_avalanche(ds)  # the dataset form the suite's streams hand to the strategies
        share = {}
        for batched in (True, False):  # the suite's loader, then Avalanche's per-item reads
            loader = make_loader(avl, args.batch, shuffle=True, batched=batched)
            data_wait = compute = 0.0
            t_prev = time.perf_counter()
            for (a, v), y, _task in loader:  # an epoch after the first: arrays come from the cache
                t_loaded = time.perf_counter()
                data_wait += t_loaded - t_prev
                opt.zero_grad()
                F.cross_entropy(model((a, v)), y).backward()
                opt.step()
                t_prev = time.perf_counter()
                compute += t_prev - t_loaded
            share[batched] = (data_wait, compute)
        data_wait, compute = share[True]
    n = len(ids)
    print(
        f"clips {n} ({args.size}), spectrogram {tuple(aspec.shape)}, frames {tuple(vspec.shape)}, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"cold decode + spectrogram + frames : {n / cold:8.1f} clips/s ({cold:.2f} s)")
    print(f"cache reopen (memory-mapped)       : {warm_open:8.3f} s")
    print(f"model consumption (train steps)    : {n / compute:8.1f} clips/s ({compute:.2f} s)")
    print(f"decode / consumption ratio         : {(n / cold) / (n / compute):8.2f}x")
    print(f"data-loading share of a cached epoch: {100 * data_wait / (data_wait + compute):6.1f} % (goal <= 10 %)")
    w, c = share[False]
    print(f"  same, train.batched_loading=false  : {100 * w / (w + c):6.1f} %")


if __name__ == "__main__":
    main()
