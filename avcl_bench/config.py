"""Layered run configuration.

Layers, lowest first (Mammoth style):

1. :data:`BASE` — every key the suite knows, with neutral defaults;
2. the benchmark manifest's ``config:`` section (``datasets/<name>.yaml``);
3. the strategy's ``defaults:`` section (``strategies/<name>.yaml``), which also declares the
   strategy's own hyperparameters under ``strategy:``;
4. the strategy's ``benchmarks: <benchmark>:`` section (e.g. the small CPU configuration of the
   embedded benchmark);
5. ``--set key.sub=value`` from the command line.

A key that no lower layer declares is an error naming the key and the layer that set it. The
fully resolved configuration is saved in every run directory.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import ConfigError
from .paths import STRATEGIES_DIR

MODALITIES = ("audio", "visual", "audio-visual")

#: Every configuration key of the suite. Strategy hyperparameters live under ``strategy`` and are
#: declared by each strategy's YAML.
BASE: dict[str, Any] = {
    "benchmark": "synth-av",
    "protocol": None,  # a protocol of the benchmark manifest; None = its default_protocol
    "num_tasks": None,  # None = the protocol's
    "modality": "audio-visual",
    "input": None,  # clips | features; None = the benchmark's first input form
    "seed": 0,  # training seed (weights, batches, exemplar draws)
    "class_order_seed": None,  # None = the official class order; an int permutes it
    "data_root": None,
    "allow_missing": False,
    "device": "auto",
    "results_dir": "results/runs",
    "run_id": None,
    "progress": True,
    "synth": {"size": "default", "seed": 0},  # the embedded benchmark's generator
    "memory": {
        "per_class": None,  # CIGN form: m exemplars per old class (CIGN Sec. 4.1: 50)
        "total": None,  # AV-CIL form: a fixed total split over the classes seen so far
    },
    "train": {
        "epochs": 1,
        "batch_size": 64,
        "eval_batch_size": 256,
        "optimizer": "adam",  # adam | sgd
        "lr": 1e-3,
        "momentum": 0.9,  # sgd only
        "weight_decay": 0.0,
        "num_workers": 0,
        "select_best_on_val": False,  # keep the epoch with the best val accuracy (AV-CIL release)
        "amp": False,  # autocast (bf16 on CUDA) for the forward pass
        "pin_memory": False,
        # read whole mini-batches by array row (data/loading.py); false = Avalanche's per-item path
        "batched_loading": True,
    },
    "model": {
        "dim": 512,  # token dimension D (CIGN Sec. 4.1: 512)
        "encoder_width": 64,  # ResNet18 base width; 64 = torchvision's ResNet18
        "audio_checkpoint": None,  # local state dict for the audio ResNet18 (never downloaded)
        "visual_checkpoint": None,  # local state dict for the visual ResNet18
        "fusion_depth": 2,  # transformer blocks over [CLS; audio; visual] tokens (baselines)
        "heads": 8,
        "dropout": 0.0,
    },
    # Raw-clip preprocessing; the keys and defaults are those of data.clips.AudioSpec / VisualSpec
    # (CIGN Sec. 4.1: 3 s at 22050 Hz -> log spectrogram; one 224x224 frame), filled in below.
    "clips": {"audio": {}, "visual": {}, "cache": True},
    "features": {
        "audio_dim": 768,
        "visual_shape": [8, 196, 768],
        "visual_format": "npy",
        "dtype": "float32",  # float16 halves the memory-mapped cache
    },
    "strategy": {"name": None},
}


def _clip_defaults() -> None:
    from .data.clips import AudioSpec, VisualSpec  # numpy only: keeps --help light

    BASE["clips"]["audio"] = AudioSpec().to_dict()
    BASE["clips"]["visual"] = VisualSpec().to_dict()


_clip_defaults()


def _merge(base: dict, over: dict, where: str, prefix: str = "", open_keys: bool = False) -> dict:
    """Recursively merge ``over`` into a copy of ``base``; unknown keys raise ConfigError."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        path = f"{prefix}{key}"
        if key not in out and not open_keys:
            raise ConfigError(f"unknown config key '{path}' (in {where})")
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, where, path + ".")
        elif isinstance(out.get(key), dict) and value is not None:
            raise ConfigError(f"config key '{path}' is a section, got {value!r} (in {where})")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(items: Iterable[str]) -> dict:
    """``["train.lr=0.01", "strategy.tau=0.1"]`` -> nested dict; values parsed as YAML scalars."""
    result: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set key '{key}' conflicts with another --set")
        node[parts[-1]] = value
    return result


def load_yaml(path: Path, what: str) -> dict:
    """Read a YAML mapping; a missing or malformed file is a one-line ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what} file {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must hold a mapping")
    return data


def strategy_names() -> list[str]:
    return sorted(p.stem for p in STRATEGIES_DIR.glob("*.yaml"))


def load_strategy_yaml(name: str) -> dict:
    from .strategies import external_document  # path.py:Class, module:Class or an entry point

    doc = external_document(name)
    if doc is not None:
        return doc
    path = STRATEGIES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(strategy_names()) or "none"
        raise ConfigError(f"unknown strategy '{name}' (known: {known})")
    data = load_yaml(path, "strategy")
    for key in data:
        if key not in ("name", "display_name", "paper", "tables", "modalities", "description", "deviations",
                       "defaults", "benchmarks"):
            raise ConfigError(f"unknown top-level key '{key}' in {path}")
    return data


def resolve(
    strategy: str,
    benchmark: str | None = None,
    manifest_config: dict | None = None,
    overrides: dict | None = None,
    benchmark_name: str | None = None,
) -> dict:
    """Build the resolved config of one run from its layers (see module docstring)."""
    cfg = copy.deepcopy(BASE)
    sdoc = load_strategy_yaml(strategy)
    bench = benchmark_name or benchmark or cfg["benchmark"]
    cfg["benchmark"] = benchmark or cfg["benchmark"]
    cfg = _merge(cfg, manifest_config or {}, f"benchmark manifest '{bench}'")
    defaults = copy.deepcopy(sdoc.get("defaults") or {})
    # The strategy's YAML declares its own hyperparameters: they open the `strategy` section.
    declared = defaults.pop("strategy", None) or {}
    cfg["strategy"] = _merge(cfg["strategy"], declared, f"strategies/{strategy}.yaml", "strategy.", open_keys=True)
    cfg["strategy"]["name"] = strategy
    cfg = _merge(cfg, defaults, f"strategies/{strategy}.yaml defaults")
    per_bench = (sdoc.get("benchmarks") or {}).get(bench) or {}
    cfg = _merge(cfg, per_bench, f"strategies/{strategy}.yaml benchmarks.{bench}")
    cfg = _merge(cfg, overrides or {}, "--set")
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    """Checks on values (keys are checked by the merge)."""
    if cfg["modality"] not in MODALITIES:
        raise ConfigError(f"unknown modality '{cfg['modality']}' (known: {', '.join(MODALITIES)})")
    if cfg["input"] not in (None, "clips", "features"):
        raise ConfigError(f"unknown input form '{cfg['input']}' (known: clips, features)")
    if cfg["device"] not in ("auto", "cpu", "cuda") and not str(cfg["device"]).startswith("cuda:"):
        raise ConfigError(f"unknown device '{cfg['device']}' (known: auto, cpu, cuda)")
    train = cfg["train"]
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ConfigError(f"config key 'train.{key}' must be a positive integer, got {train[key]!r}")
    if train["optimizer"] not in ("adam", "sgd"):
        raise ConfigError(f"config key 'train.optimizer' must be adam or sgd, got {train['optimizer']!r}")
    if not isinstance(cfg["seed"], int):
        raise ConfigError(f"config key 'seed' must be an integer, got {cfg['seed']!r}")
