"""Data: manifests, raw clips, pre-extracted features, the synthetic benchmark, datasets, streams.

Kept free of imports on purpose: each submodule imports its own (heavy) dependencies.
"""
