"""CIGN training-step time against fine-tuning's, and its growth with the number of class tokens.

For each class count K (default 36, 100, 220: VGGSound-Instruments, VGGSound-100, VGG-Sound
Sources), both methods train on the same random batch, one step of each in turn (so both see the
same machine load), and the median step time of each is reported with their ratio:

- CIGN: the last task of 4 (K class tokens, of which 3K/4 old; the frozen previous model has the
  3K/4 old ones), half of the batch old-class samples (buffer exemplars) so every loss term of
  CIGN Eq. 10 runs (BCE heads, token KL, token CE, Eq. 9 with the previous model's forward);
- fine-tuning: the shared baseline network (avcl_bench.models.avnet.AVNet, ``model.fusion_depth``
  blocks over [CLS; audio; visual]) with cross-entropy over the K logits.

A step = forward, loss, backward, Adam update. ``--input features`` (default) feeds tokens of the
AV-CIL feature form (one audio vector, ``--frames`` x ``--patches`` visual vectors), which isolates
the part of CIGN whose cost grows with K; ``--input clips`` adds the ResNet18 encoders on random
spectrograms and frames. Prints a Markdown table (paste into perf/README.md) and optionally JSON.

    python perf/bench_cign.py                       # small CPU sizes
    python perf/bench_cign.py --dim 512 --depth 3 --batch 128 --device cuda   # the paper's sizes
    python perf/bench_cign.py --input clips --precisions fp32,bf16 --device cuda  # fp32 vs bf16 samples/s
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avcl_bench.config import BASE, load_strategy_yaml, strategy_origin  # noqa: E402
from avcl_bench.models.avnet import AVNet  # noqa: E402
from avcl_bench.models.cign import CIGNNet  # noqa: E402
from avcl_bench.params import declared_params  # noqa: E402
from avcl_bench.strategies.losses import cign_loss_terms  # noqa: E402  (torch only: no Avalanche needed)


def make_cfg(args) -> dict:
    cfg = copy.deepcopy(BASE)
    cfg["input"] = args.input
    cfg["modality"] = "audio-visual"
    cfg["features"].update(audio_dim=args.feat_dim, visual_shape=[args.frames, args.patches, args.feat_dim])
    cfg["model"].update(
        dim=args.dim, heads=args.heads, encoder_width=args.encoder_width, fusion_depth=args.fusion_depth
    )
    # CIGN's hyperparameters as strategies/cign.yaml declares them (both switches on), depth from --depth
    declared = declared_params(load_strategy_yaml("cign"), strategy_origin("cign"))
    scfg = dict({k: p.default for k, p in declared.items()}, name="cign", depth=args.depth)
    cfg["strategy"] = dict(scfg, avctd=True, avcg=True)
    return cfg


def make_batch(args, K: int, device):
    g = torch.Generator().manual_seed(0)
    B = args.batch
    if args.input == "features":
        audio = torch.randn(B, args.feat_dim, generator=g)
        visual = torch.randn(B, args.frames, args.patches, args.feat_dim, generator=g)
    else:
        audio = torch.randn(B, 1, args.spec_bins, args.spec_steps, generator=g)
        visual = torch.randint(
            0, 256, (B, args.frames, 3, args.image_size, args.image_size), generator=g, dtype=torch.uint8
        )
    num_old = 3 * K // 4
    # half old-class samples (buffer exemplars), half new-class samples
    y = torch.cat(
        [torch.randint(0, num_old, (B // 2,), generator=g), torch.randint(num_old, K, (B - B // 2,), generator=g)]
    )
    return [audio.to(device), visual.to(device)], y.to(device), num_old


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def cign_at_last_task(args, K: int, device):
    """(cfg, x, y, num_old, CIGN with K tokens, its frozen previous model with 3K/4, Adam)."""
    cfg = make_cfg(args)
    torch.manual_seed(0)
    x, y, num_old = make_batch(args, K, device)
    cign = CIGNNet(cfg).to(device)
    cign.grow(num_old)
    prev = copy.deepcopy(cign).eval()
    for p in prev.parameters():
        p.requires_grad_(False)
    cign.grow(K)
    return cfg, x, y, num_old, cign, prev, torch.optim.Adam(cign.parameters(), lr=1e-4)


def bench_classes(args, K: int, device) -> dict:
    cfg, x, y, num_old, cign, prev, opt_c = cign_at_last_task(args, K, device)

    ft = AVNet(cfg).to(device)
    ft.grow(K)
    opt_f = torch.optim.Adam(ft.parameters(), lr=1e-4)

    def step_cign():
        out = cign(x)
        loss = sum(cign_loss_terms(cign, prev, x, y, out, num_old, K, cfg["strategy"]).values())
        opt_c.zero_grad(set_to_none=True)
        loss.backward()
        opt_c.step()

    def step_ft():
        loss = F.cross_entropy(ft(x)[:, :K], y)
        opt_f.zero_grad(set_to_none=True)
        loss.backward()
        opt_f.step()

    tc, tf = [], []
    for i in range(args.warmup + args.steps):  # one step of each in turn: the same machine load
        a, b = timed(step_cign, device), timed(step_ft, device)
        if i >= args.warmup:
            tc.append(a)
            tf.append(b)
    mc, mf = statistics.median(tc), statistics.median(tf)
    return {
        "classes": K,
        "cign_ms": 1000 * mc,
        "finetune_ms": 1000 * mf,
        "ratio": mc / mf,
        "cign_params": sum(p.numel() for p in cign.parameters()),
        "finetune_params": sum(p.numel() for p in ft.parameters()),
    }


def bench_precision(args, K: int, device) -> dict:
    """CIGN training steps in fp32 and under bf16 autocast (``train.amp``), taking turns on the same
    batch: samples/s of each. On CUDA this is the GPU figure the perf README asks for."""
    from contextlib import nullcontext

    cfg, x, y, num_old, cign, prev, opt = cign_at_last_task(args, K, device)

    def step(precision):
        ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
        with ctx:  # the forward passes and the loss terms, as AVCLStrategy.autocast does
            out = cign(x)
            loss = sum(cign_loss_terms(cign, prev, x, y, out, num_old, K, cfg["strategy"]).values())
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    precisions = args.precisions.split(",")
    times = {pr: [] for pr in precisions}
    for i in range(args.warmup + args.steps):
        for pr in precisions:
            t = timed(lambda pr=pr: step(pr), device)
            if i >= args.warmup:
                times[pr].append(t)
    out = {"classes": K}
    for pr in precisions:
        out[f"{pr}_samples_per_s"] = args.batch / statistics.median(times[pr])
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", default="36,100,220", help="comma-separated class-token counts")
    p.add_argument("--input", choices=["features", "clips"], default="features")
    p.add_argument("--dim", type=int, default=128, help="D (paper: 512)")
    p.add_argument("--depth", type=int, default=3, help="CIGN transformer depth per modality (paper: 3)")
    p.add_argument(
        "--fusion-depth",
        type=int,
        default=BASE["model"]["fusion_depth"],
        help="fine-tuning's fusion transformer depth (suite default 2)",
    )
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=32, help="paper: 128")
    p.add_argument("--feat-dim", type=int, default=128, help="features: input vector size")
    p.add_argument("--frames", type=int, default=1, help="visual frames T (CIGN: 1)")
    p.add_argument("--patches", type=int, default=49, help="features: visual positions P (7x7 = 49)")
    p.add_argument("--encoder-width", type=int, default=16, help="clips: ResNet18 width (64 = torchvision)")
    p.add_argument("--image-size", type=int, default=64, help="clips: frame size (paper: 224)")
    p.add_argument("--spec-bins", type=int, default=129, help="clips: spectrogram bins")
    p.add_argument("--spec-steps", type=int, default=126, help="clips: spectrogram time steps")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument(
        "--precisions",
        default=None,
        help="e.g. fp32,bf16: instead of the fine-tuning comparison, CIGN samples/s per precision",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.precisions:
        rows = [bench_precision(args, int(k), device) for k in args.classes.split(",")]
        precisions = args.precisions.split(",")
        print(
            f"input {args.input}, D={args.dim}, depth {args.depth}, batch {args.batch}, device {device}"
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
            + f"; median of {args.steps} steps after {args.warmup} warm-up, precisions in turn"
        )
        print(
            "| class tokens | "
            + " | ".join(f"{pr} samples/s" for pr in precisions)
            + f" | {precisions[-1]} / {precisions[0]} |"
        )
        print("|---|" + "---|" * (len(precisions) + 1))
        for r in rows:
            vals = [r[f"{pr}_samples_per_s"] for pr in precisions]
            print(f"| {r['classes']} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {vals[-1] / vals[0]:.2f}x |")
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
        return 0
    rows = [bench_classes(args, int(k), device) for k in args.classes.split(",")]

    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    )
    setting = (
        f"input {args.input}, D={args.dim}, CIGN depth {args.depth}, fine-tuning fusion depth "
        f"{args.fusion_depth}, heads {args.heads}, batch {args.batch}, T={args.frames}"
        + (
            f", P={args.patches}, feature size {args.feat_dim}"
            if args.input == "features"
            else f", {args.image_size}px frames, spectrogram {args.spec_bins}x{args.spec_steps}, "
            f"ResNet18 width {args.encoder_width}"
        )
        + f"; median of {args.steps} steps after {args.warmup} warm-up, {where}, torch {torch.__version__}"
    )
    print(setting)
    print(
        "| class tokens | CIGN ms/step | fine-tuning ms/step | CIGN / fine-tuning | "
        f"CIGN vs {rows[0]['classes']} classes |"
    )
    print("|---|---|---|---|---|")
    base = rows[0]["cign_ms"]
    for r in rows:
        print(
            f"| {r['classes']} | {r['cign_ms']:.1f} | {r['finetune_ms']:.1f} | {r['ratio']:.2f}x | "
            f"{r['cign_ms'] / base:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"setting": setting, "args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
