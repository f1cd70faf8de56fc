#!/usr/bin/env python
"""Is loading AV-CIL features the bottleneck? Feature-loader throughput vs the AV-CIL model step.

Generates an AV-CIL-format feature set with the *real* dimensions (768-d audio, 8 x 196 x 768
visual tokens per clip, ~4.8 MB per clip in float32) for AVE-CI's 28 classes in the official layout
(``audio_pretrained_feature/...npy`` + ``visual_pretrained_feature/...npy`` or ``.h5``), then, in
one process and on the same batches, measures side by side:

1. the one-time cache build: ``load_data`` -> :func:`avcl_bench.data.features.load_avcil_features`
   (reads the official files once, validates, writes the memory-mapped cache) in clips/s;
2. the training data path: the Avalanche experience dataset the runner trains on (built by
   ``load_data`` + ``make_streams``) through the suite's loader (``data.loading.make_loader``:
   whole batches read by array row; shuffled, ``--batch-size``, ``--workers``), in samples/s per
   epoch; beside it the same dataset through a per-item ``DataLoader`` (``train.batched_loading:
   false``) and the raw ``AVArrayDataset`` per item, to show what each layer costs;
   with ``--format h5`` also the release's way, one ``h5py`` read per item; and, for reference,
   whole batches read straight from the memory map (one copy per batch);
3. the model step: one AV-CIL training step at step >= 1 (current and previous
   :class:`~avcl_bench.models.avcil.AVCILNet` forward, separated CE + task-wise KD + L_I + L_C +
   VAD, backward, Adam) on the same batches, in samples/s;

and reports ``loader / model``: above 1 the loader keeps up with training.

    /work/venv/bin/python perf/bench_features.py --train-per-class 6 --batch-size 32 --json out.json

Everything is written under ``--workdir`` (default: a temporary directory, removed at the end
unless ``--keep``). Disk: about 2 x 4.8 MB per clip (source files + cache).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _sps(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def loader_pass(dataset, batch_size: int, workers: int, epochs: int, batched: bool = False) -> list[float]:
    """Samples/s of each full shuffled pass through ``dataset``: the suite's loader
    (``make_loader``: whole batches by array row) with ``batched``, else a per-item DataLoader."""
    import torch

    from avcl_bench.data.loading import make_loader

    out = []
    for e in range(epochs):
        torch.manual_seed(e)
        loader = make_loader(dataset, batch_size, shuffle=True, num_workers=workers, batched=batched)
        n = 0
        t0 = time.perf_counter()
        for batch in loader:
            n += int(batch[1].shape[0])
        out.append(_sps(n, time.perf_counter() - t0))
    return out


def batched_reads(audio, visual, rows, batch_size: int, epochs: int = 1) -> list[float]:
    """Samples/s of reading whole shuffled batches straight from the memory-mapped cache with one
    sorted fancy-index per array (one copy per batch, no per-item collate): what a batched
    ``__getitems__`` loader could reach on this machine."""
    import numpy as np
    import torch

    rows = np.asarray(rows)
    out = []
    for e in range(epochs):
        order = np.random.default_rng(e).permutation(len(rows))
        t0 = time.perf_counter()
        n = 0
        for s in range(0, len(order), batch_size):
            idx = np.sort(rows[order[s : s + batch_size]])
            _, v = torch.from_numpy(audio[idx]), torch.from_numpy(visual[idx])
            n += int(v.shape[0])
        out.append(_sps(n, time.perf_counter() - t0))
    return out


def h5_item_reads(path: Path, ids: list[str], limit: int) -> float:
    """The release's access pattern for K-S/VS100: one ``h5[vid][()]`` per item (samples/s)."""
    import h5py
    import numpy as np

    ids = list(ids)[:limit]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ids))
    with h5py.File(path, "r") as h5:
        t0 = time.perf_counter()
        for i in order:
            _ = np.asarray(h5[ids[i]][()])
        return _sps(len(ids), time.perf_counter() - t0)


def model_step_rate(cfg: dict, batches, device, classes_per_task: int = 7, steps: int = 3) -> tuple[float, dict]:
    """Samples/s of AV-CIL training steps (step 1: 7 old + 7 new classes) on the given CPU batches."""
    import torch
    import torch.nn.functional as F

    from avcl_bench.models.avcil import AVCILNet
    from avcl_bench.strategies.av_cil import class_contrastive, instance_contrastive, visual_attention_distillation
    from avcl_bench.strategies.losses import separated_ce, taskwise_kd

    torch.manual_seed(0)
    k = classes_per_task
    model = AVCILNet(cfg).to(device)
    model.grow(k)
    old = AVCILNet(cfg).to(device)
    old.grow(k)
    old.load_state_dict(model.state_dict())
    old.eval()
    for p in old.parameters():
        p.requires_grad_(False)
    model.grow(2 * k)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def step(batch):
        (a, v), y = batch[0], batch[1]
        a, v = a.to(device, non_blocking=True), v.to(device, non_blocking=True)
        y = y.to(device) % (2 * k)  # half old (exemplars), half new classes
        out = model.forward_all((a, v))
        with torch.no_grad():
            o = old.forward_all((a, v))
        logits = out["logits"]
        is_old = y < k
        za, zv = F.normalize(out["f_a"], dim=1), F.normalize(out["f_v"], dim=1)
        loss = (
            separated_ce(logits, y, k, 2 * k, is_old)
            + taskwise_kd(logits, o["logits"], k, k)
            + 0.5 * instance_contrastive(za, zv, 0.05)
            + class_contrastive(za, zv, y, 0.05)
            + visual_attention_distillation(
                out["alpha"][is_old], o["alpha"][is_old], out["beta"][is_old], o["beta"][is_old], 0.5
            )
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step(batches[0])  # warm-up
    sync()
    n = 0
    t0 = time.perf_counter()
    for i in range(steps):
        b = batches[(i + 1) % len(batches)]
        step(b)
        n += int(b[1].shape[0])
    sync()
    info = {"steps": steps, "batch_size": int(batches[0][1].shape[0])}
    if device.type == "cuda":
        info["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return _sps(n, time.perf_counter() - t0), info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--train-per-class",
        type=int,
        default=6,
        help="training clips per class (28 classes); val and test get 1 each, so clips = 28 * (n + 2)",
    )
    p.add_argument("--format", choices=["npy", "h5"], default="npy", help="visual file: npy dict (AVE) or HDF5")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (the suite's default: 0)")
    p.add_argument("--epochs", type=int, default=2, help="loader passes to time")
    p.add_argument("--model-steps", type=int, default=3)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="cache dtype")
    p.add_argument("--device", default="auto")
    p.add_argument("--audio-dim", type=int, default=768)
    p.add_argument("--visual-shape", type=int, nargs=3, default=[8, 196, 768])
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", default=None, help="write the figures to this file")
    args = p.parse_args(argv)

    import torch

    from avcl_bench.data.datasets import load_data
    from avcl_bench.data.featsynth import generate_feature_benchmark
    from avcl_bench.data.features import feature_paths
    from avcl_bench.data.streams import make_streams
    from avcl_bench.runner import build_config, pick_device, quiet_third_party_warnings

    quiet_third_party_warnings()
    device = pick_device(args.device)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="avcl-bench-features-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "format": args.format,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "audio_dim": args.audio_dim,
        "visual_shape": args.visual_shape,
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    try:
        t0 = time.perf_counter()
        manifest_path = generate_feature_benchmark(
            work / "data",
            num_classes=28,
            num_tasks=4,
            clips={"train": args.train_per_class, "val": 1, "test": 1},
            audio_dim=args.audio_dim,
            visual_shape=tuple(args.visual_shape),
            visual_format=args.format,
            memory={"total": 340},
            name="bench-features",
        )
        res["generate_s"] = time.perf_counter() - t0
        a_path, v_path = feature_paths(work / "data", args.format)
        res["source_bytes"] = a_path.stat().st_size + v_path.stat().st_size

        overrides = {
            "num_tasks": 1,
            "progress": False,
            "features": {"dtype": args.dtype},
            "train": {"batch_size": args.batch_size, "num_workers": args.workers},
        }
        cfg, manifest = build_config("av-cil", str(manifest_path), overrides)
        manifest.materialize(cfg)
        os.environ["AVCL_BENCH_CACHE"] = str(work / "cache")  # the feature cache goes under the workdir
        t0 = time.perf_counter()
        data = load_data(manifest, cfg)
        t_build = time.perf_counter() - t0
        n_all = len(data.train) + len(data.val) + len(data.test)
        res["clips"] = n_all
        res["cache_build_s"] = t_build
        res["cache_build_clips_per_s"] = _sps(n_all, t_build)
        t0 = time.perf_counter()
        data = load_data(manifest, cfg)
        res["cache_open_s"] = time.perf_counter() - t0

        scenario = make_streams(data, 1, "bench-features")
        exp_ds = scenario.train_stream[0].dataset.train()
        res["train_clips"] = len(exp_ds)
        res["loader_suite_sps"] = loader_pass(exp_ds, args.batch_size, args.workers, args.epochs, batched=True)
        res["loader_avalanche_sps"] = loader_pass(exp_ds, args.batch_size, args.workers, args.epochs)
        res["loader_raw_sps"] = loader_pass(data.train, args.batch_size, args.workers, args.epochs)
        res["batched_read_sps"] = batched_reads(
            data.train.audio, data.train.visual, data.train.index, args.batch_size, args.epochs
        )
        if args.format == "h5":
            res["release_h5_item_sps"] = h5_item_reads(v_path, list(manifest.splits["id"]), 64)

        # model step on batches drawn by the same loader
        from avcl_bench.data.loading import make_loader

        torch.manual_seed(0)
        loader = make_loader(exp_ds, args.batch_size, shuffle=True)
        batches = []
        for b in loader:
            if int(b[1].shape[0]) == args.batch_size:
                batches.append(b)
            if len(batches) == 2:
                break
        res["model_sps"], res["model_info"] = model_step_rate(cfg, batches, device, steps=args.model_steps)
        best_loader = max(res["loader_suite_sps"][1:] or res["loader_suite_sps"])
        res["ratio_loader_over_model"] = best_loader / res["model_sps"]
        res["ratio_first_epoch"] = res["loader_suite_sps"][0] / res["model_sps"]
        res["loadavg_end"] = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    mb = res["source_bytes"] / 2**20
    print(
        f"device {res['device']} ({res['torch_threads']} threads, {res['cpu_count']} cpus, "
        f"load {res['loadavg_start'][0]:.1f}); {res['clips']} clips, {res['format']} source {mb:.0f} MB, "
        f"cache {res['dtype']}, batch {res['batch_size']}, workers {res['workers']}"
    )
    print(
        f"  cache build (load_avcil_features, once) : {res['cache_build_clips_per_s']:10.1f} clips/s "
        f"({res['cache_build_s']:.1f} s); cached open {res['cache_open_s']:.2f} s"
    )
    print(
        "  loader, the suite's (batched row reads)  : "
        + ", ".join(f"{v:.1f}" for v in res["loader_suite_sps"])
        + " samples/s per epoch"
    )
    print(
        "  loader, Avalanche dataset, per item      : "
        + ", ".join(f"{v:.1f}" for v in res["loader_avalanche_sps"])
        + " samples/s per epoch"
    )
    print(
        "  loader, raw AVArrayDataset + DataLoader  : "
        + ", ".join(f"{v:.1f}" for v in res["loader_raw_sps"])
        + " samples/s per epoch"
    )
    print(
        "  batched memmap read (no DataLoader)      : "
        + ", ".join(f"{v:.1f}" for v in res["batched_read_sps"])
        + " samples/s per epoch"
    )
    if "release_h5_item_sps" in res:
        print(f"  release-style h5py read per item         : {res['release_h5_item_sps']:10.1f} samples/s")
    print(f"  AV-CIL model step (fwd+old fwd+bwd+Adam) : {res['model_sps']:10.1f} samples/s")
    print(
        f"  loader / model                           : {res['ratio_loader_over_model']:10.2f} "
        f"(first epoch {res['ratio_first_epoch']:.2f})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
