"""Batched row reads (data/loading.py): same items and same runs as Avalanche's per-item path."""

import json

import numpy as np
import pytest
import torch


def _split_datasets(tmp_path, n=48, memmap=True):
    from avcl_bench.data.datasets import AVArrayDataset

    rng = np.random.RandomState(0)
    audio, visual = rng.randn(n, 5).astype("float32"), rng.randn(n, 2, 3).astype("float32")
    if memmap:  # the on-disk cache form
        np.save(tmp_path / "a.npy", audio)
        np.save(tmp_path / "v.npy", visual)
        audio, visual = np.load(tmp_path / "a.npy", mmap_mode="r"), np.load(tmp_path / "v.npy", mmap_mode="r")
    labels = (np.arange(n) // 2) % 4
    rows = rng.permutation(n)
    return (
        AVArrayDataset(audio, visual, labels, np.sort(rows[: n // 2])),
        AVArrayDataset(audio, visual, labels, rows[n // 2 :]),
    )


def _same_item(a, b):
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][1], b[0][1])
    assert int(a[1]) == int(b[1]) and int(a[2]) == int(b[2])


@pytest.mark.parametrize("memmap", [True, False])
def test_batched_view_reads_the_items_of_every_derived_dataset(tmp_path, memmap):
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    from avcl_bench.data.loading import as_avalanche, batched_view

    train, test = _split_datasets(tmp_path, memmap=memmap)
    sc = class_incremental_benchmark(
        {"train": as_avalanche(train), "test": as_avalanche(test)}, class_order=[0, 1, 2, 3], num_experiences=2
    )
    exp = sc.train_stream[1].dataset
    memory_like = exp.concat(sc.test_stream[0].dataset.subset([3, 0, 2])).train()  # rows of two splits
    for ds in (exp, exp.eval(), sc.test_stream[0].dataset, memory_like):
        view = batched_view(ds)
        assert view is not None and len(view) == len(ds)
        for i in range(len(ds)):
            _same_item(ds[i], view[i])
        positions = [len(ds) - 1, 0, 2, 2]  # unsorted, repeated
        (a, v), y, keys, t = view.__getitems__(positions)
        for k, i in enumerate(positions):
            assert torch.equal(a[k], ds[i][0][0]) and torch.equal(v[k], ds[i][0][1]) and int(y[k]) == ds[i][1]
        # one key per sample: the repeated position repeats it, the others differ (across splits too)
        assert keys[2] == keys[3] and len(set(keys[:3].tolist())) == 3
    all_keys = [int(k) for ds in (exp, memory_like) for k in batched_view(ds).keys]
    assert len(set(all_keys)) == len(exp) + 3  # memory_like = exp + 3 test rows


def test_make_loader_batches_like_the_per_item_loader(tmp_path):
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    from avcl_bench.data.loading import RowBatches, as_avalanche, make_loader

    train, test = _split_datasets(tmp_path)
    ds = (
        class_incremental_benchmark(
            {"train": as_avalanche(train), "test": as_avalanche(test)}, class_order=[0, 1, 2, 3], num_experiences=2
        )
        .train_stream[0]
        .dataset
    )
    batched, plain = make_loader(ds, 5, shuffle=True), make_loader(ds, 5, shuffle=True, batched=False)
    assert isinstance(batched.dataset, RowBatches) and not isinstance(plain.dataset, RowBatches)
    torch.manual_seed(1)
    got = list(batched)
    torch.manual_seed(1)
    want = list(plain)  # the same RandomSampler draw: the same batches
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert torch.equal(g[0][0], w[0][0]) and torch.equal(g[0][1], w[0][1])
        assert torch.equal(g[1], w[1]) and torch.equal(g[-1], w[-1])  # labels, task labels


def test_an_unshuffled_pass_leaves_the_training_random_stream_alone(tmp_path):
    """Evaluating (per epoch, on validation) must not shift the batches and draws of training that
    follow: an unshuffled loader draws its base seed from a generator of its own."""
    from avcl_bench.data.loading import as_avalanche, make_loader

    train, _ = _split_datasets(tmp_path)
    for batched in (True, False):
        torch.manual_seed(3)
        want = torch.rand(4)
        torch.manual_seed(3)
        assert len(list(make_loader(as_avalanche(train), 5, batched=batched))) == 5  # 24 items
        assert torch.equal(torch.rand(4), want)
    torch.manual_seed(3)
    list(make_loader(as_avalanche(train), 5, shuffle=True))  # a training pass does draw from it
    assert not torch.equal(torch.rand(4), want)


def test_batched_reads_in_a_worker_process(tmp_path):
    """train.num_workers > 0: the view (memory maps included) is read in a worker process."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    from avcl_bench.data.loading import as_avalanche, make_loader

    train, test = _split_datasets(tmp_path)
    ds = (
        class_incremental_benchmark(
            {"train": as_avalanche(train), "test": as_avalanche(test)}, class_order=[0, 1, 2, 3], num_experiences=1
        )
        .train_stream[0]
        .dataset
    )
    local, worker = list(make_loader(ds, 7)), list(make_loader(ds, 7, num_workers=1))
    assert len(local) == len(worker) == 4
    for g, w in zip(worker, local):
        assert torch.equal(g[0][0], w[0][0]) and torch.equal(g[0][1], w[0][1]) and torch.equal(g[1], w[1])


def test_a_dataset_without_rows_falls_back_to_per_item(tmp_path):
    from avcl_bench.data.loading import batched_view, make_loader

    train, _ = _split_datasets(tmp_path)
    assert batched_view(train) is None  # a bare torch dataset: no array rows
    (a, v), y = next(iter(make_loader(train, 4)))
    assert a.shape == (4, 5) and v.shape == (4, 2, 3) and y.shape == (4,)


@pytest.mark.parametrize("strategy", ["finetune", "icarl"])
def test_batched_loading_changes_no_result(tmp_path, feature_benchmark, strategy):
    """Same seed, batched row reads on and off: identical accuracy matrices (replay included)."""
    from avcl_bench.cli import main

    matrices = {}
    for flag in ("true", "false"):
        run_id = f"{strategy}-{flag}"
        args = [
            "run",
            "--strategy",
            strategy,
            "--benchmark",
            str(feature_benchmark),
            "--results-dir",
            str(tmp_path),
            "--run-id",
            run_id,
            "--quiet",
            "--set",
            "train.epochs=2",
            "--set",
            "train.batch_size=8",
            "--set",
            "model.dim=16",
            "--set",
            "model.heads=2",
            "--set",
            f"train.batched_loading={flag}",
        ]
        assert main(args) == 0
        matrices[flag] = (tmp_path / run_id / "accuracy_audio-visual.csv").read_text()
        assert json.loads((tmp_path / run_id / "metrics.json").read_text())["run"]["buffer_size"] >= 0
    assert matrices["true"] == matrices["false"]
