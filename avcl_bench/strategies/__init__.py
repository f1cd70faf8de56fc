"""Strategy registry and method catalogue.

Built-in strategies: one module per method, registered by name (Mammoth style).
``get_strategy("cign")`` imports ``avcl_bench/strategies/cign.py`` lazily (torch and Avalanche
are only imported when a run starts) and returns the registered class. A built-in strategy's
document (catalogue entry, hyperparameters, defaults) is ``strategies/<name>.yaml`` at the
repository root.

A method outside the package is named by a *spec* wherever a strategy name is accepted
(``--strategy``, ``--strategies``, ``--resume``):

- ``path/to/my_method.py:MyMethod`` (a file; recorded in the run's config with its absolute path);
- ``my_pkg.module:MyMethod`` (an importable module);
- ``name``, an entry point ``name = my_pkg.module:MyMethod`` of the group ``avcl_bench.strategies``
  of an installed distribution.

Its class subclasses :class:`avcl_bench.strategies.base.AVCLStrategy` and carries its document,
in the format of a ``strategies/*.yaml`` file, as the class attribute ``doc``.

The catalogue (:func:`catalogue_entry`) is the part of a document that sweeps and reports read:
``display_name``, ``paper``, ``tables`` (the paper tables / sweep presets the method belongs to)
and ``modalities`` (the accuracy matrices one audio-visual run of it reports: all three for CIGN,
whose one model predicts every modality; ``[audio-visual]`` for a method that reports the modality
it was trained in). This module imports neither torch nor Avalanche, except when it loads a
method's class.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from ..errors import ConfigError
from ..modalities import MODALITIES

REGISTRY: dict[str, type] = {}
#: Entry-point group through which installed distributions contribute strategies.
ENTRY_POINT_GROUP = "avcl_bench.strategies"
#: Top-level keys of a strategy document (a strategies/*.yaml file or a class's ``doc``).
DOC_KEYS = (
    "name",
    "display_name",
    "paper",
    "tables",
    "modalities",
    "description",
    "deviations",
    "params",
    "defaults",
    "protocols",
    "profiles",
)
#: top-level keys of earlier strategy documents, and what replaced them
REPLACED_DOC_KEYS = {
    "benchmarks": "'protocols: <protocol>:' sections, which apply by the benchmark manifest's protocol "
    "(per dataset: 'settings: <name>:'; see CONTRIBUTING.md)",
}


def unknown_doc_key(key, where: str) -> ConfigError:
    """The one-line error for an unknown top-level key of the strategy document ``where``."""
    if key in REPLACED_DOC_KEYS:
        return ConfigError(f"'{key}:' in {where} is replaced by {REPLACED_DOC_KEYS[key]}")
    return ConfigError(f"unknown top-level key '{key}' in {where} (known: {', '.join(DOC_KEYS)})")


#: The papers' row order of their tables (layout only: which methods belong to a table, and
#: their names, come from the catalogue). A method not listed goes after these, before the
#: upper bound. CIGN Sec. 4.2 (Tables 1-3); the AV-CIL release's baselines.
PAPER_ROW_ORDER = {
    "cign": ("ewc", "lwf", "icarl", "il2m", "bic", "podnet", "ssil", "l2p", "dualprompt", "cign", "joint"),
    "avcil": ("finetune", "lwf", "icarl", "ssil", "afc", "av-cil", "joint"),
}
#: The upper bound: always the last row of a table.
UPPER_BOUND = "joint"


def register(name: str):
    """Class decorator: ``@register("finetune")``."""

    def deco(cls):
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def module_name(name: str) -> str:
    return name.replace("-", "_")


def _strategies_dir() -> Path:
    from ..paths import STRATEGIES_DIR

    return STRATEGIES_DIR


def builtin_names() -> list[str]:
    return sorted(p.stem for p in _strategies_dir().glob("*.yaml"))


def is_builtin(spec: str) -> bool:
    return ":" not in spec and "/" not in spec and (_strategies_dir() / f"{spec}.yaml").is_file()


def _entry_points() -> dict:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def installed_names() -> list[str]:
    """Strategies of installed distributions (entry points of :data:`ENTRY_POINT_GROUP`)."""
    return sorted(_entry_points())


def _split(spec: str) -> tuple[str, str, str]:
    """(kind, target, class name): kind ``file``, ``module`` or ``entry``."""
    if ":" in spec:
        target, _, cls_name = spec.rpartition(":")
        if not target or not cls_name.isidentifier():
            raise ConfigError(f"strategy spec '{spec}' must be path/to/file.py:Class or package.module:Class")
        kind = "file" if target.endswith(".py") or "/" in target or "\\" in target else "module"
        return kind, target, cls_name
    return "entry", spec, ""


def canonical_spec(spec: str) -> str:
    """The spec a run records: a file spec with the file's absolute path (``--resume`` from any
    directory finds it); built-in names, module specs and entry-point names as given."""
    if is_builtin(spec):
        return spec
    kind, target, cls_name = _split(spec)
    if kind == "file":
        return f"{Path(target).expanduser().resolve()}:{cls_name}"
    return spec


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise ConfigError(f"strategy spec '{spec}': file not found: {path}")
    # one module name per file, so that importing the same file twice gives the same classes
    name = f"avcl_bench_external_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    try:
        mod_spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise ConfigError(f"strategy spec '{spec}': syntax error in {path} line {exc.lineno}: {exc.msg}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module failed to import: one line naming it
        del sys.modules[name]
        raise ConfigError(f"strategy spec '{spec}': importing {path} failed: {_import_failure(exc)}") from None
    return module


def _import_failure(exc: BaseException) -> str:
    """What went wrong importing a user's module, in words (sys.exit at import is no exit of ours)."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) while being imported"
    return f"{type(exc).__name__}: {exc}"


def _import_module(module_path: str, spec: str):
    try:
        return importlib.import_module(module_path)
    except SyntaxError as exc:
        raise ConfigError(
            f"strategy spec '{spec}': syntax error in {exc.filename} line {exc.lineno}: {exc.msg}"
        ) from None
    except ModuleNotFoundError as exc:
        if exc.name and (module_path == exc.name or module_path.startswith(exc.name + ".")):
            raise ConfigError(f"strategy spec '{spec}': no module named '{module_path}'") from None
        raise ConfigError(f"strategy spec '{spec}': importing {module_path} failed: {exc}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - see _import_file
        raise ConfigError(f"strategy spec '{spec}': importing {module_path} failed: {_import_failure(exc)}") from None


@lru_cache(maxsize=None)
def _external_class(spec: str) -> type:
    kind, target, cls_name = _split(spec)
    if kind == "entry":
        eps = _entry_points()
        if target not in eps:
            known = ", ".join(builtin_names() + installed_names()) or "none"
            raise ConfigError(
                f"unknown strategy '{spec}' (known: {known}; or path/to/file.py:Class, package.module:Class)"
            )
        module_path, _, cls_name = eps[target].value.partition(":")
        module = _import_module(module_path.strip(), spec)
        cls_name = cls_name.strip()
    elif kind == "file":
        module = _import_file(Path(target).expanduser().resolve(), spec)
    else:
        module = _import_module(target, spec)
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise ConfigError(
            f"strategy spec '{spec}': {getattr(module, '__file__', module.__name__)} defines no class '{cls_name}'"
        )
    from .base import AVCLStrategy

    if not (isinstance(cls, type) and issubclass(cls, AVCLStrategy)):
        raise ConfigError(
            f"strategy spec '{spec}': {cls_name} is not a subclass of avcl_bench.strategies.base.AVCLStrategy"
        )
    cls.name = check_document(getattr(cls, "doc", None), f"{spec} ({cls_name}.doc)")["name"]  # as @register does
    return cls


def check_document(doc, where: str) -> dict:
    """A strategy document's shape: a mapping with a ``name``, known top-level keys and a
    well-formed catalogue (one line naming ``where`` and the key otherwise)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"strategy {where}: the document must be a mapping (a dict like strategies/*.yaml)")
    if not isinstance(doc.get("name"), str) or not doc["name"]:
        raise ConfigError(f"strategy {where}: the document needs a 'name' (a non-empty string)")
    for key in doc:
        if key not in DOC_KEYS:
            raise unknown_doc_key(key, f"strategy {where}")
    for key in ("tables", "modalities"):
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"strategy {where}: '{key}' must be a list of names, got {value!r}")
    bad = [m for m in doc.get("modalities") or [] if m not in MODALITIES]
    if bad:
        raise ConfigError(
            f"strategy {where}: unknown modality '{bad[0]}' in 'modalities' (known: {', '.join(MODALITIES)})"
        )
    return doc


def external_document(spec: str) -> dict | None:
    """The document of a method outside the package (its class's ``doc``), or None for a
    built-in name. Called by :func:`avcl_bench.config.load_strategy_yaml`."""
    if is_builtin(spec):
        return None
    return copy.deepcopy(_external_class(spec).doc)


def get_strategy(spec: str):
    """The strategy class of a built-in name or of a spec (see the module docstring)."""
    if not is_builtin(spec):
        return _external_class(spec)
    name = spec
    if name not in REGISTRY:
        try:
            importlib.import_module(f"{__name__}.{module_name(name)}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{module_name(name)}":
                raise ConfigError(
                    f"unknown strategy '{name}': no module avcl_bench/strategies/{module_name(name)}.py"
                ) from None
            raise
    if name not in REGISTRY:
        raise ConfigError(f"module avcl_bench/strategies/{module_name(name)}.py registers no strategy '{name}'")
    return REGISTRY[name]


# ---- the catalogue ------------------------------------------------------------------------------


def catalogue_entry(doc: dict) -> dict:
    """What sweeps and reports know of a method: ``name``, ``display_name``, ``paper``,
    ``tables``, ``modalities`` (defaults: the name, empty, none, ``[audio-visual]``)."""
    return {
        "name": doc["name"],
        "display_name": doc.get("display_name") or doc["name"],
        "paper": doc.get("paper") or "",
        "tables": list(doc.get("tables") or []),
        "modalities": list(doc.get("modalities") or ["audio-visual"]),
    }


def strategy_catalogue(spec: str) -> dict:
    """The catalogue entry of a built-in name or a spec."""
    from ..config import load_strategy_yaml

    return catalogue_entry(check_document(load_strategy_yaml(spec), spec))


@lru_cache(maxsize=1)
def _builtin_catalogue() -> tuple:
    return tuple((name, strategy_catalogue(name)) for name in builtin_names())


def builtin_catalogue() -> dict[str, dict]:
    """name -> catalogue entry of every built-in strategy (read from strategies/*.yaml)."""
    return copy.deepcopy(dict(_builtin_catalogue()))


def paper_order_key(family: str):
    """Sort key of strategy names in the row order of a paper's tables (``family``: a key of
    :data:`PAPER_ROW_ORDER`): the paper's methods in its order, others by name, the upper bound last."""
    order = PAPER_ROW_ORDER.get(family, ())

    def key(name: str):
        if name == UPPER_BOUND:
            return (2, 0, name)
        return (0, order.index(name), name) if name in order else (1, 0, name)

    return key


def members(tables, family: str, catalogue: dict[str, dict] | None = None) -> list[str]:
    """Strategies whose catalogue entry lists ``tables`` (one key or several: any of them), in the
    row order of the paper ``family``; ``catalogue`` defaults to the built-in strategies'."""
    tables = {tables} if isinstance(tables, str) else set(tables)
    catalogue = builtin_catalogue() if catalogue is None else catalogue
    return sorted((n for n, e in catalogue.items() if tables & set(e.get("tables") or ())), key=paper_order_key(family))
