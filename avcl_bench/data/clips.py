"""Raw audio-visual clips: finding, decoding, spectrograms, frames and the decoded-array cache.

Two on-disk layouts are understood (see :func:`find_clip`):

* one media file per clip: ``<root>/<id>.mp4|.mkv|.webm`` or ``<root>/clips/<id>.<ext>``
  (decoded with PyAV; the first audio and the first video stream are used);
* pre-extracted frames and audio: ``<root>/frames/<id>/*.jpg`` (natural name order = time order,
  assumed evenly spaced over the clip) and ``<root>/audio/<id>.wav``.

Audio default (:class:`AudioSpec`) — the CIGN input (cign.md, "Input"): 3 s at 22050 Hz from
the clip centre. The paper's "257 x 300, 50 ms / 25 ms" is self-inconsistent; the official code
used ``scipy.signal.spectrogram(nperseg=512, noverlap=274)`` -> 257 x 276. Our default keeps 257
frequency bins (``n_fft = win_length = 512``, 23 ms) and uses ``hop_length = 240`` (10.9 ms) with
a centred STFT, which gives ``1 + 66150 // 240 = 276`` time steps: the same **257 x 276** shape as
the official code. The power spectrum is scaled like scipy's ``scaling='density'`` (one-sided
PSD) so that the official normalisation ``(log(S + 1e-7) - 0) / 12`` sees values on the same
scale; the remaining differences (Hann instead of scipy's default Tukey(0.25) window, no
per-segment mean removal, reflect-padded centred frames) are documented choices.

Decoded arrays are cached on disk by :func:`preprocess_clips` (one ``.npy`` per modality,
memory-mapped on load) in a directory keyed by a hash of the root, the ids, the specs and every
file's size and mtime. The cache directory is built under a temporary name and renamed into
place only after its ``done`` marker is written, so an interrupted run never leaves a cache that
looks valid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ClipError, ConfigError, DataError
from .arrays import (
    CachedArrays,
    DamagedCacheEntry,
    allocate_array,
    array_specs,
    discard_damaged_entry,
)

#: Media file extensions tried, in this order, for ``<root>/<id>.<ext>``.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")
#: Bumped whenever the decoding or the cache layout changes (part of the cache key).
CACHE_VERSION = 2  # 2: meta.json records each array's shape and dtype
#: From this many clips on, clips are decoded by ``min(2, cpus)`` threads.
POOL_MIN_CLIPS = 64
#: from this many clips on (and more than 2 cores) decoding runs in one process per core. Each spawned
#: worker imports torch, torchaudio, torchvision and PyAV first (10.4 s measured on a 16-core H200 host),
#: so a pool only pays off on long decodes: at 960 clips 16 processes took 12.2 s against 8.1 s for 2
#: threads; the break-even there is ~1400 clips (extrapolated), hence a margin (perf/README.md).
PROCESS_MIN_CLIPS = 5000

_WINDOWS = ("hann", "hamming")
_SCALINGS = ("density", "power")
_OFFSETS = ("centre", "start")


# ----------------------------------------------------------------------------- specs


def _spec_from_dict(cls, d: Any, what: str):
    if d is None:
        return cls()
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ConfigError(f"{what} preprocessing settings must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in fields:
            raise ConfigError(f"unknown {what} preprocessing key {key!r} (known: {', '.join(fields)})")
        default = fields[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{what}.{key} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{what}.{key} must be an integer, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, str):  # PyYAML reads 1e-7 (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(f"{what}.{key} must be a number, got {value!r}") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{what}.{key} must be a number, got {value!r}")
            value = float(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{what}.{key} must be a string, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class AudioSpec:
    """How a clip's audio becomes a ``(1, F, T)`` log spectrogram (defaults: CIGN, 257 x 276).

    ``duration`` seconds are taken from the clip centre (``offset='centre'``) or its start
    (``offset='start'``); shorter audio is padded with zeros at the end. ``F = n_fft // 2 + 1``
    and ``T = 1 + sample_rate * duration // hop_length`` (centred STFT) or
    ``1 + (samples - n_fft) // hop_length`` (``center=False``). Values are
    ``(log(S + log_eps) - mean) / std`` where ``S`` is the power spectrum, scaled as a one-sided
    power spectral density when ``scaling='density'`` (as scipy's default) or raw ``|STFT|^2``
    when ``scaling='power'``.
    """

    sample_rate: int = 22050
    duration: float = 3.0
    n_fft: int = 512
    win_length: int = 512
    hop_length: int = 240
    window: str = "hann"
    scaling: str = "density"
    center: bool = True
    log_eps: float = 1e-7
    mean: float = 0.0
    std: float = 12.0
    offset: str = "centre"

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "win_length", "hop_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"audio.{name} must be positive, got {getattr(self, name)}")
        if self.duration <= 0:
            raise ConfigError(f"audio.duration must be positive, got {self.duration}")
        if self.win_length > self.n_fft:
            raise ConfigError(f"audio.win_length ({self.win_length}) must not exceed audio.n_fft ({self.n_fft})")
        if self.window not in _WINDOWS:
            raise ConfigError(f"audio.window must be one of {_WINDOWS}, got {self.window!r}")
        if self.scaling not in _SCALINGS:
            raise ConfigError(f"audio.scaling must be one of {_SCALINGS}, got {self.scaling!r}")
        if self.offset not in _OFFSETS:
            raise ConfigError(f"audio.offset must be one of {_OFFSETS}, got {self.offset!r}")
        if self.log_eps <= 0 or self.std <= 0:
            raise ConfigError("audio.log_eps and audio.std must be positive")
        if not self.center and self.num_samples < self.n_fft:
            raise ConfigError("audio.duration is shorter than one FFT window")

    @classmethod
    def from_dict(cls, d: dict | None) -> "AudioSpec":
        """Build from a mapping; unknown keys or wrong types raise :class:`ConfigError`."""
        return _spec_from_dict(cls, d, "audio")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.duration))

    @property
    def num_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def num_steps(self) -> int:
        if self.center:
            return 1 + self.num_samples // self.hop_length
        return 1 + (self.num_samples - self.n_fft) // self.hop_length

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of :func:`log_spectrogram`'s output: ``(1, F, T)``."""
        return (1, self.num_bins, self.num_steps)


@dataclass(frozen=True)
class VisualSpec:
    """How a clip's frames become a ``(T, 3, size, size)`` uint8 tensor.

    ``num_frames = 1`` takes the centre frame; ``T > 1`` takes ``T`` frames at times
    ``(i + 0.5) * duration / T`` (uniformly spaced, the centre frame included when T is odd).
    Frames are resized so that the shorter side is ``size``, then centre-cropped.
    """

    size: int = 224
    num_frames: int = 1

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ConfigError(f"visual.size must be positive, got {self.size}")
        if self.num_frames <= 0:
            raise ConfigError(f"visual.num_frames must be positive, got {self.num_frames}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "VisualSpec":
        """Build from a mapping; unknown keys or wrong types raise :class:`ConfigError`."""
        return _spec_from_dict(cls, d, "visual")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of :func:`frames_to_tensor`'s output: ``(T, 3, S, S)``."""
        return (self.num_frames, 3, self.size, self.size)


# ----------------------------------------------------------------------------- finding


def find_clip(root: Path, clip_id: str) -> Path | None:
    """The media file (or frames directory) of ``clip_id`` under ``root``, or ``None``.

    Tried in order: ``<root>/<id>.mp4|.mkv|.webm``, ``<root>/clips/<id>.mp4|.mkv|.webm``, and
    the pre-extracted layout ``<root>/frames/<id>/`` (holding ``*.jpg``) with
    ``<root>/audio/<id>.wav``; in the last case the frames directory is returned. A frames
    directory without its wav file counts as missing.
    """
    root = Path(root)
    for base in (root, root / "clips"):
        for ext in VIDEO_EXTENSIONS:
            p = base / f"{clip_id}{ext}"
            if p.is_file():
                return p
    frames = root / "frames" / clip_id
    if frames.is_dir() and (root / "audio" / f"{clip_id}.wav").is_file():
        return frames
    return None


def _wav_for_frames_dir(frames_dir: Path) -> Path:
    return frames_dir.parent.parent / "audio" / f"{frames_dir.name}.wav"


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _list_jpgs(frames_dir: Path) -> list[Path]:
    files = [p for p in frames_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file()]
    return sorted(files, key=lambda p: _natural_key(p.name))


# ----------------------------------------------------------------------------- decoding


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # PyAV messages repeat the path ("...: '/x/y.mp4'"); the caller names the file already.
    msg = re.sub(r":\s*'[^']*'$", "", msg)
    msg = re.sub(r"^\[Errno -?\d+\]\s*", "", msg)
    return msg[:200]


def _corrupt(path: Path, reason: str) -> ClipError:
    return ClipError(f"corrupt clip {path}: {reason}")


def _crop_or_pad(wave: np.ndarray, spec: AudioSpec) -> np.ndarray:
    n = spec.num_samples
    if wave.shape[0] >= n:
        start = (wave.shape[0] - n) // 2 if spec.offset == "centre" else 0
        return np.ascontiguousarray(wave[start : start + n], dtype=np.float32)
    out = np.zeros(n, dtype=np.float32)
    out[: wave.shape[0]] = wave
    return out


def _uniform_targets(duration: float, count: int) -> np.ndarray:
    """Times (relative to the first frame) of ``count`` uniformly spaced frames."""
    return (np.arange(count) + 0.5) * (duration / count)


def _decode_audio_file(path: Path, spec: AudioSpec, what: Path) -> np.ndarray:
    """Mono float32 waveform at ``spec.sample_rate`` from any file PyAV reads (e.g. a wav)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise _corrupt(what, f"no audio stream in {path.name}")
            astream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=spec.sample_rate)
            chunks: list[np.ndarray] = []
            for frame in container.decode(astream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except ClipError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError) as exc:
        raise _corrupt(what, f"{path.name}: {_short(exc)}") from None
    if not chunks or sum(c.size for c in chunks) == 0:
        raise _corrupt(what, f"no audio samples decoded from {path.name}")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _decode_media(path: Path, audio: AudioSpec, visual: VisualSpec):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError) as exc:
        raise _corrupt(path, _short(exc)) from None
    try:
        if not container.streams.audio:
            raise _corrupt(path, "no audio stream")
        if not container.streams.video:
            raise _corrupt(path, "no video stream")
        astream = container.streams.audio[0]
        vstream = container.streams.video[0]
        # The video duration decides which frames are kept; known up front for the usual
        # containers. Without it every frame is kept (converted) and chosen at the end.
        duration = None
        if vstream.duration is not None and vstream.time_base is not None:
            duration = float(vstream.duration * vstream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        elif vstream.frames and vstream.average_rate:
            duration = float(Fraction(vstream.frames) / vstream.average_rate)
        if duration is not None and duration <= 0:
            duration = None
        rate = float(vstream.average_rate) if vstream.average_rate else 25.0

        resampler = av.AudioResampler(format="flt", layout="mono", rate=audio.sample_rate)
        chunks: list[np.ndarray] = []
        t0 = None
        n_video = 0
        targets = _uniform_targets(duration, visual.num_frames) if duration else None
        best: list[tuple[float, Any]] = [(float("inf"), None)] * visual.num_frames
        all_frames: list[tuple[float, np.ndarray]] = []
        video_done = False  # every target frame chosen: later video packets are skipped
        for packet in container.demux(astream, vstream):
            is_audio = packet.stream.type == "audio"
            if video_done and not is_audio:
                continue
            for frame in packet.decode():
                if is_audio:
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1))
                    continue
                t = frame.time if frame.time is not None else n_video / rate
                n_video += 1
                if t0 is None:
                    t0 = t
                rel = t - t0
                if targets is None:
                    all_frames.append((rel, frame.to_ndarray(format="rgb24")))
                    continue
                for k, target in enumerate(targets):
                    d = abs(rel - target)
                    if d < best[k][0]:
                        best[k] = (d, frame)
                # Frames come out in presentation order: later ones are farther from every target.
                video_done = rel >= targets[-1]
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))

        if n_video == 0:
            raise _corrupt(path, "zero video frames decoded")
        if not chunks or sum(c.size for c in chunks) == 0:
            raise _corrupt(path, "no audio samples decoded")
        if targets is None:
            times = np.array([t for t, _ in all_frames])
            span = times.max() + (1.0 / rate)
            picks = [int(np.argmin(np.abs(times - tt))) for tt in _uniform_targets(span, visual.num_frames)]
            frames = np.stack([all_frames[i][1] for i in picks])
        else:
            frames = np.stack([f.to_ndarray(format="rgb24") for _, f in best])
    except ClipError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError) as exc:
        raise _corrupt(path, _short(exc)) from None
    finally:
        container.close()
    wave = np.concatenate(chunks).astype(np.float32, copy=False)
    return wave, frames


def _read_jpeg(jpg: Path, clip: Path) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` from a jpg (Pillow, a torchvision dependency)."""
    from PIL import Image

    try:
        with Image.open(jpg) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise _corrupt(clip, f"frame {jpg.name}: {_short(exc)}") from None


def _decode_frames_dir(frames_dir: Path, audio: AudioSpec, visual: VisualSpec):
    wav = _wav_for_frames_dir(frames_dir)
    if not wav.is_file():
        raise ClipError(f"corrupt clip {frames_dir}: missing audio file {wav}")
    try:
        jpgs = _list_jpgs(frames_dir)
    except OSError as exc:
        raise _corrupt(frames_dir, _short(exc)) from None
    if not jpgs:
        raise _corrupt(frames_dir, "zero frames (no .jpg files)")
    wave = _decode_audio_file(wav, audio, frames_dir)
    n = len(jpgs)
    picks = [min(n - 1, int((k + 0.5) * n / visual.num_frames)) for k in range(visual.num_frames)]
    decoded: dict[int, np.ndarray] = {}
    frames = []
    for i in picks:
        if i not in decoded:
            decoded[i] = _read_jpeg(jpgs[i], frames_dir)
        frames.append(decoded[i])
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise _corrupt(frames_dir, f"frames have different sizes {sorted(shapes)}")
    return wave, np.stack(frames)


def decode_clip(
    path: Path, audio: AudioSpec | None = None, visual: VisualSpec | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one clip (a media file or a frames directory from :func:`find_clip`).

    Returns ``(waveform, frames)``: float32 mono audio of exactly ``audio.num_samples`` samples
    at ``audio.sample_rate`` (cut around the clip centre or from its start, zero-padded at the
    end when shorter), and uint8 RGB frames ``(visual.num_frames, H, W, 3)`` at full resolution.
    Raises :class:`ClipError` (``corrupt clip <path>: <reason>``) for an unreadable, corrupt or
    truncated file, a missing audio or video stream, or zero decoded frames.
    """
    audio = audio or AudioSpec()
    visual = visual or VisualSpec()
    path = Path(path)
    if path.is_dir():
        wave, frames = _decode_frames_dir(path, audio, visual)
    elif path.is_file():
        wave, frames = _decode_media(path, audio, visual)
    else:
        raise ClipError(f"clip file {path} does not exist")
    if not np.isfinite(wave).all():
        raise _corrupt(path, "audio contains NaN or infinite samples")
    if wave.size and not np.any(wave):
        # A silent track gives a constant log spectrogram: no audio information, usually a
        # broken download. Reported like a corrupt clip (--allow-missing does not skip it).
        raise _corrupt(path, "audio track is entirely silent")
    return _crop_or_pad(wave, audio), frames


# ----------------------------------------------------------------------------- transforms


@functools.lru_cache(maxsize=8)
def _spectrogram_transform(n_fft: int, win_length: int, hop_length: int, window: str, center: bool):
    import torch
    import torchaudio

    window_fn = {"hann": torch.hann_window, "hamming": torch.hamming_window}[window]
    return torchaudio.transforms.Spectrogram(
        n_fft=n_fft,
        win_length=win_length,
        hop_length=hop_length,
        window_fn=window_fn,
        power=2.0,
        center=center,
        pad_mode="reflect",
    )


@functools.lru_cache(maxsize=8)
def _density_scale(spec: AudioSpec):
    """Per-bin factor turning ``|STFT|^2`` into a one-sided PSD (scipy ``scaling='density'``)."""
    import torch

    transform = _spectrogram_transform(spec.n_fft, spec.win_length, spec.hop_length, spec.window, spec.center)
    win = transform.window
    scale = torch.full((spec.num_bins, 1), 1.0 / (spec.sample_rate * float((win**2).sum())))
    last = spec.num_bins - 1 if spec.n_fft % 2 == 0 else spec.num_bins
    scale[1:last] *= 2.0
    return scale


def log_spectrogram(waveform, spec: AudioSpec | None = None):
    """Normalised log power spectrogram ``(1, F, T)`` (float32 tensor) of a mono waveform.

    The torchaudio transform is created once per spec and reused.
    """
    import torch

    spec = spec or AudioSpec()
    x = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).reshape(1, -1)
    if not spec.center and x.shape[-1] < spec.n_fft:
        x = torch.nn.functional.pad(x, (0, spec.n_fft - x.shape[-1]))
    transform = _spectrogram_transform(spec.n_fft, spec.win_length, spec.hop_length, spec.window, spec.center)
    with torch.no_grad():
        s = transform(x)
        if spec.scaling == "density":
            s = s * _density_scale(spec)
        s = (torch.log(s + spec.log_eps) - spec.mean) / spec.std
    return s


def frames_to_tensor(frames: np.ndarray, spec: VisualSpec | None = None):
    """uint8 ``(T, H, W, 3)`` frames -> uint8 tensor ``(T, 3, S, S)``.

    The shorter side is resized to ``S`` (bilinear, antialiased), then the centre is cropped.
    """
    import torch
    from torchvision.transforms.v2 import functional as TF

    spec = spec or VisualSpec()
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8)).permute(0, 3, 1, 2)
    x = TF.resize(x, [spec.size], antialias=True)
    x = TF.center_crop(x, [spec.size, spec.size])
    return x.contiguous()


# ----------------------------------------------------------------------------- cache


class ClipArrays(CachedArrays):
    """Decoded clips, memory-mapped from the cache.

    ``audio``: float16 ``(N, 1, F, T)`` log spectrograms; ``visual``: uint8 ``(N, T, 3, S, S)``;
    ``ids``: the ``N`` clip ids in array order (the requested order, missing ones dropped);
    ``missing``: requested ids with no clip under the root.
    """


def _fingerprint(path: Path) -> list:
    if path.is_dir():
        jpgs = _list_jpgs(path)
        stats = [p.stat() for p in jpgs]
        wav = _wav_for_frames_dir(path).stat()
        return [
            "frames",
            len(jpgs),
            sum(s.st_size for s in stats),
            max((s.st_mtime_ns for s in stats), default=0),
            wav.st_size,
            wav.st_mtime_ns,
        ]
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_tmp(base: Path, key: str) -> None:
    """Remove temporary build directories of ``key`` left by processes that no longer run."""
    for tmp in base.glob(f".{key}.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _new_tmp_dir(base: Path, key: str) -> Path:
    tmp = base / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(base, key)
        tmp.mkdir()
    except OSError as exc:
        raise DataError(f"cannot create the cache directory {base}: {exc.strerror or exc}") from None
    return tmp


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished build directory (``done`` already inside) into place."""
    if final.exists() and not (final / "done").exists():
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        # Another process published the same key meanwhile: keep theirs.
        if (final / "done").exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _process_one(path: str, audio: AudioSpec, visual: VisualSpec):
    wave, frames = decode_clip(Path(path), audio, visual)
    spec = log_spectrogram(wave, audio).numpy()
    if spec.shape != audio.shape:
        raise _corrupt(Path(path), f"spectrogram shape {spec.shape}, expected {audio.shape}")
    with np.errstate(over="ignore"):
        spec = spec.astype(np.float16)
    if not np.isfinite(spec).all():  # a NaN in the cache would train a model on garbage, silently
        raise _corrupt(Path(path), "its log spectrogram has NaN or infinite values")
    return spec, frames_to_tensor(frames, visual).numpy()


def threaded_map(fn, items, workers: int):
    """``map(fn, items)`` in order on ``workers`` threads, with a bounded number in flight.

    On an exception (or when the consumer stops), queued calls are cancelled instead of run.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    it = iter(items)
    pool = ThreadPoolExecutor(workers)
    pending: deque = deque()
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _torch_single_thread():
    """One torch intra-op thread while decoding (restored afterwards).

    The per-clip STFTs and resizes are small: torch's thread pool only slows them down, badly so
    on a busy machine; parallelism comes from the decoding threads instead.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _decode_into(present, audio, visual, a_arr, v_arr, workers: int, progress: bool, executor: str = "threads") -> None:
    """Decode ``present`` into rows of ``a_arr`` / ``v_arr`` (memory maps of ``.npy`` files).

    ``threads``: PyAV and torch release the GIL in their kernels, but the per-clip Python work does
    not, so threads stop scaling at about 2 (perf/README.md, decoding). ``processes``: spawned
    workers each open the two ``.npy`` files themselves and write their rows in place (no arrays are
    pickled back); used for many clips on many cores."""
    from tqdm import tqdm

    with tqdm(total=len(present), disable=not progress, desc="decoding clips", unit="clip") as bar:
        if workers <= 1:
            for k, (_, path) in enumerate(present):
                a_arr[k], v_arr[k] = _process_one(str(path), audio, visual)
                bar.update(1)
            return
        if executor == "processes":
            try:
                _decode_in_processes(present, audio, visual, a_arr, v_arr, workers, bar)
                return
            except _WorkersUnavailable as exc:
                # e.g. a caller's script without an `if __name__ == "__main__"` guard, which spawned
                # workers re-import: decode with threads instead
                import warnings

                warnings.warn(f"decoding processes unavailable ({exc}); decoding with {workers} threads", stacklevel=2)
                bar.reset()

        def job(k: int):
            return _process_one(str(present[k][1]), audio, visual)

        for k, (a, v) in enumerate(threaded_map(job, range(len(present)), workers)):
            a_arr[k], v_arr[k] = a, v
            bar.update(1)


class _WorkersUnavailable(Exception):
    """The process pool could not start or run its workers (not a problem with a clip)."""


#: a decoding worker process's memory maps and specs (set once per process by its initializer)
_WORKER_STATE: dict = {}

#: clips per task sent to a decoding process (amortises the task round trip)
_PROCESS_CHUNK = 16


def _init_decode_worker(audio_path: str, visual_path: str, audio, visual) -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker: the parallelism is the workers
    _WORKER_STATE.update(
        audio_rows=np.load(audio_path, mmap_mode="r+"),
        visual_rows=np.load(visual_path, mmap_mode="r+"),
        audio=audio,
        visual=visual,
    )


def _decode_rows_in_worker(rows: list[tuple[int, str]]) -> int:
    st = _WORKER_STATE
    for k, path in rows:
        st["audio_rows"][k], st["visual_rows"][k] = _process_one(path, st["audio"], st["visual"])
    st["audio_rows"].flush()
    st["visual_rows"].flush()
    return len(rows)


def _decode_in_processes(present, audio, visual, a_arr, v_arr, workers: int, bar) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    a_arr.flush()  # the headers and reserved blocks are on disk before the workers map the files
    v_arr.flush()
    rows = [(k, str(path)) for k, (_, path) in enumerate(present)]
    chunks = [rows[i : i + _PROCESS_CHUNK] for i in range(0, len(rows), _PROCESS_CHUNK)]
    # spawn, not fork: a forked child of a process that has used torch's OpenMP pool can hang
    ctx = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_init_decode_worker,
            initargs=(a_arr.filename, v_arr.filename, audio, visual),
        ) as pool:
            pending = {pool.submit(_decode_rows_in_worker, chunk) for chunk in chunks}
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    if fut.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise fut.exception()
                    bar.update(fut.result())
    except BrokenProcessPool as exc:
        raise _WorkersUnavailable(str(exc) or type(exc).__name__) from None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_plan(n_clips: int, workers: int | None = None, executor: str | None = None) -> tuple[int, str]:
    """(workers, 'threads' | 'processes') for decoding ``n_clips``.

    Measured (perf/README.md, decoding): threads stop scaling at 2 (the per-clip Python work holds
    the GIL), processes scale with the cores but cost a start-up of about a second each (importing
    torch), so: one worker for a few clips; up to 2 threads on 2 cores or for fewer than
    ``PROCESS_MIN_CLIPS`` clips; otherwise one process per core."""
    if executor not in (None, "threads", "processes"):
        raise ConfigError(f"unknown decoding executor {executor!r} (known: threads, processes)")
    cores = usable_cores()
    if workers is None:
        if n_clips < POOL_MIN_CLIPS:
            workers = 1
        elif executor == "processes" or (executor is None and cores > 2 and n_clips >= PROCESS_MIN_CLIPS):
            workers = cores
        else:
            workers = min(2, cores)
    if executor is None:
        executor = "processes" if workers > 2 else "threads"
    return max(1, int(workers)), executor


def preprocess_clips(
    root: Path,
    ids: Sequence[str],
    audio: AudioSpec | None = None,
    visual: VisualSpec | None = None,
    cache_dir: Path | None = None,
    allow_missing: bool = False,
    progress: bool = True,
    workers: int | None = None,
    executor: str | None = None,
) -> ClipArrays:
    """Decode every clip once into a memory-mapped on-disk cache and return the arrays.

    The cache lives in ``cache_dir`` (default ``paths.cache_dir() / 'clips'``) under a key hashing
    the resolved root, the ids, both specs and each clip's size and mtime; a later call with the
    same inputs loads the ``.npy`` files with ``mmap_mode='r'`` and decodes nothing. Missing
    clips raise :class:`DataError` unless ``allow_missing`` (then they are skipped and listed in
    ``ClipArrays.missing``). A corrupt clip raises :class:`ClipError` naming its file.
    ``workers`` / ``executor``: see :func:`decode_plan` (default: every core, in processes, for
    ``PROCESS_MIN_CLIPS`` clips or more on more than 2 cores).
    """
    from ..paths import cache_dir as default_cache_dir

    audio = audio or AudioSpec()
    visual = visual or VisualSpec()
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"clip root {root} does not exist or is not a directory")
    ids = [str(i) for i in ids]
    located = [(i, find_clip(root, i)) for i in ids]
    present = [(i, p) for i, p in located if p is not None]
    missing = [i for i, p in located if p is None]
    if missing and not allow_missing:
        first = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} of {len(ids)} clips listed in the manifest are missing under {root} "
            f"(first: {first}); pass --allow-missing to skip them"
        )
    if not present:
        raise DataError(f"none of the {len(ids)} clips listed in the manifest were found under {root}")

    try:
        fingerprints = [_fingerprint(p) for _, p in present]
    except OSError as exc:
        raise DataError(f"cannot read clips under {root}: {_short(exc)}") from None
    payload = {
        "version": CACHE_VERSION,
        "root": str(root.resolve()),
        "ids": ids,
        "files": fingerprints,
        "audio": audio.to_dict(),
        "visual": visual.to_dict(),
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "clips"
    final = base / key
    if (final / "done").is_file():
        try:
            return ClipArrays.open(final)
        except DamagedCacheEntry as exc:
            discard_damaged_entry(final, exc)  # and decode again below

    tmp = _new_tmp_dir(base, key)
    try:
        n = len(present)
        a_arr = allocate_array(tmp / "audio.npy", np.float16, (n, *audio.shape))
        v_arr = allocate_array(tmp / "visual.npy", np.uint8, (n, *visual.shape))
        workers, executor = decode_plan(n, workers, executor)
        with _torch_single_thread():
            _decode_into(present, audio, visual, a_arr, v_arr, workers, progress, executor)
        a_arr.flush()
        v_arr.flush()
        specs = array_specs(audio=a_arr, visual=v_arr)
        del a_arr, v_arr
        meta = {"ids": [i for i, _ in present], "missing": missing, "key": payload, "arrays": specs}
        _write_text_atomic(tmp / "meta.json", json.dumps(meta))
        _write_text_atomic(tmp / "done", "ok\n")
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ClipArrays.open(final)


__all__ = [
    "AudioSpec",
    "VisualSpec",
    "ClipArrays",
    "find_clip",
    "decode_clip",
    "log_spectrogram",
    "frames_to_tensor",
    "preprocess_clips",
    "VIDEO_EXTENSIONS",
]
