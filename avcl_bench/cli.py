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
from .modalities import MODALITIES


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strategy",
        default=None,
        help="strategy name (strategies/<name>.yaml, e.g. cign, finetune), or your own method: "
        "path/to/my_method.py:MyMethod, my_pkg.module:MyMethod, or the name of an entry point "
        "of the group avcl_bench.strategies",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint (its saved config is used)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run folder that --run-id names if it exists (otherwise an existing folder is refused)",
    )
    p.add_argument(
        "--benchmark",
        default=None,
        help="benchmark name (datasets/<name>.yaml) or path to your own manifest YAML; default synth-av",
    )
    p.add_argument("--modality", default=None, help="audio | visual | audio-visual (default audio-visual)")
    p.add_argument(
        "--profile",
        default=None,
        help="size profile: quick (CPU-sized encoders, inputs, batch) | paper (the papers' settings); "
        "default quick on the embedded benchmark, paper elsewhere",
    )
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    p.add_argument("--data-root", default=None, help="folder with the benchmark's clips or AV-CIL feature files")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default auto)")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="skip manifest ids missing on disk (their number is recorded) instead of failing",
    )
    p.add_argument("--results-dir", default=None, help="where run directories go (default results/runs)")
    p.add_argument("--run-id", default=None, help="name of the run directory (default: time_strategy_benchmark_...)")
    _add_set_arg(p, "override any config key, e.g. --set train.epochs=5 --set strategy.tau=0.1 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into one usage line)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    """argparse type: a seed numpy accepts, 0 .. 2**32 - 1."""
    from .config import SEED_MAX

    value = int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {SEED_MAX}, got {value}")
    return value


def _visual_shape(text: str) -> tuple[int, int, int]:
    """argparse type: T,P,D, three integers >= 1 (e.g. 8,196,768)."""
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"must be T,P,D: three integers >= 1 such as 8,196,768, got {text!r}")
    return tuple(int(p) for p in parts)


def _add_set_arg(p, help_text: str) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avcl-bench",
        description="Audio-visual class-incremental learning benchmark suite (CIGN, AV-CIL and baselines).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train and evaluate one strategy on one benchmark")
    _add_run_args(p)
    p = sub.add_parser("list", help="list strategies and benchmarks")
    _add_config_parser(sub)
    p = sub.add_parser("check", help="validate a benchmark (counts, classes, tasks, missing clips) without training")
    p.add_argument("--benchmark", required=True, help="benchmark name or path/to/manifest.yaml")
    p.add_argument("--data-root", default=None, help="folder of the clips or feature files")
    p.add_argument("--decode", default=None, metavar="all|N", help="also decode all clips, or the first N")
    p.add_argument(
        "--profile",
        default=None,
        choices=("quick", "paper"),
        help="the size profile whose input sizes to report (default as for run)",
    )
    _add_set_arg(p, "config value (e.g. protocol=NAME, input=features, class_order_seed=1)")
    p = sub.add_parser(
        "generate",
        help="generate the embedded benchmark, the digits-av set (scikit-learn digits + eSpeak NG speech) "
        "or AV-CIL-format feature files",
    )
    p.add_argument("what", choices=["synth-av", "digits-av", "avcil-features"])
    p.add_argument("--size", default="default", help="synth-av size: default | tiny")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", default=None, help="output folder (digits-av: required)")
    p.add_argument(
        "--clips-per-class",
        default=None,
        metavar="TRAIN,VAL,TEST",
        help="digits-av: clips per class in each split (default 100,20,20: 1400 clips)",
    )
    p.add_argument(
        "--hard-audio",
        type=float,
        default=None,
        help="digits-av: fraction of clips with the speech buried or missing (0.3)",
    )
    p.add_argument(
        "--hard-visual",
        type=float,
        default=None,
        help="digits-av: fraction of clips with the digit faint or covered (0.3)",
    )
    p.add_argument("--benchmark", default="ave-ci", help="avcil-features: benchmark whose ids/classes to use")
    p.add_argument(
        "--audio-dim", type=int, default=None, help="avcil-features: audio feature size (default manifest's)"
    )
    p.add_argument(
        "--visual-shape", type=_visual_shape, default=None, help="avcil-features: T,P,D (default manifest's)"
    )
    p.add_argument(
        "--limit-per-class", type=_positive_int, default=None, help="avcil-features: clips per class and split"
    )
    p = sub.add_parser("prepare", help="build a benchmark's split from the user's annotations (vggsound-sources)")
    p.add_argument("benchmark", choices=["vggsound-sources"])
    p.add_argument("--annotations", required=True, help="VGGSound annotation CSV (ytid,start,label,split)")
    p.add_argument("--data-root", required=True, help="the benchmark's data root (splits.csv is written there)")
    p.add_argument("--seed", type=_seed, default=0)
    _add_sweep_parser(sub)
    _add_report_parser(sub)
    _add_import_avcil_parser(sub)
    return parser


def _add_config_parser(sub) -> None:
    p = sub.add_parser(
        "config",
        help="print a run's resolved configuration and the layer each value comes from",
        description="Resolve the configuration of one run without running it and print every value with the "
        "layer it comes from (schema default, manifest protocol, strategy defaults, the strategy's "
        "protocol sections, QUICK_CONVERGENCE, profile, manifest config, --set).",
    )
    p.add_argument("--strategy", required=True, help="strategy name or spec (as for run)")
    p.add_argument("--benchmark", default=None, help="benchmark name or path/to/manifest.yaml; default synth-av")
    p.add_argument("--modality", default=None, help="audio | visual | audio-visual (default audio-visual)")
    p.add_argument("--profile", default=None, help="size profile: quick | paper (default as for run)")
    p.add_argument("--format", default="text", choices=("text", "yaml", "json"), help="output format (default text)")
    _add_set_arg(p, "override any config key, as for run (repeatable)")


def _add_sweep_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run strategies x benchmarks x modalities x seeds (presets, resumable, local or Ray)",
        description="Run a grid of runs. Runs whose resolved config already has a complete run directory are "
        "skipped, so re-running an interrupted sweep resumes it; a failed run is recorded (status.json "
        "state failed) and the sweep goes on.",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="named sweep: cign-table1 | cign-table2 | cign-table3 | cign-tables | cign-table4 | "
        "cign-10tasks | avcil-tables (see --list-presets)",
    )
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    # each of run's options too, so that a command that works for one run works for a sweep
    # (the singular forms take one value or a comma-separated list)
    p.add_argument(
        "--strategies",
        "--strategy",
        dest="strategies",
        default=None,
        help="comma-separated strategies or specs of your own methods (path.py:Class, module:Class, "
        "entry-point name); replaces the preset's",
    )
    p.add_argument(
        "--benchmarks",
        "--benchmark",
        dest="benchmarks",
        default=None,
        help="comma-separated benchmarks or manifest paths (replaces the preset's), e.g. synth-av",
    )
    p.add_argument(
        "--modalities", "--modality", dest="modalities", default=None, help="comma-separated: audio,visual,audio-visual"
    )
    p.add_argument(
        "--seeds", "--seed", dest="seeds", default=None, help="comma-separated seeds (preset default 0,1,2; otherwise 0)"
    )
    p.add_argument(
        "--profile",
        default=None,
        choices=("quick", "paper"),  # avcl_bench.config.PROFILES, checked before any run is planned
        help="size profile of every run: quick | paper (as for run; the same as --set profile=...)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="every run skips manifest ids missing on disk (their number is recorded) instead of failing",
    )
    _add_set_arg(p, "config override applied to every run (repeatable)")
    p.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="leave out strategies that have no YAML or module yet instead of recording them as failed",
    )
    p.add_argument("--no-retry-failed", action="store_true", help="do not re-run runs recorded as failed")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="local: 1 = sequential in this process; N > 1 = N concurrent child processes",
    )
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--address", default=None, help="ray: address of a running cluster (default: start a local one)")
    p.add_argument("--ray-cpus", type=int, default=None, help="ray: CPUs of the local instance it starts")
    p.add_argument("--cpus-per-run", type=float, default=1, help="ray: CPUs requested per run")
    p.add_argument(
        "--gpus-per-run",
        type=float,
        default=None,
        help="ray: GPUs requested per run (default 1 where the cluster has GPUs, else 0)",
    )
    p.add_argument("--data-root", default=None, help="data root passed to every run")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (every run)")
    p.add_argument("--results-dir", default=None, help="where run directories go (default results/runs)")
    p.add_argument("--name", default=None, help="name of the sweep record (default: the preset or 'custom')")
    p.add_argument("--dry-run", action="store_true", help="print the plan (run / skip) and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_report_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="leaderboard CSV, the papers' tables and the figures from existing run directories",
        description="Regenerate results/leaderboard*.csv and everything under reports/ (tables in Markdown, "
        "LaTeX and CSV; figures in PNG and PDF) from the run directories alone.",
    )
    p.add_argument(
        "--results-dir",
        action="append",
        default=None,
        help="folder of run directories (repeatable; default ./results/runs of the current directory)",
    )
    p.add_argument("--out", default=None, help="reports folder (default: reports/ beside the results folder)")
    p.add_argument(
        "--leaderboard", default=None, help="leaderboard CSV path (default: leaderboard.csv beside the results folder)"
    )
    p.add_argument("--published-dir", default=None, help="folder of published values (default reports/published)")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs whose resolved config has KEY=VALUE, e.g. --where synth.size=tiny (repeatable)",
    )
    p.add_argument("--no-plots", action="store_true", help="tables and leaderboard only")
    p.add_argument("--quiet", action="store_true")


def _add_import_avcil_parser(sub) -> None:
    p = sub.add_parser(
        "import-avcil",
        help="write a manifest for a folder in the AV-CIL release's layout (split dictionaries + features)",
        description="Turn a data folder laid out as the official AV-CIL release's data/<dataset>/ "
        "(category_encode_dict.npy, all_id_category_dict.npy, all_classId_vid_dict.npy, "
        "audio_pretrained_feature/audio_pretrained_feature_dict.npy and visual_pretrained_feature/"
        "visual_pretrained_feature_dict.npy or visual_features.h5) into a manifest: OUT/NAME.yaml and "
        "OUT/NAME/{classes,splits}.csv, with the av-cil protocol. Class i is the class of code i; the "
        "splits are the dictionaries' own; every id is looked up in the feature files. The .npy files "
        "are read without running any code they might name. Then: avcl-bench check --benchmark "
        "OUT/NAME.yaml; avcl-bench run --strategy S --benchmark OUT/NAME.yaml.",
    )
    p.add_argument("folder", help="the data folder, e.g. AV-CIL_ICCV2023/data/AVE")
    p.add_argument("--name", required=True, help="the benchmark's name (NAME.yaml)")
    p.add_argument("--out", default=None, help="where NAME.yaml and NAME/ go (default: the data folder)")
    p.add_argument(
        "--num-tasks",
        type=int,
        default=None,
        help="tasks (default for the release's datasets, recognised by their classes: AVE 4, "
        "Kinetics-Sounds 5, VGGSound100 10; required otherwise)",
    )
    p.add_argument(
        "--memory",
        type=int,
        default=None,
        help="exemplars kept in total (default for the release's datasets: AVE 340, Kinetics-Sounds 500, "
        "VGGSound100 1500; required otherwise)",
    )
    p.add_argument("--visual-format", choices=["npy", "h5"], default=None, help="default: the file present")
    p.add_argument(
        "--visual-frames",
        type=int,
        default=None,
        help="frames T of (T*P, D) visual tokens (default 8, as the release's model splits them)",
    )
    p.add_argument(
        "--drop-missing", action="store_true", help="leave out ids without features (default: refuse, naming them)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing NAME.yaml and NAME/ CSVs")
    p.add_argument("--quiet", action="store_true", help="print only the manifest's path")


#: run options that set one config key each: (flag, config key = argparse attribute)
CONFIG_OPTIONS = (
    ("--modality", "modality"),
    ("--profile", "profile"),
    ("--seed", "seed"),
    ("--data-root", "data_root"),
    ("--device", "device"),
    ("--results-dir", "results_dir"),
    ("--run-id", "run_id"),
)


def _overrides(args) -> dict:
    from .config import parse_set

    over = parse_set(args.sets)
    for _, key in CONFIG_OPTIONS:
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    if args.allow_missing:
        over["allow_missing"] = True
    if args.quiet:
        over["progress"] = False
    if args.benchmark:
        over["benchmark"] = args.benchmark
    return over


def cmd_run(args) -> int:
    from .errors import ConfigError
    from .runner import run

    if not args.strategy and not args.resume:
        raise ConfigError("run needs --strategy NAME (or --resume RUN_DIR)")
    if args.resume:
        # the saved config.yaml is the run: an option that would change it is refused, not dropped
        ignored = [flag for flag, key in CONFIG_OPTIONS if key != "device" and getattr(args, key) is not None]
        ignored += [
            flag
            for flag, given in (
                ("--benchmark", args.benchmark),
                ("--allow-missing", args.allow_missing),
                ("--set", args.sets),
                ("--overwrite", args.overwrite),
            )
            if given
        ]
        if ignored:
            raise ConfigError(
                f"--resume continues {args.resume} as its config.yaml says; {', '.join(ignored)} would be "
                "ignored: leave them out (only --device, --quiet and --strategy to confirm its method), "
                "or start a new run"
            )
    run(args.strategy, args.benchmark, _overrides(args), quiet=args.quiet, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_list(args) -> int:
    from .config import strategy_names
    from .data.manifest import benchmark_names
    from .strategies import ENTRY_POINT_GROUP, installed_names

    print("strategies: " + ", ".join(strategy_names()))
    installed = installed_names()
    if installed:
        print(f"installed strategies (entry points {ENTRY_POINT_GROUP}): " + ", ".join(installed))
    print("benchmarks: " + ", ".join(benchmark_names()))
    return 0


def cmd_config(args) -> int:
    import json

    import yaml

    from .config import parse_set, provenance_rows, shown
    from .runner import build_config, describe_method

    over = parse_set(args.sets)
    for key, val in (("modality", args.modality), ("profile", args.profile)):
        if val is not None:
            over[key] = val
    provenance: dict = {}
    cfg, manifest = build_config(args.strategy, args.benchmark, over, provenance=provenance)
    rows = provenance_rows(cfg, provenance)
    if args.format == "text":
        method = describe_method(cfg, manifest)
        print(f"# method: {method['method']} ({method['variant_note']})")
        width = max(len(key) for key, _, _ in rows)
        for key, value, layer in rows:
            print(f"{key:<{width}} = {shown(value)}  [{layer}]")
        return 0
    table = {key: {"value": value, "layer": layer} for key, value, layer in rows}
    if args.format == "json":
        print(json.dumps(table, indent=1))
    else:
        print(yaml.safe_dump(table, sort_keys=False, width=1000), end="")
    return 0


def _generate_digits_av(args) -> int:
    from pathlib import Path

    from .data.digits_av import DEFAULTS, generate_digits_av
    from .errors import ConfigError

    if not args.out:
        raise ConfigError("generate digits-av needs --out DIR")
    clips = None
    if args.clips_per_class is not None:
        parts = args.clips_per_class.split(",")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(
                f"--clips-per-class must be TRAIN,VAL,TEST (three integers), got {args.clips_per_class!r}"
            )
        clips = dict(zip(("train", "val", "test"), (int(p) for p in parts)))
    manifest = generate_digits_av(
        Path(args.out),
        clips=clips,
        hard_audio=DEFAULTS["hard_audio"] if args.hard_audio is None else args.hard_audio,
        hard_visual=DEFAULTS["hard_visual"] if args.hard_visual is None else args.hard_visual,
        seed=args.seed,
    )
    print(manifest)
    return 0


def cmd_generate(args) -> int:
    from pathlib import Path

    if args.what == "synth-av":
        from .data.synth import generate_synth_av

        out = generate_synth_av(Path(args.out) if args.out else None, size=args.size, seed=args.seed)
        print(out)
        return 0
    if args.what == "digits-av":
        return _generate_digits_av(args)
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
    shape = args.visual_shape or tuple(feats["visual_shape"])
    write_avcil_features(
        Path(args.out),
        splits["id"].tolist(),
        splits["label"].tolist(),
        args.audio_dim or feats["audio_dim"],
        shape,
        feats["visual_format"],
        seed=args.seed,
    )
    if args.limit_per_class:
        # A reduced set: write the matching manifest next to the features.
        splits.assign(label=[man.classes[i] for i in splits["label"]]).to_csv(
            Path(args.out) / "splits.csv", index=False
        )
    print(args.out)
    return 0


def cmd_prepare(args) -> int:
    from pathlib import Path

    from .data.vggss import prepare_vggsound_sources

    out = prepare_vggsound_sources(Path(args.annotations), Path(args.data_root), seed=args.seed)
    print(out)
    return 0


def cmd_sweep(args) -> int:

    from . import sweep as sw
    from .config import parse_set
    from .errors import ConfigError
    from .paths import default_results_dir, in_workdir

    if args.list_presets:
        for name, pre in sw.PRESETS.items():
            variants = ", ".join(v for v in pre.variants if v)
            print(
                f"{name:<14} {pre.title}\n{'':<14} benchmarks: {', '.join(pre.benchmarks)}"
                f"{'  protocol: ' + pre.protocol if pre.protocol else ''}\n{'':<14} strategies: "
                f"{', '.join(pre.strategies)}\n{'':<14} modalities: {', '.join(pre.modalities)}"
                f"{chr(10) + ' ' * 15 + 'variants: ' + variants if variants else ''}"
                f"{chr(10) + ' ' * 15 + 'settings: ' + str(pre.sets) if pre.sets else ''}"
            )
        return 0
    pre = None
    if args.preset:
        if args.preset not in sw.PRESETS:
            raise ConfigError(f"unknown preset '{args.preset}' (known: {', '.join(sw.PRESETS)})")
        pre = sw.PRESETS[args.preset]
    strategies = sw.parse_list(args.strategies) or (list(pre.strategies) if pre else [])
    benchmarks = sw.parse_list(args.benchmarks) or (list(pre.benchmarks) if pre else ["synth-av"])
    modalities = sw.parse_list(args.modalities) or (list(pre.modalities) if pre else ["audio-visual"])
    try:
        seeds = sw.parse_list(args.seeds, int) or (list(pre.seeds) if pre else [0])
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, got '{args.seeds}'") from None
    if not strategies:
        raise ConfigError("sweep needs --preset or --strategies")
    for m in modalities:
        if m not in MODALITIES:
            raise ConfigError(f"unknown modality '{m}' (known: {', '.join(MODALITIES)})")
    extra = {}
    if args.data_root:
        extra["data_root"] = args.data_root
    if args.device:
        extra["device"] = args.device
    results_dir = in_workdir(args.results_dir) if args.results_dir else default_results_dir()
    sets = parse_set(args.sets)
    if args.profile is not None:  # a command-line option, above --set as in run
        sets["profile"] = args.profile
    if args.allow_missing:
        sets["allow_missing"] = True
    specs = sw.plan(
        strategies,
        benchmarks,
        modalities,
        seeds,
        sets=sw.deep_merge(pre.sets, sets) if pre else sets,
        variants=pre.variants if pre else None,
        protocol=pre.protocol if pre else None,
        results_dir=results_dir,
        skip_unavailable=args.skip_unavailable,
        retry_failed=not args.no_retry_failed,
        extra=extra,
        log=(lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr)),
    )
    counts = {st: sum(1 for s in specs if s.status == st) for st in ("pending", "skipped", "skipped-failed", "failed")}
    print(
        f"[sweep] {len(specs)} runs: {counts['pending']} to run, {counts['skipped']} already complete"
        + (f", {counts['skipped-failed']} failed before (not retried)" if counts["skipped-failed"] else "")
        + (f", {counts['failed']} do not resolve" if counts["failed"] else ""),
        file=sys.stderr,
    )
    if args.dry_run:
        for s in specs:
            extra_info = s.existing or s.error or s.settings
            print(f"{s.status:<15} {s.run_id}  {extra_info}")
        return 0
    name = args.name or args.preset or "custom"
    record = sw.run_sweep(
        specs,
        name,
        results_dir,
        executor=args.executor,
        jobs=args.jobs,
        address=args.address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        ray_num_cpus=args.ray_cpus,
        threads=args.threads,
        progress=not args.quiet,
        description={"preset": args.preset, "argv": sys.argv[1:]},
    )
    c = record["counts"]
    failed = [s for s in specs if s.status == "failed"]
    print(
        f"[sweep] complete {c.get('complete', 0)}, skipped {c.get('skipped', 0)}, failed {c.get('failed', 0)}"
        + (f", run by another sweep {c['busy']}" if c.get("busy") else "")
        + f"; record: {record['record_path']}",
        file=sys.stderr,
    )
    for s in failed:
        print(f"[sweep] failed: {s.run_id}: {s.error}", file=sys.stderr)
    return 1 if failed else 0


def cmd_report(args) -> int:
    from pathlib import Path

    from .config import parse_set
    from .errors import ConfigError
    from .reporting import generate_report

    for folder in args.results_dir or []:  # a typo must not write an empty report over a real one
        if not Path(folder).is_dir():
            raise ConfigError(f"--results-dir {folder}: no such folder (nothing was written)")
    try:
        summary = generate_report(
            results_dirs=[Path(p) for p in args.results_dir] if args.results_dir else None,
            out_dir=Path(args.out) if args.out else None,
            leaderboard_path=Path(args.leaderboard) if args.leaderboard else None,
            published_dir=Path(args.published_dir) if args.published_dir else None,
            where=parse_set(args.where),
            plots=not args.no_plots,
            log=(lambda m: None) if args.quiet else print,
        )
    except OSError as exc:  # a read-only mount, a folder not writable by this user, a full disk
        where = exc.filename or "the report's folder"
        raise ConfigError(
            f"report: cannot write {where}: {exc.strerror or type(exc).__name__} (choose writable places "
            "with --out and --leaderboard; files already there are kept)"
        ) from None
    print(summary["message"])
    return 0


def cmd_import_avcil(args) -> int:
    from .data.avcil_import import import_avcil

    path = import_avcil(
        args.folder,
        args.name,
        out=args.out,
        num_tasks=args.num_tasks,
        memory_total=args.memory,
        visual_format=args.visual_format,
        visual_frames=args.visual_frames,
        drop_missing=args.drop_missing,
        overwrite=args.overwrite,
        log=(lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr)),
    )
    print(path)
    return 0


def cmd_check(args) -> int:
    from .check import check_benchmark
    from .config import parse_set
    from .errors import ConfigError

    if args.decode is not None and args.decode != "all" and not (args.decode.isdigit() and int(args.decode) > 0):
        raise ConfigError(f"--decode takes 'all' or a positive number of clips, got {args.decode!r}")
    over = parse_set(args.sets)
    if args.data_root:
        over["data_root"] = args.data_root
    over["benchmark"] = args.benchmark
    if args.profile:
        over["profile"] = args.profile
    return check_benchmark(args.benchmark, over, decode=args.decode)


COMMANDS = {
    "run": cmd_run,
    "check": cmd_check,
    "list": cmd_list,
    "config": cmd_config,
    "generate": cmd_generate,
    "prepare": cmd_prepare,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "import-avcil": cmd_import_avcil,
}


def _tolerant_streams() -> None:
    """Under a locale that is not UTF-8 (LC_ALL=C without Python's coercion), a non-ASCII class or
    run name is printed escaped instead of ending the command with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
            stream.reconfigure(errors="backslashreplace")


def main(argv=None) -> int:
    _tolerant_streams()
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
