"""Layered run configuration.

Layers, lowest first (Mammoth style):

1. :data:`SCHEMA`'s defaults — every key the suite knows, with neutral defaults — and the defaults
   of the strategy's declared hyperparameters (``params:``);
2. the benchmark manifest's protocol (tasks, memory), its first input form and its input settings
   (``clips:``, ``features:``);
3. the strategy's ``defaults:`` section (``strategies/<name>.yaml``; the strategy's own
   hyperparameters, the ``strategy`` section, are declared with their defaults under ``params:``):
   the papers' settings;
4. the strategy's ``protocols: <protocol>:`` section for the run's protocol (any benchmark whose
   manifest runs that protocol gets it), then its ``modalities: <modality>:`` section, then its
   ``settings: <name>:`` section named by the manifest's ``protocols.<protocol>.settings`` and that
   one's ``modalities: <modality>:`` section (:func:`protocol_layers`): the official release's
   per-dataset and per-modality settings;
5. the size profile (``--profile quick|paper``): ``paper`` adds nothing; ``quick`` is
   :data:`QUICK_CONVERGENCE` (train until validation accuracy stops improving, within the epoch
   budget) under the strategy's ``profiles: quick:`` section (CPU-sized encoders, inputs, batch
   and epoch budget). The embedded
   benchmark defaults to ``quick``, every other benchmark to ``paper``;
6. the benchmark manifest's ``config:`` section: a user's dataset can set anything, above the
   strategy's defaults;
7. ``--set key.sub=value`` (and ``--profile``, ``--seed``, ...) from the command line.

:func:`resolve` records the layer every value came from (its ``provenance`` argument;
``avcl-bench config`` prints them).

Every key is declared once with its type, default and range: the shared sections in
:data:`SCHEMA`, a strategy's hyperparameters in its document's ``params:`` (see
:mod:`avcl_bench.params`). Each layer is checked and coerced against the declarations: an
undeclared key or a value outside its declaration is a one-line error naming the key and the layer
that set it. The fully resolved configuration is saved in every run directory.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import safe_yaml
from .data.clips import AudioSpec, VisualSpec
from .data.features import VISUAL_FORMATS
from .data.synth import SYNTH_SIZES
from .errors import ConfigError
from .modalities import MODALITIES
from .params import InvalidValue, Param, dataclass_params, declared_params, invalid_message
from .paths import STRATEGIES_DIR

#: the values of ``model.network`` (see :data:`SCHEMA`)
NETWORKS = ("avnet", "avcil")

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

#: the papers' shared training settings (CIGN Sec. 4.1: 100 epochs, batch 128, Adam, lr 1e-4), the
#: defaults of a strategy document that declares no ``defaults:`` (a method of one's own), which
#: would otherwise train with the schema's values (1 epoch per task) on every real benchmark
PAPER_DEFAULTS = {"train": {"epochs": 100, "batch_size": 128, "lr": 1.0e-4, "optimizer": "adam"}}

#: the quick profile's training rule, below each strategy's own quick sizes: train until the
#: validation accuracy stops improving (5 epochs without a new best, never before epoch 10),
#: within the epoch budget ``train.epochs``, and keep the best epoch's weights. On digits-av
#: (real recordings) patience 3 without a minimum stopped audio fine-tuning at chance after 4
#: epochs on every task; with these values its first two tasks reached 72.5 and 87.5 %.
QUICK_CONVERGENCE = {"train": {"select_best_on_val": True, "early_stop_patience": 5, "early_stop_min_epochs": 10}}

#: ``train.select_on``: the validation clips that select the kept epoch (and stop training)
SELECTION_SETS = ("current", "seen")
#: the protocol under which selecting on every seen task's validation clips is the method's own
#: (the AV-CIL release validates on all classes seen so far, e.g. ours/train_incremental_ours.py)
SEEN_SELECTION_PROTOCOL = "av-cil"
#: strategies that train on every seen task's data at each step: the seen tasks' validation clips
#: are of data they hold, so they may select on them under any protocol (the upper bound's kept
#: epoch is then its best on all seen classes, not on the newest task's alone)
SEEN_DATA_STRATEGIES = ("joint",)

#: the largest seed (numpy's generators take 32-bit seeds)
SEED_MAX = 2**32 - 1

SCHEMA: dict[str, Any] = {
    "benchmark": Param("str", "synth-av"),  # a name under datasets/ or a manifest path
    # size profile (layer 5): quick | paper; None = quick on the embedded benchmark, paper elsewhere
    "profile": Param("str", None, nullable=True, choices=PROFILES),
    "protocol": Param("str", None, nullable=True),  # a protocol of the benchmark manifest; None = its default_protocol
    "num_tasks": Param("int", None, nullable=True, min=1),  # None = the protocol's
    "modality": Param("str", "audio-visual", choices=MODALITIES),
    "input": Param("str", None, nullable=True, choices=("clips", "features")),  # None = the benchmark's first form
    # numpy's generators take seeds below 2**32
    "seed": Param("int", 0, min=0, max=SEED_MAX),  # training seed (weights, batches, exemplar draws)
    "class_order_seed": Param("int", None, nullable=True, min=0, max=SEED_MAX),  # None = the official class order
    "data_root": Param("str", None, nullable=True),
    "allow_missing": Param("bool", False),
    "device": Param("str", "auto"),  # auto | cpu | cuda | cuda:N (validate())
    "results_dir": Param("str", "results/runs"),
    "run_id": Param("str", None, nullable=True),
    "progress": Param("bool", True),
    "synth": {  # the embedded benchmark's generator
        "size": Param("str", "default", choices=tuple(SYNTH_SIZES)),
        "seed": Param("int", 0, min=0, max=SEED_MAX),
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
        # which validation clips select the kept epoch and stop training: the current task's
        # (all that a method holds of its validation data) or every seen task's (the AV-CIL
        # release's selection, allowed under the av-cil protocol and for the methods that train on
        # every seen task's data: validate())
        "select_on": Param("str", "current", choices=SELECTION_SETS),
        # stop a task's training after this many epochs without a new best val accuracy (needs
        # select_best_on_val and a val split; train.epochs is then the budget); None = all epochs
        "early_stop_patience": Param("int", None, nullable=True, min=1),
        # ... and never before this many epochs (a model still at chance is not converged)
        "early_stop_min_epochs": Param("int", 1, min=1),
        "amp": Param("bool", False),  # autocast (bf16 on CUDA) for the forward pass
        "pin_memory": Param("bool", False),
        # read whole mini-batches by array row (data/loading.py); false = Avalanche's per-item path
        "batched_loading": Param("bool", True),
        # whole training batches only: the last partial batch of an epoch is dropped and the batch
        # is capped by the size of the data (also the exemplar batch replayed beside it); the AV-CIL
        # release's training loaders (DataLoader(..., drop_last=True))
        "drop_last": Param("bool", False),
        # the frozen previous model's outputs computed once per experience for every training
        # sample, not once per batch and epoch (strategies/base.py PreviousModel; the same values)
        "cache_previous_outputs": Param("bool", True),
        # keep freed memory on the heap instead of returning each large tensor's pages to the
        # system (avcl_bench/allocator.py; glibc only): fewer page faults, higher peak memory
        "retain_freed_memory": Param("bool", True),
    },
    "model": {
        # the network of the shared baselines (strategies/base.py build_model): avnet = the suite's
        # transformer (models/avnet.py), avcil = the AV-CIL release's network (models/avcil.py);
        # None = the strategy's own network (a strategy that builds only one rejects the other)
        "network": Param("str", None, nullable=True, choices=NETWORKS),
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


def _apply_layer(
    schema: dict, cfg: dict, layer: Any, where: str, prefix: str = "", provenance: dict | None = None
) -> dict:
    """``cfg`` with one layer applied: every key of ``layer`` must be declared in ``schema`` and
    its value is coerced to the declared type; a map parameter is updated key by key. Every key
    set is recorded in ``provenance`` (dotted key -> ``where``)."""
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
            out[key] = _apply_layer(spec, out[key], value, where, path + ".", provenance)
            continue
        try:
            value = spec.coerce(value)
        except InvalidValue as exc:
            raise ConfigError(invalid_message(path, exc, where)) from None
        if spec.type == "map" and isinstance(value, dict):  # over a null map: its declared keys null
            below = out[key] if out[key] is not None else dict.fromkeys(spec.keys if spec.values.nullable else ())
            value = {**below, **value}
        out[key] = value
        if provenance is not None:
            provenance[path] = where
    return out


def _leaf_keys(schema: dict, prefix: str = "") -> list[str]:
    """The dotted keys of every declared value of ``schema``."""
    out = []
    for key, spec in schema.items():
        out += _leaf_keys(spec, f"{prefix}{key}.") if isinstance(spec, dict) else [f"{prefix}{key}"]
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
            value = safe_yaml.safe_load(raw) if raw.strip() else None
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
        data = safe_yaml.safe_load(path.read_text())
    except safe_yaml.YAMLTooLarge as exc:
        raise ConfigError(f"{what} file {path} is refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file {path} is not valid YAML: {safe_yaml.problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must hold a mapping")
    return data


def strategy_names() -> list[str]:
    return sorted(p.stem for p in STRATEGIES_DIR.glob("*.yaml"))


def load_strategy_yaml(name: str) -> dict:
    """The strategy document of ``name`` (``strategies/<name>.yaml``, or the ``doc`` of a class named
    by ``path.py:Class``, ``module:Class`` or an entry point), its keys checked."""
    from .strategies import DOC_KEYS, external_document, unknown_doc_key

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
                raise unknown_doc_key(key, str(path))
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


#: keys of a strategy document's ``protocols: <protocol>:`` section that are not config keys:
#: ``settings`` (per-dataset sections, selected by the manifest's ``protocols.<protocol>.settings``)
#: and ``modalities`` (per-modality sections, selected by the run's modality)
PROTOCOL_SECTION_KEYS = ("settings", "modalities")
#: config keys that select the layers themselves, so no protocol section may set them
_SELECTING_KEYS = ("benchmark", "protocol", "modality", "profile")
#: how provenance names the schema's defaults (configuration layer 1)
DEFAULT_LAYER = "schema default"


def _section(value: Any, where: str, what: str) -> dict:
    """``value`` as a section mapping (None = empty), or a one-line error naming ``where``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of {what}, got {value!r}")
    return value


def _config_part(section: dict, where: str, allowed: tuple[str, ...]) -> dict:
    """The config keys of a protocol section (without its ``allowed`` sub-section keys)."""
    for key in _SELECTING_KEYS:
        if key in section:
            raise ConfigError(f"config key '{key}' cannot be set in {where} (it selects the layers)")
    return {k: v for k, v in section.items() if k not in allowed}


def _modality_sections(section: dict, where: str) -> dict:
    mods = _section(section.get("modalities"), f"{where}.modalities", "modality names to config sections")
    for m in mods:
        if m not in MODALITIES:
            raise ConfigError(f"unknown modality '{m}' in {where}.modalities (known: {', '.join(MODALITIES)})")
    return mods


def protocol_layers(
    sdoc: dict, origin: str, schema: dict, protocol: str | None, settings: str | None, modality: str, bench: str
) -> list[tuple[dict, str]]:
    """Configuration layer 4: the strategy document's sections for the run's protocol, lowest first.

    ``protocols: <protocol>:`` holds config keys for every benchmark run under that protocol, plus
    ``modalities: <modality>:`` (for runs of that modality) and ``settings: <name>:`` (for a
    benchmark whose manifest names ``settings: <name>`` in its protocol; each again with
    ``modalities:``). Applied in the order ``protocols.P``, ``protocols.P.modalities.M``,
    ``protocols.P.settings.S``, ``protocols.P.settings.S.modalities.M``.

    Every section of the document is checked (keys and values against ``schema``), not only the
    ones this run applies, so a typo anywhere is an error on every run."""
    table = _section(sdoc.get("protocols"), f"{origin}: 'protocols'", "protocol names to config sections")
    selected: list[tuple[dict, str]] = []
    scratch = defaults_of(schema)
    for pname, psec in table.items():
        where = f"{origin} protocols.{pname}"
        psec = _section(psec, where, "config keys")
        named = _section(psec.get("settings"), f"{where}.settings", "settings names to config sections")
        chosen = pname == protocol
        parts = [(_config_part(psec, where, PROTOCOL_SECTION_KEYS), where, chosen)]
        for m, msec in _modality_sections(psec, where).items():
            w = f"{where}.modalities.{m}"
            parts.append((_config_part(_section(msec, w, "config keys"), w, ()), w, chosen and m == modality))
        for sname, ssec in named.items():
            w = f"{where}.settings.{sname}"
            ssec = _section(ssec, w, "config keys")
            parts.append((_config_part(ssec, w, ("modalities",)), w, chosen and sname == settings))
            for m, msec in _modality_sections(ssec, w).items():
                wm = f"{w}.modalities.{m}"
                take = chosen and sname == settings and m == modality
                parts.append((_config_part(_section(msec, wm, "config keys"), wm, ()), wm, take))
        for layer, w, take in parts:
            _apply_layer(schema, scratch, layer, w)  # checks keys and values
            if take:
                selected.append((layer, w))
        if chosen and settings is not None and named and settings not in named:
            raise ConfigError(
                f"benchmark manifest '{bench}': protocols.{pname}.settings '{settings}' is not in {where}.settings "
                f"(known: {', '.join(map(str, named))})"
            )
    return selected


def _last_value(key: str, layers: list, default: Any) -> Any:
    """The value the last of ``layers`` that sets top-level ``key`` gives it (``default`` if none)."""
    for layer, _ in layers:
        if isinstance(layer, dict) and key in layer:
            default = layer[key]
    return default


def resolve(
    strategy: str,
    benchmark: str | None = None,
    manifest_config: dict | None = None,
    overrides: dict | None = None,
    benchmark_name: str | None = None,
    manifest_overrides: dict | None = None,
    default_profile: str = "paper",
    protocol_settings: dict | None = None,
    provenance: dict | None = None,
) -> dict:
    """Build the resolved config of one run from its layers (see module docstring); every layer is
    checked against the declared types and ranges, so every key has its declared type.

    ``protocol_settings`` maps each protocol of the benchmark manifest to the settings name it
    declares (``protocols.<p>.settings``; None where it names none). With ``provenance`` (a dict),
    it is filled with the layer every value came from: dotted key -> the layer's name as error
    messages give it (:func:`provenance_rows` pairs them with the values)."""
    sdoc = load_strategy_yaml(strategy)
    origin = strategy_origin(strategy)
    params = declared_params(sdoc, origin)
    schema = run_schema(params)
    cfg = defaults_of(schema)
    prov = dict.fromkeys(_leaf_keys(SCHEMA), DEFAULT_LAYER)
    prov.update(dict.fromkeys(_leaf_keys(params, "strategy."), f"{origin} params"))
    cfg["strategy"] = {"name": strategy, **cfg["strategy"]}
    prov["strategy.name"] = "--strategy"
    bench = benchmark_name or benchmark or cfg["benchmark"]
    if benchmark:
        cfg["benchmark"], prov["benchmark"] = benchmark, "--benchmark"
    profile, profile_layer = default_profile, f"default profile of benchmark '{bench}'"
    for layer, where in ((manifest_overrides, f"benchmark manifest '{bench}' config"), (overrides, "--set")):
        if (layer or {}).get("profile"):
            profile, profile_layer = layer["profile"], where
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    profiles = sdoc.get("profiles") or {}
    if not isinstance(profiles, dict) or set(profiles) - set(PROFILES):
        raise ConfigError(f"{origin}: 'profiles' must map {' or '.join(PROFILES)} to config sections")
    quick = profiles.get("quick", SHARED_QUICK)  # a method that declares no quick sizes gets the shared ones
    below = [
        (manifest_config, f"benchmark manifest '{bench}' protocol"),
        (sdoc["defaults"], f"{origin} defaults")
        if "defaults" in sdoc
        else (PAPER_DEFAULTS, f"PAPER_DEFAULTS ({origin} declares no defaults)"),
    ]
    above = [
        (QUICK_CONVERGENCE if profile == "quick" else None, "QUICK_CONVERGENCE"),
        (quick if profile == "quick" else None, f"{origin} profiles.quick" if "quick" in profiles else "SHARED_QUICK"),
        (manifest_overrides, f"benchmark manifest '{bench}' config"),
        (overrides, "--set"),
    ]
    # the protocol and modality that select layer 4 are the values the run ends with
    protocol = _last_value("protocol", below + above, cfg["protocol"])
    modality = _last_value("modality", below + above, cfg["modality"])
    settings = (protocol_settings or {}).get(protocol)
    sections = protocol_layers(sdoc, origin, schema, protocol, settings, modality, bench)
    _check_profile_keeps_method(quick if profile == "quick" else None, params, above[1][1])
    for layer, where in below + sections + above:
        cfg = _apply_layer(schema, cfg, layer or {}, where, provenance=prov)
    cfg["profile"], prov["profile"] = profile, profile_layer
    validate(cfg)
    if provenance is not None:
        provenance.clear()
        provenance.update(prov)
    return cfg


def _check_profile_keeps_method(layer: dict | None, params: dict, where: str) -> None:
    """A size profile changes sizes and schedules, never the method: it may not set a parameter
    that declares ``variants`` (that is a named variant, chosen with --set or a manifest's config)."""
    for key in ((layer or {}).get("strategy") or {}) if isinstance(layer, dict) else ():
        if key in params and params[key].variants:
            raise ConfigError(
                f"{where} sets strategy.{key}, which changes the method (a named variant): a profile may "
                "change sizes only; choose the variant with --set instead"
            )


def method_reference(cfg: dict, protocol_settings: dict | None = None, bench: str = "") -> dict:
    """The ``strategy`` section the method has by its document alone under this run's protocol:
    the declared defaults < the document's ``defaults:`` < its ``protocols:`` sections (the paper's
    method, or the official release's where the protocol follows one). No profile, manifest
    ``config:`` or ``--set`` value enters it."""
    name = cfg["strategy"]["name"]
    sdoc, origin = load_strategy_yaml(name), strategy_origin(name)
    schema = run_schema(declared_params(sdoc, origin))
    ref = defaults_of(schema)
    settings = (protocol_settings or {}).get(cfg["protocol"])
    layers = [(sdoc.get("defaults"), f"{origin} defaults")]
    layers += protocol_layers(sdoc, origin, schema, cfg["protocol"], settings, cfg["modality"], bench or cfg["benchmark"])
    for layer, where in layers:
        ref = _apply_layer(schema, ref, layer or {}, where)
    return ref["strategy"]


def method_variant(cfg: dict, protocol_settings: dict | None = None, bench: str = "") -> dict[str, Any]:
    """{strategy key: value} of the declared variant parameters (``variants:`` in ``params:``)
    whose value differs from the method's own (:func:`method_reference`): empty for the method as
    its paper (or release) defines it."""
    name = cfg["strategy"]["name"]
    sdoc, origin = load_strategy_yaml(name), strategy_origin(name)
    params = declared_params(sdoc, origin)
    if not any(p.variants for p in params.values()):
        return {}
    ref = method_reference(cfg, protocol_settings, bench)
    own = cfg["strategy"]
    return {k: own[k] for k, p in params.items() if p.variants and k in own and own[k] != ref.get(k)}


def variant_label(cfg: dict, variant: dict[str, Any]) -> str:
    """The names of a variant's values, as its parameters declare them ("+ old-class BCE", "w/o
    AVCTD"), joined; a value without a declared name shows as key=value."""
    if not variant:
        return ""
    name = cfg["strategy"]["name"]
    sdoc, origin = load_strategy_yaml(name), strategy_origin(name)
    params = declared_params(sdoc, origin)
    return ", ".join((params[k].variant_name(v) if k in params else None) or f"{k}={v}" for k, v in variant.items())


def method_name(display_name: str, label: str) -> str:
    """The name of what ran: the method's display name and its variant's label."""
    return f"{display_name} {label}" if label else display_name


def shown(value: Any) -> str:
    """A resolved value as ``avcl-bench config`` prints it: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def provenance_rows(cfg: dict, provenance: dict, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, layer) for every value of a resolved ``cfg``, in the config's order."""
    rows = []
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if path not in provenance and isinstance(value, dict):
            rows += provenance_rows(value, provenance, path + ".")
        else:
            rows.append((path, value, provenance.get(path, DEFAULT_LAYER)))
    return rows


#: the values :func:`settings_summary` shows for every run (besides the protocol sections' own)
SUMMARY_KEYS = (
    ("model.network", "network"),
    ("train.batch_size", "batch"),
    ("train.lr", "lr"),
    ("train.weight_decay", "wd"),
    ("train.optimizer", "opt"),
    ("train.drop_last", "drop_last"),
    ("train.select_best_on_val", "best_val"),
    ("train.select_on", "select_on"),
    ("memory.total", "memory_total"),
    ("memory.per_class", "memory_per_class"),
)


def settings_summary(cfg: dict, provenance: dict) -> str:
    """One line of a run's training settings: the effective epochs (:func:`epochs_for_modality`),
    :data:`SUMMARY_KEYS`, and every ``strategy.*`` value a protocol section set (the sweep's dry
    run shows it per planned run)."""
    values = {key: value for key, value, _ in provenance_rows(cfg, provenance)}
    parts = [f"epochs={epochs_for_modality(cfg)}"]
    parts += [f"{label}={_short(values[key])}" for key, label in SUMMARY_KEYS if values.get(key) is not None]
    parts += [
        f"{key}={_short(values[key])}"
        for key, layer in provenance.items()
        if key.startswith("strategy.") and " protocols." in layer
    ]
    return " ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def epochs_for_modality(cfg: dict) -> int:
    """Epochs of a run: ``strategy.epochs_by_modality[modality]`` when the strategy declares that
    map and it sets the run's modality, else ``train.epochs``.

    The release's per-modality epochs of the AV-CIL benchmarks are ``train.epochs`` of the
    strategies' ``protocols: av-cil: settings: <dataset>: modalities: <modality>:`` sections;
    ``epochs_by_modality`` (AV-CIL, AFC) overrides them for one modality, e.g.
    ``--set strategy.epochs_by_modality.audio=3``."""
    table = cfg["strategy"].get("epochs_by_modality") or {}
    value = table.get(cfg["modality"])
    return cfg["train"]["epochs"] if value is None else value  # typed and checked by its declaration


def validate(cfg: dict) -> None:
    """Checks across keys (each key's own type and range are checked by :func:`_apply_layer`)."""
    device = cfg["device"]
    if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise ConfigError(f"unknown device '{device}' (known: auto, cpu, cuda, cuda:N)")
    tr = cfg["train"]
    if (
        tr["select_on"] == "seen"
        and cfg["protocol"] != SEEN_SELECTION_PROTOCOL
        and cfg["strategy"]["name"] not in SEEN_DATA_STRATEGIES
        and (tr["select_best_on_val"] or tr["early_stop_patience"])
    ):
        raise ConfigError(
            f"config key 'train.select_on' is 'seen' under protocol {cfg['protocol']!r}: selecting the kept "
            "epoch on old tasks' validation clips uses data the method does not hold (only the "
            f"{SEEN_SELECTION_PROTOCOL} protocol does, as its release, and the methods that train on "
            f"every seen task's data: {', '.join(SEEN_DATA_STRATEGIES)}); use 'current'"
        )
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
