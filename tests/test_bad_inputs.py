"""The catalogue of bad inputs: each ends with one line on stderr naming the problem, exit code 2,
and no run directory marked complete."""

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avcl_bench.cli import main

FAST = ["--set", "synth.size=tiny", "--set", "train.epochs=1", "--quiet"]


@pytest.fixture(scope="module")
def tiny_clips():
    from avcl_bench.data.synth import generate_synth_av

    return generate_synth_av(None, size="tiny", seed=0, progress=False)


def own_benchmark(tmp_path: Path, src: Path, replace: dict | None = None, splits_edit=None) -> Path:
    """A user's YAML over copies of the tiny clips; ``replace`` maps a clip index to new bytes."""
    root = tmp_path / "clips"
    root.mkdir()
    splits = pd.read_csv(src / "splits.csv")
    for f in (src / "clips").iterdir():
        os.symlink(f, root / f.name)
    for idx, payload in (replace or {}).items():
        target = root / f"{splits['id'].iloc[idx]}.mp4"
        target.unlink()
        payload(target, src / "clips" / target.name)
    if splits_edit:
        splits = splits_edit(splits)
    splits.to_csv(tmp_path / "splits.csv", index=False)
    y = tmp_path / "mine.yaml"
    y.write_text(
        f"name: mine\nsplits: splits.csv\nclasses: {src / 'classes.csv'}\n"
        "protocols: {p: {num_tasks: 4, memory: {per_class: 2}}}\ninputs: [clips]\n"
        f"data_root: {root}\nclips: {{audio: {{sample_rate: 16000, duration: 2.0, n_fft: 256, "
        "win_length: 256, hop_length: 256}, visual: {size: 64}}\n"
    )
    return y


def write_video_only(target: Path, _src: Path) -> None:
    import av

    with av.open(str(target), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=8)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        for i in range(8):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 30 * i, np.uint8), format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)


def write_silent(target: Path, _src: Path) -> None:
    import av

    with av.open(str(target), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=8)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        for i in range(16):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 100, np.uint8), format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        af = av.AudioFrame.from_ndarray(np.zeros((1, 32000), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts = 16000, 0
        for p in a.encode(af):
            c.mux(p)
        for p in a.encode():
            c.mux(p)


def truncate(target: Path, src: Path) -> None:
    data = src.read_bytes()
    target.write_bytes(data[: len(data) // 3])


def garbage(target: Path, _src: Path) -> None:
    target.write_bytes(os.urandom(4096))


def empty_file(target: Path, _src: Path) -> None:
    target.write_bytes(b"")


def check(capsys, args, needle, results: Path):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert needle in lines[0], lines[0]
    assert not list(results.glob("**/COMPLETE"))


CLIP_CASES = {
    "corrupt": (garbage, "corrupt clip"),
    "truncated": (truncate, "corrupt clip"),
    "empty file": (empty_file, "corrupt clip"),
    "audio-less": (write_video_only, "no audio stream"),
    "silent": (write_silent, "silent"),
}


@pytest.mark.parametrize("case", sorted(CLIP_CASES))
def test_bad_clip(case, tmp_path, tiny_clips, capsys):
    payload, needle = CLIP_CASES[case]
    y = own_benchmark(tmp_path, tiny_clips, replace={5: payload})
    res = tmp_path / "runs"
    check(
        capsys, ["run", "--strategy", "finetune", "--benchmark", str(y), "--results-dir", str(res)] + FAST, needle, res
    )


def test_missing_clips(tmp_path, tiny_clips, capsys):
    y = own_benchmark(tmp_path, tiny_clips, replace={1: lambda t, s: None, 2: lambda t, s: None})
    res = tmp_path / "runs"
    check(
        capsys,
        ["run", "--strategy", "finetune", "--benchmark", str(y), "--results-dir", str(res)] + FAST,
        "2 of 136 clips",
        res,
    )


def test_empty_class(tmp_path, tiny_clips, capsys):
    y = own_benchmark(
        tmp_path, tiny_clips, splits_edit=lambda s: s[~((s.label == s.label.iloc[0]) & (s.split == "train"))]
    )
    res = tmp_path / "runs"
    check(
        capsys,
        ["run", "--strategy", "finetune", "--benchmark", str(y), "--results-dir", str(res)] + FAST,
        "has no training clip",
        res,
    )


def test_unknown_label_in_splits(tmp_path, tiny_clips, capsys):
    def edit(s):
        s = s.copy()
        s.loc[0, "label"] = "not-a-class"
        return s

    y = own_benchmark(tmp_path, tiny_clips, splits_edit=edit)
    res = tmp_path / "runs"
    check(
        capsys,
        ["run", "--strategy", "finetune", "--benchmark", str(y), "--results-dir", str(res)] + FAST,
        "not-a-class",
        res,
    )


def _features(tmp_path, mutate):
    from avcl_bench.data.featsynth import generate_feature_benchmark

    y = generate_feature_benchmark(tmp_path / "feat")
    mutate(tmp_path / "feat")
    return y


def test_wrong_feature_shape(tmp_path, capsys):
    y = _features(tmp_path, lambda root: None)
    res = tmp_path / "runs"
    check(
        capsys,
        [
            "run",
            "--strategy",
            "finetune",
            "--benchmark",
            str(y),
            "--results-dir",
            str(res),
            "--set",
            "features.audio_dim=64",
        ]
        + FAST,
        "audio",
        res,
    )


def test_nan_features(tmp_path, capsys):
    def poison(root):
        p = root / "audio_pretrained_feature" / "audio_pretrained_feature_dict.npy"
        d = np.load(p, allow_pickle=True).item()
        first = sorted(d)[0]
        d[first] = d[first].copy()
        d[first][0] = np.nan
        np.save(p, d, allow_pickle=True)

    y = _features(tmp_path, poison)
    res = tmp_path / "runs"
    check(
        capsys, ["run", "--strategy", "finetune", "--benchmark", str(y), "--results-dir", str(res)] + FAST, "NaN", res
    )


def test_missing_feature_file(tmp_path, capsys):
    y = _features(tmp_path, lambda root: shutil.rmtree(root / "visual_pretrained_feature"))
    res = tmp_path / "runs"
    check(
        capsys,
        ["run", "--strategy", "finetune", "--benchmark", str(y), "--results-dir", str(res)] + FAST,
        "visual_pretrained_feature",
        res,
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--strategy", "nope"], "unknown strategy 'nope'"),
        (["--strategy", "finetune", "--benchmark", "nope"], "unknown benchmark 'nope'"),
        (["--strategy", "finetune", "--modality", "smell"], "unknown modality 'smell'"),
        (["--strategy", "finetune", "--set", "train.lrr=1"], "unknown config key 'train.lrr'"),
        (["--strategy", "finetune", "--set", "strategy.alpha=1"], "unknown config key 'strategy.alpha'"),
        (["--strategy", "finetune", "--set", "protocol=nope"], "unknown protocol 'nope'"),
        (["--strategy", "finetune", "--set", "train.batch_size=0"], "train.batch_size"),
        (["--strategy", "finetune", "--set", "num_tasks=3"], "not divisible"),
        (
            ["--strategy", "finetune", "--benchmark", "vggsound-instruments", "--data-root", "/nonexistent/dir"],
            "/nonexistent/dir",
        ),
        (["--strategy", "finetune", "--benchmark", "ks-ci"], "--data-root"),
        (["--strategy", "finetune", "--device", "tpu"], "unknown device 'tpu'"),
        (["--strategy", "finetune", "--set", "noequals"], "key=value"),
        ([], "--strategy"),
    ],
)
def test_bad_names_and_keys(args, needle, tmp_path, capsys):
    res = tmp_path / "runs"
    check(capsys, ["run"] + args + ["--results-dir", str(res)] + FAST, needle, res)


def test_malformed_manifest_yaml(tmp_path, capsys):
    y = tmp_path / "bad.yaml"
    y.write_text("name: [unclosed\n")
    check(
        capsys,
        ["run", "--strategy", "finetune", "--benchmark", str(y), "--results-dir", str(tmp_path)] + FAST,
        "not valid YAML",
        tmp_path,
    )


def test_unknown_manifest_key(tmp_path, capsys):
    y = tmp_path / "bad.yaml"
    y.write_text("name: x\nsplitz: a.csv\n")
    check(
        capsys,
        ["run", "--strategy", "finetune", "--benchmark", str(y), "--results-dir", str(tmp_path)] + FAST,
        "unknown key 'splitz'",
        tmp_path,
    )


def test_removed_protocol_key_metrics(tmp_path, capsys):
    """A protocol's `metrics` key was never read (every run reports every metric) and is gone."""
    y = tmp_path / "old.yaml"
    y.write_text("name: x\nprotocols:\n  p: {num_tasks: 2, memory: {per_class: 1}, metrics: cign}\n")
    check(
        capsys,
        ["run", "--strategy", "finetune", "--benchmark", str(y), "--results-dir", str(tmp_path)] + FAST,
        "unknown key 'protocols.p.metrics'",
        tmp_path,
    )


def test_results_dir_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    check(
        capsys,
        ["run", "--strategy", "finetune", "--results-dir", str(blocker / "runs")] + FAST,
        "not writable",
        tmp_path,
    )


def test_resume_from_an_older_config(tmp_path, capsys):
    old = tmp_path / "old-run"
    old.mkdir()
    (old / "config.yaml").write_text("benchmark: synth-av\nstrategy: {name: finetune}\nlearning_rate: 0.1\n")
    check(capsys, ["run", "--resume", str(old)], "does not match this version", tmp_path)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--seed", str(2**40)], "'seed' must be an integer >= 0 and <= 4294967295"),
        (["--set", f"class_order_seed={2**40}"], "'class_order_seed' must be an integer"),
    ],
)
def test_seeds_past_numpy_s_range_are_one_line(tmp_path, capsys, args, needle):
    check(capsys, ["run", "--strategy", "finetune", "--results-dir", str(tmp_path), "--quiet", *args], needle, tmp_path)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["generate", "synth-av", "--seed", "-1"], "--seed: must be an integer from 0 to 4294967295"),
        (["sweep", "--preset", "digits-av", "--dry-run", "--jobs", "-3"], "--jobs: must be an integer >= 1"),
        (["sweep", "--preset", "digits-av", "--dry-run", "--threads", "0"], "--threads: must be an integer >= 1"),
        (["generate", "avcil-features", "--visual-shape", "a,b,c"], "--visual-shape: must be T,P,D"),
        (["generate", "avcil-features", "--visual-shape", "8,0,768"], "--visual-shape: must be T,P,D"),
        (["generate", "avcil-features", "--limit-per-class", "0"], "--limit-per-class: must be an integer >= 1"),
    ],
)
def test_counts_and_seeds_of_the_command_line_are_checked(capsys, args, needle):
    with pytest.raises(SystemExit) as exc:  # argparse: its usage line and exit code 2
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "line, needle",
    [
        ("num_classes: sixteen", "'num_classes' in benchmark manifest"),
        ("protocols: [a, b]", "'protocols' in benchmark manifest"),
        ("config: [1, 2]", "'config' in benchmark manifest"),
        ("protocols: {cign: [1]}", "protocols.cign in"),
    ],
)
def test_manifest_keys_of_the_wrong_shape_are_one_line(tmp_path, capsys, line, needle):
    y = tmp_path / "bad.yaml"
    y.write_text(f"name: x\nsplits: s.csv\n{line}\n")
    check(capsys, ["check", "--benchmark", str(y)], needle, tmp_path)


def test_report_of_a_missing_results_folder_writes_nothing(tmp_path, capsys):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "index.md").write_text("the last good report")
    check(
        capsys,
        ["report", "--results-dir", str(tmp_path / "typo"), "--out", str(out), "--no-plots"],
        "no such folder",
        tmp_path,
    )
    assert (out / "index.md").read_text() == "the last good report" and [p.name for p in out.iterdir()] == ["index.md"]


@pytest.mark.parametrize("index", ["one", "1.5"])
def test_non_integer_class_index_is_one_line(tiny_clips, tmp_path, capsys, index):
    classes = pd.read_csv(tiny_clips / "classes.csv")
    classes["index"] = classes["index"].astype(object)
    classes.loc[1, "index"] = index
    classes.to_csv(tmp_path / "classes.csv", index=False)
    y = own_benchmark(tmp_path, tiny_clips)
    y.write_text(y.read_text().replace(f"classes: {tiny_clips / 'classes.csv'}", f"classes: {tmp_path / 'classes.csv'}"))
    needle = f"classes.csv: row 3: column 'index' is '{index}', not an integer"
    check(capsys, ["check", "--benchmark", str(y)], needle, tmp_path)
    check(capsys, ["run", "--strategy", "finetune", "--benchmark", str(y), "--results-dir", str(tmp_path / "r"), *FAST], needle, tmp_path)
