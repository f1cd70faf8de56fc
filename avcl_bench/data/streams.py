"""Avalanche class-incremental streams from the loaded datasets.

Labels are already in presentation order (``datasets.load_data``), so the class order handed to
Avalanche is the identity and task ``t`` holds labels ``[t*k, (t+1)*k)``. Divisibility is
checked here because Avalanche's ``class_incremental_benchmark`` silently drops the remainder.
"""

from __future__ import annotations

from ..errors import ConfigError
from .datasets import LoadedData


def check_divisible(num_classes: int, num_tasks: int, benchmark: str) -> int:
    if not isinstance(num_tasks, int) or num_tasks < 1:
        raise ConfigError(f"config key 'num_tasks' must be a positive integer, got {num_tasks!r}")
    if num_classes % num_tasks:
        raise ConfigError(
            f"benchmark '{benchmark}' has {num_classes} classes, not divisible into num_tasks={num_tasks} equal tasks"
        )
    return num_classes // num_tasks


def make_streams(data: LoadedData, num_tasks: int, benchmark: str = ""):
    """Return the Avalanche scenario with ``train_stream``, ``val_stream`` and ``test_stream``."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    C = len(data.classes)
    check_divisible(C, num_tasks, benchmark)
    datasets = {"train": data.train, "test": data.test}
    if len(data.val):
        datasets["val"] = data.val
    for name, ds in datasets.items():
        present = set(ds.targets)
        if len(present) != C:
            missing = sorted(set(range(C)) - present)
            raise ConfigError(
                f"split '{name}' of '{benchmark}' has no clip of class '{data.classes[missing[0]]}'"
                f" ({len(missing)} classes empty)"
            )
    from .loading import as_avalanche

    # wrapped here so that every experience and memory keeps each clip's array row (batched reads)
    return class_incremental_benchmark(
        {name: as_avalanche(ds) for name, ds in datasets.items()}, class_order=list(range(C)), num_experiences=num_tasks
    )
