"""Shared fixtures: every test session gets its own data cache (generated clips, decoded arrays)."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    if "AVCL_BENCH_TEST_CACHE" in os.environ:  # reuse generated data across local runs
        os.environ["AVCL_BENCH_CACHE"] = os.environ["AVCL_BENCH_TEST_CACHE"]
    else:
        os.environ["AVCL_BENCH_CACHE"] = str(tmp_path_factory.mktemp("avcl-cache"))
    yield
