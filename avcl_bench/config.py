"""Layered run configuration.

Layers, lowest first (Mammoth style):

1. :data:`BASE` — every key the suite knows, with neutral defaults;
2. the benchmark manifest's protocol (tasks, memory) and its input settings (``clips:``, ``features:``);
3. the strategy's ``defaults:`` section (``strategies/<name>.yaml``; the strategy's own
   hyperparameters, the ``strategy`` section, are declared with their defaults under ``params:``):
   the papers' settings;
4. the strategy's ``benchmarks: <benchmark>:`` section (the official release's per-dataset settings);
5. the size profile (``--profile quick|paper``): ``paper`` adds nothing; ``quick`` is
   :data:`QUICK_CONVERGENCE` (train until validation accuracy stops improving, within the epoch
   budget) under the strategy's ``profiles: quick:`` section (CPU-sized encoders, inputs, batch
   and epoch budget). The embedded
   benchmark defaults to ``quick``, every other benchmark to ``paper``;
6. the benchmark manifest's ``config:`` section: a user's dataset can set anything, above the
   strategy's defaults;
7. ``--set key.sub=value`` (and ``--profile``, ``--seed``, ...) from the command line.

Every key is declared once with its type, default and range: the shared sections in
:data:`SCHEMA`, a strategy's hyperparameters in its document's ``params:`` (see
:mod:`avcl_bench.params`). Each layer is checked and coerced against the declarations: an
undeclared key or a value outside its declaration is a one-line error naming the key and the layer
that set it. The fully resolved configuration is saved in every run directory.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from .data.clips import AudioSpec, VisualSpec
from .data.features import VISUAL_FORMATS
from .data.synth import SYNTH_SIZES
from .errors import ConfigError
from .params import InvalidValue, Param, dataclass_params, declared_params, invalid_message
from .paths import STRATEGIES_DIR

MODALITIES = ("audio", "visual", "audio-visual")

#: Every configuration key of the suite outside ``strategy``: its type, default and allowed values
#: (one place; :data:`BASE` is derived from it). Strategy hyperparameters live under ``strategy``
#: and are declared by each strategy document's ``params:`` section.
#: size profiles (configuration layer 5)
PROFILES = ("quick", "paper")
#: the quick profile of a strategy whose document declares none (a method outside the package): the
#: CPU sizes most built-in strategies declare (the fine-tuning baseline's)
SHARED_QUICK = {
    "train": {"epochs": 30, "batch_size": 32, "lr": 1.0e-3},  # a budget: QUICK_CONVERGENCE stops earlier
    "model": {"dim": 64, "encoder_width": 16, "fusion_depth": 1, "heads": 4},
}

#: the quick profile's training rule, below each strategy's own quick sizes: train until the
#: validation accuracy stops improving (3 epochs without a new best), within the epoch budget
#: ``train.epochs``, and keep the best epoch's weights
QUICK_CONVERGENCE = {"train": {"select_best_on_val": True, "early_stop_patience": 3}}

SCHEMA: dict[str, Any] = {
    "benchmark": Param("str", "synth-av"),  # a name under datasets/ or a manifest path
    # size profile (layer 5): quick | paper; None = quick on the embedded benchmark, paper elsewhere
    "profile": Param("str", None, nullable=True, choices=PROFILES),
    "protocol": Param("str", None, nullable=True),  # a protocol of the benchmark manifest; None = its default_protocol
    "num_tasks": Param("int", None, nullable=True, min=1),  # None = the protocol's
    "modality": Param("str", "audio-visual", choices=MODALITIES),
    "input": Param("str", None, nullable=True, choices=("clips", "features")),  # None = the benchmark's first form
    "seed": Param("int", 0, min=0),  # training seed (weights, batches, exemplar draws)
    "class_order_seed": Param("int", None, nullable=True, min=0),  # None = the official class order
    "data_root": Param("str", None, nullable=True),
    "allow_missing": Param("bool", False),
    "device": Param("str", "auto"),  # auto | cpu | cuda | cuda:N (validate())
    "results_dir": Param("str", "results/runs"),
    "run_id": Param("str", None, nullable=True),
    "progress": Param("bool", True),
    "synth": {  # the embedded benchmark's generator
        "size": Param("str", "default", choices=tuple(SYNTH_SIZES)),
        "seed": Param("int", 0, min=0),
    },
    "memory": {
        # CIGN form: m exemplars per old class (CIGN Sec. 4.1: 50)
        "per_class": Param("int", None, nullable=True, min=0),
        # AV-CIL form: a fixed total split over the classes seen so far
        "total": Param("int", None, nullable=True, min=0),
    },
    "train": {
        "epochs": Param("int", 1, min=1),
        "batch_size": Param("int", 64, min=1),
        "eval_batch_size": Param("int", 256, min=1),
        "optimizer": Param("str", "adam", choices=("adam", "sgd")),
        "lr": Param("float", 1e-3, exclusive_min=0),
        "momentum": Param("float", 0.9, min=0, max=1),  # sgd only
        "weight_decay": Param("float", 0.0, min=0),
        "num_workers": Param("int", 0, min=0),
        # keep the epoch with the best val accuracy (AV-CIL release)
        "select_best_on_val": Param("bool", False),
        # stop a task's training after this many epochs without a new best val accuracy (needs
        # select_best_on_val and a val split; train.epochs is then the budget); None = all epochs
        "early_stop_patience": Param("int", None, nullable=True, min=1),
        "amp": Param("bool", False),  # autocast (bf16 on CUDA) for the forward pass
        "pin_memory": Param("bool", False),
        # read whole mini-batches by array row (data/loading.py); false = Avalanche's per-item path
        "batched_loading": Param("bool", True),
    },
    "model": {
        "dim": Param("int", 512, min=1, source="CIGN Sec. 4.1: token dimension D = 512"),  # divisible by heads
        "encoder_width": Param("int", 64, min=1),  # ResNet18 base width; 64 = torchvision's ResNet18
        # local state dicts for the audio / visual ResNet18 (never downloaded)
        "audio_checkpoint": Param("str", None, nullable=True),
        "visual_checkpoint": Param("str", None, nullable=True),
        "fusion_depth": Param("int", 2, min=1),  # transformer blocks over [CLS; audio; visual] tokens (baselines)
        "heads": Param("int", 8, min=1),
        "dropout": Param("float", 0.0, min=0, exclusive_max=1),
    },
    # Raw-clip preprocessing: the keys, types and defaults are those of data.clips.AudioSpec /
    # VisualSpec (CIGN Sec. 4.1: 3 s at 22050 Hz -> log spectrogram; one 224x224 frame), whose own
    # checks give the ranges (validate()).
    "clips": {
        "audio": dataclass_params(AudioSpec),
        "visual": dataclass_params(VisualSpec),
        "cache": Param("bool", True),
    },
    "features": {
        "audio_dim": Param("int", 768, min=1),
        "visual_shape": Param("list", [8, 196, 768], items=Param("int", min=1)),  # T, P, D
        "visual_format": Param("str", "npy", choices=VISUAL_FORMATS),
        "dtype": Param("str", "float32", choices=("float32", "float16")),  # float16 halves the memory-mapped cache
    },
}


def defaults_of(schema: dict) -> dict:
    """The default configuration a schema declares."""
    return {k: defaults_of(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


#: Every configuration key of the suite with its default (derived from :data:`SCHEMA`).
BASE: dict[str, Any] = {**defaults_of(SCHEMA), "strategy": {"name": None}}


def _apply_layer(schema: dict, cfg: dict, layer: Any, where: str, prefix: str = "") -> dict:
    """``cfg`` with one layer applied: every key of ``layer`` must be declared in ``schema`` and
    its value is coerced to the declared type; a map parameter is updated key by key."""
    if not isinstance(layer, dict):
        if not prefix:
            raise ConfigError(f"{where} must be a mapping of config keys, got {layer!r}")
        raise ConfigError(f"config key '{prefix[:-1]}' is a section, got {layer!r} (in {where})")
    out = copy.copy(cfg)
    for key, value in layer.items():
        path = f"{prefix}{key}"
        spec = schema.get(key)
        if spec is None:
            raise ConfigError(f"unknown config key '{path}' (in {where})")
        if isinstance(spec, dict):
            out[key] = _apply_layer(spec, out[key], value, where, path + ".")
            continue
        try:
            value = spec.coerce(value)
        except InvalidValue as exc:
            raise ConfigError(invalid_message(path, exc, where)) from None
        if spec.type == "map" and isinstance(value, dict):  # over a null map: its declared keys null
            below = out[key] if out[key] is not None else dict.fromkeys(spec.keys if spec.values.nullable else ())
            value = {**below, **value}
        out[key] = value
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
    """The strategy document of ``name`` (``strategies/<name>.yaml``, or the ``doc`` of a class named
    by ``path.py:Class``, ``module:Class`` or an entry point), its keys checked."""
    from .strategies import DOC_KEYS, external_document

    data = external_document(name)
    where = strategy_origin(name)
    if data is None:
        path = STRATEGIES_DIR / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(strategy_names()) or "none"
            raise ConfigError(f"unknown strategy '{name}' (known: {known})")
        data = load_yaml(path, "strategy")
        for key in data:
            if key not in DOC_KEYS:
                raise ConfigError(f"unknown top-level key '{key}' in {path}")
    if "strategy" in (data.get("defaults") or {}):
        raise ConfigError(f"{where}: strategy hyperparameters are declared under 'params:', not 'defaults: strategy:'")
    return data


def strategy_origin(name: str) -> str:
    """How errors name the document of strategy ``name``."""
    from .strategies import is_builtin

    return f"strategies/{name}.yaml" if is_builtin(name) else f"the doc of strategy {name}"


def run_schema(params: dict[str, Param]) -> dict:
    """:data:`SCHEMA` plus the ``strategy`` section of one strategy's declared parameters."""
    return {**SCHEMA, "strategy": params}


def resolve(
    strategy: str,
    benchmark: str | None = None,
    manifest_config: dict | None = None,
    overrides: dict | None = None,
    benchmark_name: str | None = None,
    manifest_overrides: dict | None = None,
    default_profile: str = "paper",
) -> dict:
    """Build the resolved config of one run from its layers (see module docstring); every layer is
    checked against the declared types and ranges, so every key has its declared type."""
    sdoc = load_strategy_yaml(strategy)
    origin = strategy_origin(strategy)
    schema = run_schema(declared_params(sdoc, origin))
    cfg = defaults_of(schema)
    cfg["strategy"] = {"name": strategy, **cfg["strategy"]}
    bench = benchmark_name or benchmark or cfg["benchmark"]
    cfg["benchmark"] = benchmark or cfg["benchmark"]
    per_bench = (sdoc.get("benchmarks") or {}).get(bench) or {}
    profile = (overrides or {}).get("profile") or (manifest_overrides or {}).get("profile") or default_profile
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    profiles = sdoc.get("profiles") or {}
    if not isinstance(profiles, dict) or set(profiles) - set(PROFILES):
        raise ConfigError(f"{origin}: 'profiles' must map {' or '.join(PROFILES)} to config sections")
    quick = profiles.get("quick", SHARED_QUICK)  # a method that declares no quick sizes gets the shared ones
    for layer, where in (
        (manifest_config, f"benchmark manifest '{bench}' protocol"),
        (sdoc.get("defaults"), f"{origin} defaults"),
        (per_bench, f"{origin} benchmarks.{bench}"),
        (QUICK_CONVERGENCE if profile == "quick" else None, "QUICK_CONVERGENCE"),
        (quick if profile == "quick" else None, f"{origin} profiles.quick" if "quick" in profiles else "SHARED_QUICK"),
        (manifest_overrides, f"benchmark manifest '{bench}' config"),
        (overrides, "--set"),
    ):
        cfg = _apply_layer(schema, cfg, layer or {}, where)
    cfg["profile"] = profile
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    """Checks across keys (each key's own type and range are checked by :func:`_apply_layer`)."""
    device = cfg["device"]
    if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise ConfigError(f"unknown device '{device}' (known: auto, cpu, cuda, cuda:N)")
    model = cfg["model"]
    if model["dim"] % model["heads"]:
        raise ConfigError(
            f"config key 'model.dim' ({model['dim']}) must be divisible by 'model.heads' ({model['heads']})"
        )
    for name, spec in (("audio", AudioSpec), ("visual", VisualSpec)):
        try:
            spec.from_dict(cfg["clips"][name])
        except ConfigError as exc:
            raise ConfigError(f"clips.{exc}") from None
