"""Pinning the instruction set of the CPU kernels, so that two machines compute the same bits.

torch (ATen's vectorised kernels), MKL (matrix products) and oneDNN (convolutions) each pick their
kernels by the CPU's instruction set, and MKL also its blocking by the CPU model: the same seed
gives other numbers on an AVX-512 machine than on an AVX2 one, and a continual-learning run
amplifies the last-bit differences into other accuracies. ``AVCL_BENCH_CPU_ISA=avx2``
(``native``, or unset: no pin; set before the suite, or torch, is imported) makes every one of
them use its AVX2 kernels, available on every x86-64 CPU since 2013, and MKL its conditional
numerical reproducibility branch for AVX2 (``MKL_CBWR=AVX2``), so that runs on different CPUs
can be compared bit for bit. Measured with tests/test_golden.py (14 recorded runs): on an AMD
EPYC (AVX2) the pinned run is bit-identical to the unpinned one at one thread; on an AMD EPYC
Zen 5 (AVX-512) the pinned runs reproduce all 14 and the unpinned none (lifting ATen's pin alone:
10 differ, oneDNN's: 14, MKL's: 0); on an Intel Xeon with AVX-512 the three instruction-set pins
without ``MKL_CBWR`` still gave other bits than the AVX2 machine (finetune's golden digest). The golden recording of the tests runs pinned
(``tests/conftest.py``). The three libraries read their variables when they load: a pin set after
torch was imported has no effect, and ``environment.json`` records the capability torch really used.
"""

from __future__ import annotations

import os
import sys

#: the switch a user sets
ENV = "AVCL_BENCH_CPU_ISA"
#: the pins the switch sets, per value: ATen, MKL (instruction set; reproducible branch), oneDNN
PINS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
}


def apply_pin() -> dict[str, str]:
    """Set the kernel pins that ``AVCL_BENCH_CPU_ISA`` names (values already set are kept);
    returns them ({} when the switch is unset). An unknown value is one line on stderr, no pin."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "native"):  # native: each library's own choice for this CPU
        return {}
    if value not in PINS:
        print(f"avcl-bench: {ENV}={value!r} is not a known pin (known: {', '.join(PINS)}); not pinned", file=sys.stderr)
        return {}
    for key, pin in PINS[value].items():
        os.environ.setdefault(key, pin)
    return {key: os.environ[key] for key in PINS[value]}


def recorded() -> dict:
    """What environment.json says of the kernels: the capability torch uses and every pin set."""
    import torch

    keys = sorted({k for pins in PINS.values() for k in pins} | {ENV})
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_pins": {k: os.environ[k] for k in keys if k in os.environ},
    }
