"""Raw clips: finding, decoding, spectrograms, frames, the decoded-array cache and its errors."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from avcl_bench.data import clips as C
from avcl_bench.data.clips import (
    AudioSpec,
    ClipArrays,
    VisualSpec,
    decode_clip,
    find_clip,
    frames_to_tensor,
    log_spectrogram,
    preprocess_clips,
)
from avcl_bench.errors import ClipError, ConfigError, DataError

FPS, NFRAMES, SR, SECONDS = 8, 16, 16000, 2.0
SMALL_AUDIO = AudioSpec(sample_rate=16000, duration=1.0, n_fft=256, win_length=256, hop_length=128)
SMALL_VISUAL = VisualSpec(size=32)


def _frames(n=NFRAMES, h=48, w=64) -> np.ndarray:
    """Frame i is uniformly grey with level 10 * i + 20 (so its index can be read back)."""
    return np.stack([np.full((h, w, 3), 10 * i + 20, np.uint8) for i in range(n)])


def _sine(freq=440.0, sr=SR, seconds=SECONDS) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_clip(path: Path, frames=None, audio=True, video=True, freq=440.0) -> Path:
    """A small H.264 (+ AAC) file written with PyAV."""
    frames = _frames() if frames is None else frames
    with av.open(str(path), "w", format="mp4" if path.suffix == ".mp4" else None) as c:
        if video:
            vs = c.add_stream("libx264", rate=FPS)
            vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            vs.options = {"crf": "10", "threads": "1"}
        if audio:
            a = c.add_stream("aac", rate=SR)
            a.layout = "mono"
        if video:
            for i, img in enumerate(frames):
                f = av.VideoFrame.from_ndarray(img, format="rgb24")
                f.pts = i
                for p in vs.encode(f):
                    c.mux(p)
            for p in vs.encode():
                c.mux(p)
        if audio:
            af = av.AudioFrame.from_ndarray(_sine(freq)[None], format="fltp", layout="mono")
            af.sample_rate, af.pts = SR, 0
            for p in a.encode(af):
                c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def write_frames_layout(root: Path, clip_id: str, n=10, sr=SR, seconds=SECONDS) -> Path:
    """``root/frames/<id>/frame_<k>.jpg`` (unpadded names: natural order matters) + ``root/audio/<id>.wav``."""
    from PIL import Image

    d = root / "frames" / clip_id
    d.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((40, 60, 3), 20 * i + 10, np.uint8)).save(d / f"frame_{i + 1}.jpg", quality=95)
    (root / "audio").mkdir(exist_ok=True)
    pcm = (_sine(sr=sr, seconds=seconds) * 32767).astype("<i2")
    with wave.open(str(root / "audio" / f"{clip_id}.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return d


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    (root / "clips").mkdir()
    for k in range(4):
        write_clip(root / "clips" / f"v{k}.mp4", freq=300.0 + 200 * k)
    return root


# ----------------------------------------------------------------------------- specs


def test_default_spec_gives_257_by_276():
    spec = AudioSpec()
    assert (spec.sample_rate, spec.duration, spec.n_fft, spec.hop_length) == (22050, 3.0, 512, 240)
    assert spec.shape == (1, 257, 276)
    out = log_spectrogram(np.zeros(spec.num_samples, np.float32), spec)
    assert tuple(out.shape) == (1, 257, 276)
    # Silence maps to log(eps) / std.
    assert np.allclose(out.numpy(), np.log(1e-7) / 12.0, atol=1e-4)


def test_spectrogram_peak_and_transform_reuse():
    spec = AudioSpec()
    t = np.arange(spec.num_samples) / spec.sample_rate
    s = log_spectrogram(np.sin(2 * np.pi * 1000 * t).astype(np.float32), spec)
    peak_bin = int(s[0].mean(1).argmax())
    assert abs(peak_bin * spec.sample_rate / spec.n_fft - 1000) < spec.sample_rate / spec.n_fft
    a = C._spectrogram_transform(512, 512, 240, "hann", True)
    assert C._spectrogram_transform(512, 512, 240, "hann", True) is a


def test_spec_dicts():
    spec = AudioSpec.from_dict(
        {"sample_rate": 16000, "duration": 2, "n_fft": 256, "win_length": 256, "hop_length": 128}
    )
    assert spec.duration == 2.0 and spec.shape == (1, 129, 251)
    assert AudioSpec.from_dict(spec.to_dict()) == spec
    assert VisualSpec.from_dict({"size": 64}).to_dict() == {"size": 64, "num_frames": 1}
    with pytest.raises(ConfigError, match="hopp_length"):
        AudioSpec.from_dict({"hopp_length": 10})
    with pytest.raises(ConfigError, match="frames"):
        VisualSpec.from_dict({"frames": 2})
    with pytest.raises(ConfigError, match="n_fft"):
        AudioSpec.from_dict({"n_fft": "big"})
    assert AudioSpec.from_dict({"log_eps": "1e-6"}).log_eps == 1e-6  # YAML 1.1 reads 1e-6 as a string
    with pytest.raises(ConfigError, match="std"):
        AudioSpec.from_dict({"std": "wide"})
    with pytest.raises(ConfigError, match="offset"):
        AudioSpec(offset="middle")


# ----------------------------------------------------------------------------- decoding


def test_decode_mp4_shapes_and_frame_choice(clip_root):
    path = find_clip(clip_root, "v0")
    assert path == clip_root / "clips" / "v0.mp4"
    wave_, frames = decode_clip(path, AudioSpec(), VisualSpec())
    assert wave_.dtype == np.float32 and wave_.shape == (66150,)  # resampled to 22050 Hz, padded to 3 s
    assert np.abs(wave_[-1000:]).max() == 0  # 2 s clip: zero padding at the end
    assert frames.dtype == np.uint8 and frames.shape == (1, 48, 64, 3)
    assert abs(int(frames[0].mean()) - (10 * 8 + 20)) <= 3  # centre frame of 16 = index 8
    _, frames4 = decode_clip(path, SMALL_AUDIO, VisualSpec(num_frames=4))
    levels = [round((int(f.mean()) - 20) / 10) for f in frames4]
    assert levels == [2, 6, 10, 14]  # (i + 0.5) * 16 / 4
    t = frames_to_tensor(frames4, VisualSpec(size=32))
    assert tuple(t.shape) == (4, 3, 32, 32) and str(t.dtype) == "torch.uint8"


def test_resampled_audio_keeps_pitch(clip_root):
    spec = AudioSpec(sample_rate=22050, duration=1.0)
    w, _ = decode_clip(clip_root / "clips" / "v0.mp4", spec, VisualSpec())  # 300 Hz
    freqs = np.fft.rfftfreq(w.size, 1 / spec.sample_rate)
    assert abs(freqs[np.abs(np.fft.rfft(w)).argmax()] - 300) < 3


def test_frames_to_tensor_resizes_shorter_side_then_crops():
    frames = np.zeros((1, 40, 80, 3), np.uint8)
    frames[:, :, :12] = 255  # inside the left quarter, which the centre crop cuts away
    out = frames_to_tensor(frames, VisualSpec(size=20)).numpy()
    assert out.shape == (1, 3, 20, 20) and out.max() == 0


def test_find_clip_layouts(tmp_path):
    write_clip(tmp_path / "a.mp4")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "b.webm").write_bytes(b"x")
    write_frames_layout(tmp_path, "c")
    (tmp_path / "frames" / "d").mkdir()  # frames without a wav: missing
    assert find_clip(tmp_path, "a") == tmp_path / "a.mp4"
    assert find_clip(tmp_path, "b") == tmp_path / "clips" / "b.webm"
    assert find_clip(tmp_path, "c") == tmp_path / "frames" / "c"
    assert find_clip(tmp_path, "d") is None
    assert find_clip(tmp_path, "zzz") is None


def test_frames_and_wav_layout(tmp_path):
    write_frames_layout(tmp_path, "c", n=10)
    w, frames = decode_clip(find_clip(tmp_path, "c"), AudioSpec(), VisualSpec())
    assert w.shape == (66150,) and np.abs(w).max() > 0.3
    assert frames.shape == (1, 40, 60, 3)
    assert abs(int(frames.mean()) - (20 * 5 + 10)) <= 3  # centre of 10 = frame_6 (natural order)
    _, f2 = decode_clip(tmp_path / "frames" / "c", SMALL_AUDIO, VisualSpec(num_frames=2))
    assert [round((int(f.mean()) - 10) / 20) for f in f2] == [2, 7]


def test_corrupt_clips_raise_clip_error(tmp_path, clip_root):
    rnd = tmp_path / "random.mp4"
    rnd.write_bytes(np.random.default_rng(0).bytes(4000))
    data = (clip_root / "clips" / "v0.mp4").read_bytes()
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for p in (rnd, trunc, empty):
        with pytest.raises(ClipError, match=f"corrupt clip {p}"):
            decode_clip(p, SMALL_AUDIO, SMALL_VISUAL)
    with pytest.raises(ClipError, match="does not exist"):
        decode_clip(tmp_path / "nope.mp4", SMALL_AUDIO, SMALL_VISUAL)


def test_missing_streams(tmp_path):
    silent = write_clip(tmp_path / "silent.mp4", audio=False)
    with pytest.raises(ClipError, match=r"silent\.mp4: no audio stream"):
        decode_clip(silent, SMALL_AUDIO, SMALL_VISUAL)
    blind = write_clip(tmp_path / "blind.mp4", video=False)
    with pytest.raises(ClipError, match=r"blind\.mp4: no video stream"):
        decode_clip(blind, SMALL_AUDIO, SMALL_VISUAL)


def test_corrupt_frames_layout(tmp_path):
    d = write_frames_layout(tmp_path, "c", n=3)
    (d / "frame_2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ClipError, match=r"frame_2\.jpg"):
        decode_clip(d, SMALL_AUDIO, SMALL_VISUAL)
    for f in d.iterdir():
        f.unlink()
    with pytest.raises(ClipError, match="zero frames"):
        decode_clip(d, SMALL_AUDIO, SMALL_VISUAL)
    write_frames_layout(tmp_path, "e", n=3)
    (tmp_path / "audio" / "e.wav").write_bytes(b"RIFF garbage")
    with pytest.raises(ClipError, match=r"e\.wav"):
        decode_clip(tmp_path / "frames" / "e", SMALL_AUDIO, SMALL_VISUAL)


# ----------------------------------------------------------------------------- cache


def test_missing_ids(clip_root, tmp_path):
    ids = ["v0", "gone1", "v1", "gone2", "v2"]
    with pytest.raises(
        DataError,
        match=r"2 of 5 clips listed in the manifest are missing under .*"
        r"\(first: gone1, gone2\); pass --allow-missing",
    ):
        preprocess_clips(clip_root, ids, SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path, progress=False)
    arr = preprocess_clips(
        clip_root, ids, SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path, allow_missing=True, progress=False
    )
    assert arr.ids == ["v0", "v1", "v2"] and arr.missing == ["gone1", "gone2"]
    assert arr.audio.shape == (3, 1, 129, 126) and arr.visual.shape == (3, 1, 3, 32, 32)
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match="cannot create the cache directory"):
        preprocess_clips(clip_root, ["v0"], SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path / "afile" / "c")
    with pytest.raises(DataError, match="clip root"):
        preprocess_clips(clip_root / "nowhere", ids, SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path)


def test_cache_reused_without_decoding(clip_root, tmp_path, monkeypatch):
    ids = ["v0", "v1", "v2", "v3"]
    first = preprocess_clips(clip_root, ids, SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path, progress=False)
    assert isinstance(first, ClipArrays) and len(first) == 4
    assert first.audio.dtype == np.float16 and first.visual.dtype == np.uint8
    assert isinstance(first.audio, np.memmap) and isinstance(first.visual, np.memmap)
    # Rows follow the ids: v0..v3 are 300, 500, 700, 900 Hz tones.
    peaks = [int(np.asarray(first.audio[k, 0], np.float32).mean(1).argmax()) for k in range(4)]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(C, "decode_clip", boom)
    second = preprocess_clips(clip_root, ids, SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path, progress=False)
    assert second.cache_path == first.cache_path
    np.testing.assert_array_equal(second.audio, first.audio)
    np.testing.assert_array_equal(second.visual, first.visual)
    # A different spec is a different cache entry (and would decode).
    with pytest.raises(AssertionError, match="decoded again"):
        preprocess_clips(clip_root, ids, SMALL_AUDIO, VisualSpec(size=16), cache_dir=tmp_path, progress=False)
    # No half-built directory is left behind by the failure.
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_interrupted_cache_is_rebuilt(clip_root, tmp_path, monkeypatch):
    ids = ["v0", "v1"]
    first = preprocess_clips(clip_root, ids, SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path, progress=False)
    reference = np.array(first.audio), np.array(first.visual)
    (first.cache_path / "done").unlink()  # as if interrupted before the marker
    (first.cache_path / "visual.npy").write_bytes(b"partial")
    calls = []
    real = C.decode_clip
    monkeypatch.setattr(C, "decode_clip", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = preprocess_clips(clip_root, ids, SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path, progress=False)
    assert len(calls) == 2 and (again.cache_path / "done").is_file()
    np.testing.assert_array_equal(again.audio, reference[0])
    np.testing.assert_array_equal(again.visual, reference[1])


def test_changed_file_invalidates_cache(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    write_clip(root / "a.mp4", freq=300.0)
    first = preprocess_clips(root, ["a"], SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path / "c", progress=False)
    write_clip(root / "a.mp4", freq=2000.0)
    st = (root / "a.mp4").stat()
    os.utime(root / "a.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = preprocess_clips(root, ["a"], SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path / "c", progress=False)
    assert second.cache_path != first.cache_path
    assert not np.array_equal(np.asarray(second.audio), np.asarray(first.audio))


def test_threaded_decoding_matches_sequential(clip_root, tmp_path):
    ids = ["v0", "v1", "v2", "v3"]
    seq = preprocess_clips(
        clip_root, ids, SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path / "a", progress=False, workers=1
    )
    par = preprocess_clips(
        clip_root, ids, SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path / "b", progress=False, workers=2
    )
    np.testing.assert_array_equal(seq.audio, par.audio)
    np.testing.assert_array_equal(seq.visual, par.visual)


def test_corrupt_clip_during_preprocessing(clip_root, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "bad.mp4").write_bytes(b"\x00" * 100)
    write_clip(root / "good.mp4")
    with pytest.raises(ClipError, match=r"corrupt clip .*bad\.mp4"):
        preprocess_clips(root, ["good", "bad"], SMALL_AUDIO, SMALL_VISUAL, cache_dir=tmp_path / "c", progress=False)
    assert not any((tmp_path / "c").iterdir())


@pytest.mark.slow
def test_decoding_in_processes_gives_the_threads_arrays(tmp_path):
    """The process pool (many cores) writes the same rows as threads and as one worker."""
    from avcl_bench.data.clips import AudioSpec, VisualSpec, preprocess_clips
    from avcl_bench.data.synth import generate_synth_av

    root = generate_synth_av(None, size="tiny", seed=0, progress=False)
    ids = sorted(p.stem for p in (root / "clips").iterdir())[:40]
    audio = AudioSpec(sample_rate=16000, duration=2.0, n_fft=256, win_length=256, hop_length=256)
    visual = VisualSpec(size=64)
    results = [
        preprocess_clips(
            root / "clips", ids, audio, visual, cache_dir=tmp_path / name, progress=False, workers=w, executor=e
        )
        for name, w, e in (("one", 1, "threads"), ("threads", 2, "threads"), ("processes", 2, "processes"))
    ]
    for other in results[1:]:
        assert other.ids == results[0].ids
        assert np.array_equal(other.audio, results[0].audio) and np.array_equal(other.visual, results[0].visual)
