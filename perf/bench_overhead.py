"""Framework overhead: the suite's training loop (Avalanche SupervisedTemplate + our strategy base)
against a plain PyTorch loop on the same model, data and number of steps; also the suite with
``train.batched_loading=false`` (one Avalanche ``__getitem__`` per item, the pre-batching path).

Both loops run in the same process, alternated `--repeats` times, and the ratio of the medians is
reported (the machines are noisy; never compare numbers from different runs).

    python perf/bench_overhead.py [--samples 4000 --batch 64 --epochs 3 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

warnings.filterwarnings("ignore")


def make_data(n: int, classes: int, audio_dim: int, visual_shape, seed=0):
    from avcl_bench.data.datasets import AVArrayDataset, LoadedData

    rng = np.random.RandomState(seed)
    labels = np.arange(n) % classes
    audio = rng.randn(n, audio_dim).astype(np.float32)
    visual = rng.randn(n, *visual_shape).astype(np.float32)
    ds = AVArrayDataset(audio, visual, labels, np.arange(n))
    return LoadedData(
        ds, ds.subset(np.arange(0, n, 7)), ds.subset(np.arange(0, n, 7)), [str(c) for c in range(classes)], None, 0
    )


def config(batch: int, epochs: int, audio_dim: int, visual_shape):
    from avcl_bench.runner import build_config

    cfg, _ = build_config(
        "finetune",
        "synth-av",
        {
            "train": {"epochs": epochs, "batch_size": batch, "lr": 1e-3},
            "model": {"dim": 64, "fusion_depth": 1, "heads": 4},
            "features": {"audio_dim": audio_dim, "visual_shape": list(visual_shape)},
        },
    )
    cfg["input"] = "features"
    return cfg


def suite_loop(cfg, data, classes, batched: bool = True):
    from avcl_bench.data.streams import make_streams
    from avcl_bench.strategies import get_strategy

    torch.manual_seed(0)
    scenario = make_streams(data, 1)
    cfg = {**cfg, "train": {**cfg["train"], "batched_loading": batched}}
    strategy = get_strategy("finetune")(cfg=cfg, num_classes=classes, num_tasks=1, device=torch.device("cpu"))
    exp = scenario.train_stream[0]
    t = time.perf_counter()
    strategy.train(exp, eval_streams=[])
    return time.perf_counter() - t


def plain_loop(cfg, data, classes, batched: bool = False):
    """``batched``: the DataLoader reads whole batches from the arrays (the suite's data path,
    ``RowBatches``) instead of one item at a time, so only the training loops differ."""
    from avcl_bench.data.loading import RowBatches, pass_through
    from avcl_bench.models.avnet import AVNet

    torch.manual_seed(0)
    model = AVNet(cfg)
    model.grow(classes)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["train"]["lr"])
    ds = data.train
    if batched:
        view = RowBatches(ds, ds.index, ds.labels, np.zeros(len(ds), dtype=np.int64))
        loader = DataLoader(view, batch_size=cfg["train"]["batch_size"], shuffle=True, collate_fn=pass_through)
    else:
        loader = DataLoader(ds, batch_size=cfg["train"]["batch_size"], shuffle=True)
    t = time.perf_counter()
    model.train()
    for _ in range(cfg["train"]["epochs"]):
        for (a, v), y, *_ in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model((a, v)), y)
            loss.backward()
            opt.step()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--audio-dim", type=int, default=128)
    ap.add_argument("--visual-shape", default="2,4,64")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    vshape = tuple(int(x) for x in args.visual_shape.split(","))
    data = make_data(args.samples, args.classes, args.audio_dim, vshape)
    cfg = config(args.batch, args.epochs, args.audio_dim, vshape)
    runs = {"plain": [], "plain_batched": [], "suite": [], "suite_per_item": []}
    for _ in range(args.repeats):  # interleaved: every loop sees the same machine load
        runs["plain"].append(plain_loop(cfg, data, args.classes))
        runs["suite"].append(suite_loop(cfg, data, args.classes))
        runs["plain_batched"].append(plain_loop(cfg, data, args.classes, batched=True))
        runs["suite_per_item"].append(suite_loop(cfg, data, args.classes, batched=False))
    med = {k: statistics.median(v) for k, v in runs.items()}
    steps = args.epochs * -(-args.samples // args.batch)
    print(
        f"samples {args.samples}, batch {args.batch}, epochs {args.epochs}, steps {steps}, "
        f"threads {torch.get_num_threads()}"
    )
    names = {
        "plain": "plain loop, per-item DataLoader",
        "plain_batched": "plain loop, batched reads",
        "suite": "avcl-bench (batched reads)",
        "suite_per_item": "avcl-bench, batched_loading=false",
    }
    for k, name in names.items():
        print(
            f"{name:<34}: {med[k]:8.3f} s  ({1000 * med[k] / steps:6.2f} ms/step)  "
            f"runs {[round(x, 3) for x in runs[k]]}"
        )
    print(f"overhead vs a plain loop with a per-item DataLoader : {med['suite'] / med['plain']:.3f}x (goal <= 1.10x)")
    print(f"loop overhead, both reading batches                : {med['suite'] / med['plain_batched']:.3f}x")
    print(f"loop overhead, both per item (Avalanche's dataset)   : {med['suite_per_item'] / med['plain']:.3f}x")


if __name__ == "__main__":
    main()
