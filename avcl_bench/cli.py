"""``avcl-bench`` command line.

Importing this module imports neither torch nor Avalanche (``avcl-bench --help`` stays fast);
each sub-command imports what it needs when it runs.

Bad input (unknown names or keys, missing files, corrupt clips, wrong feature shapes) ends with
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from .errors import UserError

MODALITIES = ("audio", "visual", "audio-visual")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", required=True, help="strategy name (strategies/<name>.yaml), e.g. cign, finetune")
    p.add_argument("--benchmark", default=None,
                   help="benchmark name (datasets/<name>.yaml) or path to your own manifest YAML; default synth-av")
    p.add_argument("--modality", choices=MODALITIES, default=None, help="default audio-visual")
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    p.add_argument("--data-root", default=None, help="folder with the benchmark's clips or AV-CIL feature files")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default auto)")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip manifest ids missing on disk (their number is recorded) instead of failing")
    p.add_argument("--results-dir", default=None, help="where run directories go (default results/runs)")
    p.add_argument("--run-id", default=None, help="name of the run directory (default: time_strategy_benchmark_...)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.epochs=5 --set strategy.tau=0.1 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avcl-bench",
        description="Audio-visual class-incremental learning benchmark suite (CIGN, AV-CIL and baselines).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train and evaluate one strategy on one benchmark")
    _add_run_args(p)
    p = sub.add_parser("list", help="list strategies and benchmarks")
    p = sub.add_parser("generate", help="generate the embedded benchmark or AV-CIL-format feature files")
    p.add_argument("what", choices=["synth-av", "avcil-features"])
    p.add_argument("--size", default="default", help="synth-av size: default | tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--benchmark", default="ave-ci", help="avcil-features: benchmark whose ids/classes to use")
    p.add_argument("--audio-dim", type=int, default=None, help="avcil-features: audio feature size (default manifest's)")
    p.add_argument("--visual-shape", default=None, help="avcil-features: T,P,D (default manifest's)")
    p.add_argument("--limit-per-class", type=int, default=None, help="avcil-features: clips per class and split")
    p = sub.add_parser("prepare", help="build a benchmark's split from the user's annotations (vggsound-sources)")
    p.add_argument("benchmark", choices=["vggsound-sources"])
    p.add_argument("--annotations", required=True, help="VGGSound annotation CSV (ytid,start,label,split)")
    p.add_argument("--data-root", required=True, help="the benchmark's data root (splits.csv is written there)")
    p.add_argument("--seed", type=int, default=0)
    return parser


def _overrides(args) -> dict:
    from .config import parse_set

    over = parse_set(args.sets)
    for key, val in (("modality", args.modality), ("seed", args.seed), ("data_root", args.data_root),
                     ("device", args.device), ("results_dir", args.results_dir), ("run_id", args.run_id)):
        if val is not None:
            over[key] = val
    if args.allow_missing:
        over["allow_missing"] = True
    if args.quiet:
        over["progress"] = False
    if args.benchmark:
        over["benchmark"] = args.benchmark
    return over


def cmd_run(args) -> int:
    from .runner import run

    run(args.strategy, args.benchmark, _overrides(args), quiet=args.quiet)
    return 0


def cmd_list(args) -> int:
    from .config import strategy_names
    from .data.manifest import benchmark_names

    print("strategies: " + ", ".join(strategy_names()))
    print("benchmarks: " + ", ".join(benchmark_names()))
    return 0


def cmd_generate(args) -> int:
    from pathlib import Path

    if args.what == "synth-av":
        from .data.synth import generate_synth_av

        out = generate_synth_av(Path(args.out) if args.out else None, size=args.size, seed=args.seed)
        print(out)
        return 0
    from .data.features import write_avcil_features
    from .data.manifest import load_manifest
    from .errors import ConfigError

    if not args.out:
        raise ConfigError("generate avcil-features needs --out")
    man = load_manifest(args.benchmark)
    if "features" not in man.inputs:
        raise ConfigError(f"benchmark '{man.name}' has no feature input form")
    man.materialize({"data_root": args.out, "synth": {"size": "tiny", "seed": 0}, "progress": True})
    feats = man.doc["features"]
    splits = man.splits
    if args.limit_per_class:
        splits = splits.groupby(["split", "label"], sort=False).head(args.limit_per_class)
    shape = tuple(int(v) for v in args.visual_shape.split(",")) if args.visual_shape else tuple(feats["visual_shape"])
    write_avcil_features(Path(args.out), splits["id"].tolist(), splits["label"].tolist(),
                         args.audio_dim or feats["audio_dim"], shape, feats["visual_format"], seed=args.seed)
    if args.limit_per_class:
        # A reduced set: write the matching manifest next to the features.
        splits.assign(label=[man.classes[i] for i in splits["label"]]).to_csv(Path(args.out) / "splits.csv", index=False)
    print(args.out)
    return 0


def cmd_prepare(args) -> int:
    from pathlib import Path

    from .data.vggss import prepare_vggsound_sources

    out = prepare_vggsound_sources(Path(args.annotations), Path(args.data_root), seed=args.seed)
    print(out)
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "generate": cmd_generate, "prepare": cmd_prepare}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"avcl-bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("avcl-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
