"""Strategy registry: one module per method, registered by name (Mammoth style).

``get_strategy("cign")`` imports ``avcl_bench/strategies/cign.py`` lazily (torch and Avalanche
are only imported when a run starts) and returns the registered class. A strategy's
hyperparameters live in ``strategies/<name>.yaml`` at the repository root.
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError

REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: ``@register("finetune")``."""

    def deco(cls):
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def module_name(name: str) -> str:
    return name.replace("-", "_")


def get_strategy(name: str):
    if name not in REGISTRY:
        try:
            importlib.import_module(f"{__name__}.{module_name(name)}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{module_name(name)}":
                raise ConfigError(f"unknown strategy '{name}': no module avcl_bench/strategies/{module_name(name)}.py") from None
            raise
    if name not in REGISTRY:
        raise ConfigError(f"module avcl_bench/strategies/{module_name(name)}.py registers no strategy '{name}'")
    return REGISTRY[name]
