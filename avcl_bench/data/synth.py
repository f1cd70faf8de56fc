"""``synth-av``: the embedded audio-visual class-incremental benchmark, generated on demand.

Every clip is a real, playable mp4 (H.264 video + AAC audio, written with PyAV), so the whole
raw-clip path (decode -> spectrogram -> frames -> cache) runs on it exactly as on real data.

Class design
------------
Each class has an *audio signature* (pitch, harmonic profile, amplitude-modulation rate, noise
band) and a *visual signature* (shape, colour, texture, motion). Classes come in blocks of four:

* classes ``4b`` and ``4b+1`` share their audio signature (ambiguous from audio alone, told
  apart by vision);
* classes ``4b+2`` and ``4b+3`` share their visual signature (ambiguous from vision alone, told
  apart by audio).

So a perfect audio-only or visual-only classifier reaches at most 75 % accuracy while the
audio-visual one can reach 100 %. Every clip varies randomly around its class signature (pitch
jitter, harmonic weights, modulation depth/phase, onset, gain, background noise; object size,
position, motion phase, colour jitter, background colour, a distractor blob, pixel noise).

Everything is deterministic from ``seed``: each clip has its own random stream
(``SeedSequence([seed, clip_number])``) so the result does not depend on the number of worker
threads, and the encoders are run single-threaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .clipset import MARKER, POOL_MIN_CLIPS, build_clip_set, clip_set_complete

#: Bumped when the generated content changes; stored in ``generation.json``.
SYNTH_VERSION = 1

#: Benchmark sizes. ``clips`` = clips per class and split.
SYNTH_SIZES: dict[str, dict] = {
    "default": {
        "num_classes": 16,
        "clips": {"train": 40, "val": 8, "test": 12},
        "duration": 2.0,
        "fps": 8,
        "resolution": 64,
        "sample_rate": 16000,
    },
    "tiny": {
        "num_classes": 8,
        "clips": {"train": 10, "val": 3, "test": 4},
        "duration": 2.0,
        "fps": 8,
        "resolution": 64,
        "sample_rate": 16000,
    },
}
SPLITS = ("train", "val", "test")

# ---------------------------------------------------------------- signature vocabularies
PITCHES = [("G3", 196.0), ("C4", 261.6), ("F4", 349.2), ("As4", 466.2), ("Ds5", 622.3), ("Gs5", 830.6)]
# Harmonic amplitude profiles (harmonic 1..8).
TIMBRES = {
    "pure": [1.0, 0.12, 0.03, 0, 0, 0, 0, 0],
    "reedy": [1.0, 0.0, 0.55, 0.0, 0.4, 0.0, 0.28, 0.0],
    "bright": [1.0, 0.7, 0.55, 0.45, 0.38, 0.32, 0.27, 0.23],
}
AM_RATES = [("steady", 0.0), ("pulse4", 4.0), ("trill11", 11.0)]
NOISE_BANDS = [("low", 150.0, 500.0), ("mid", 1500.0, 2800.0), ("high", 4200.0, 7000.0)]
SHAPES = ["disc", "square", "triangle", "ring"]
COLOURS = {
    "red": (220, 45, 40),
    "green": (40, 200, 70),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "magenta": (205, 50, 205),
}
TEXTURES = ["solid", "stripes", "checker"]
MOTIONS = ["static", "horizontal", "vertical", "circular"]
MAX_SIGNATURES = 18  # 6 pitches x 3 timbres; 4 shapes x 5 colours


def _audio_signature(k: int) -> dict:
    # (pitch, timbre) is unique for k < 18; consecutive signatures differ in several attributes.
    pname, f0 = PITCHES[k % 6]
    timbre = list(TIMBRES)[(k + k // 6) % 3]
    am_name, am = AM_RATES[(k // 3) % 3]
    band = NOISE_BANDS[(k // 2 + k // 6) % 3]
    return {
        "name": f"{pname}-{timbre}",
        "pitch": f0,
        "timbre": timbre,
        "am": am_name,
        "am_rate": am,
        "noise_band": [band[1], band[2]],
    }


def _visual_signature(k: int) -> dict:
    # (shape, colour) is unique for k < 20.
    shape = SHAPES[k % 4]
    colour = list(COLOURS)[k % 5]
    return {
        "name": f"{colour}-{shape}",
        "shape": shape,
        "colour": colour,
        "texture": TEXTURES[(k // 2 + k // 4) % 3],
        "motion": MOTIONS[(k // 3) % 4],
    }


def synth_classes(num_classes: int) -> list[dict]:
    """The class table: index, name, audio and visual signature ids and attributes."""
    if not 1 <= num_classes <= 24:
        raise ConfigError(f"synth-av supports 1..24 classes, got {num_classes}")
    classes = []
    a_next = v_next = 0
    for c in range(num_classes):
        r = c % 4
        if r == 1:  # shares the audio signature of class c-1
            a = classes[c - 1]["audio_id"]
            v, v_next = v_next, v_next + 1
        elif r == 3:  # shares the visual signature of class c-1
            a, a_next = a_next, a_next + 1
            v = classes[c - 1]["visual_id"]
        else:
            a, a_next = a_next, a_next + 1
            v, v_next = v_next, v_next + 1
        classes.append({"index": c, "audio_id": a, "visual_id": v})
    for cl in classes:
        cl["audio"] = _audio_signature(cl["audio_id"])
        cl["visual"] = _visual_signature(cl["visual_id"])
        cl["name"] = f"{cl['audio']['name']}_{cl['visual']['name']}"
    return classes


# ---------------------------------------------------------------- rendering


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(freqs < lo) | (freqs > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / (x.std() + 1e-12)


def render_audio(cls: dict, rng: np.random.Generator, params: dict) -> np.ndarray:
    """Mono float32 waveform of one clip of class ``cls``."""
    sr, dur = params["sample_rate"], params["duration"]
    n = int(round(sr * dur))
    t = np.arange(n) / sr
    sig = cls["audio"]
    f0 = sig["pitch"] * (1.0 + rng.uniform(-0.02, 0.02))
    amps = np.array(TIMBRES[sig["timbre"]]) * rng.uniform(0.8, 1.2, size=8)
    phases = rng.uniform(0, 2 * np.pi, size=8)
    tone = np.zeros(n)
    for h in range(8):
        if amps[h] > 0 and (h + 1) * f0 < 0.45 * sr:
            tone += amps[h] * np.sin(2 * np.pi * (h + 1) * f0 * t + phases[h])
    tone /= amps.sum()
    if sig["am_rate"] > 0:
        depth = rng.uniform(0.5, 0.9)
        rate = sig["am_rate"] * rng.uniform(0.9, 1.1)
        tone *= (1 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))) / (1 + depth)
    lo, hi = sig["noise_band"]
    band = _band_noise(rng, n, sr, lo, hi) * rng.uniform(0.06, 0.15)
    on = rng.uniform(0.0, 0.25) * dur
    off = dur - rng.uniform(0.0, 0.25) * dur
    ramp = 0.01
    env = np.clip(np.minimum((t - on) / ramp, (off - t) / ramp), 0, 1)
    background = rng.standard_normal(n) * rng.uniform(0.005, 0.03)
    x = rng.uniform(0.3, 0.7) * env * (tone + band) + background
    return np.clip(x, -0.99, 0.99).astype(np.float32)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "disc":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "triangle":  # apex up (image y grows downwards)
        return (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / 1.8)
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(shape)


def render_frames(cls: dict, rng: np.random.Generator, params: dict) -> np.ndarray:
    """uint8 RGB frames ``(fps * duration, res, res, 3)`` of one clip of class ``cls``."""
    res, fps, dur = params["resolution"], params["fps"], params["duration"]
    nf = int(round(fps * dur))
    sig = cls["visual"]
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float64)
    # Background: a dim random colour with a gentle gradient.
    bg = rng.uniform(15, 90, size=3)
    grad = rng.uniform(-25, 25, size=3)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(direction) * xx + np.sin(direction) * yy) / res
    background = bg[None, None, :] + ramp[..., None] * grad[None, None, :]
    colour = np.clip(np.array(COLOURS[sig["colour"]], dtype=np.float64) + rng.uniform(-18, 18, size=3), 0, 255)
    r = res * rng.uniform(0.15, 0.22)
    cx0, cy0 = res / 2 + rng.uniform(-0.1, 0.1, size=2) * res
    amp = res * rng.uniform(0.12, 0.18)
    phase = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(0.4, 0.6)  # cycles per second
    period = max(2.0, res / 16 * rng.uniform(0.8, 1.2))
    # A grey distractor blob (half of the clips), static.
    distractor = None
    if rng.random() < 0.5:
        distractor = (
            rng.uniform(0.1, 0.9) * res,
            rng.uniform(0.1, 0.9) * res,
            res * rng.uniform(0.05, 0.09),
            rng.uniform(100, 170),
        )
    noise_sigma = rng.uniform(3, 8)
    frames = np.empty((nf, res, res, 3), dtype=np.uint8)
    for i in range(nf):
        ph = 2 * np.pi * speed * i / fps + phase
        cx, cy = cx0, cy0
        if sig["motion"] == "horizontal":
            cx += amp * np.sin(ph)
        elif sig["motion"] == "vertical":
            cy += amp * np.sin(ph)
        elif sig["motion"] == "circular":
            cx += amp * np.cos(ph)
            cy += amp * np.sin(ph)
        img = background.copy()
        if distractor is not None:
            ddx, ddy = xx - distractor[0], yy - distractor[1]
            img[ddx * ddx + ddy * ddy <= distractor[2] ** 2] = distractor[3]
        dx, dy = xx - cx, yy - cy
        mask = _shape_mask(sig["shape"], dx, dy, r)
        shade = np.ones((res, res))
        if sig["texture"] == "stripes":
            shade = np.where(np.floor((dx + dy) / period) % 2 == 0, 1.0, 0.4)
        elif sig["texture"] == "checker":
            shade = np.where((np.floor(dx / period) + np.floor(dy / period)) % 2 == 0, 1.0, 0.4)
        img[mask] = colour[None, :] * shade[mask][:, None]
        img += rng.normal(0, noise_sigma, size=img.shape)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_mp4(path: Path, frames: np.ndarray, waveform: np.ndarray, fps: int, sample_rate: int) -> None:
    """Write an H.264 + AAC mp4 (single-threaded encoders: byte-identical for equal input)."""
    import av

    h, w = frames.shape[1:3]
    with av.open(str(path), "w", format="mp4") as container:
        vs = container.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "veryfast", "tune": "zerolatency", "crf": "18", "threads": "1"}
        aus = container.add_stream("aac", rate=sample_rate)
        aus.layout = "mono"
        aus.bit_rate = 64000
        aus.options = {"aac_coder": "fast"}
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        af = av.AudioFrame.from_ndarray(waveform.reshape(1, -1), format="fltp", layout="mono")
        af.sample_rate = sample_rate
        af.pts = 0
        for packet in aus.encode(af):
            container.mux(packet)
        for packet in aus.encode():
            container.mux(packet)


def _clip_job(out_dir: Path, args) -> None:
    seed, number, clip_id, cls, params = args
    rng = np.random.default_rng(np.random.SeedSequence([seed, number]))
    wave = render_audio(cls, rng, params)
    frames = render_frames(cls, rng, params)
    write_mp4(out_dir / "clips" / f"{clip_id}.mp4", frames, wave, params["fps"], params["sample_rate"])


# ---------------------------------------------------------------- generation


def _plan(params: dict, seed: int) -> list[tuple[int, str, int, str]]:
    """(clip number, id, class, split) for every clip; ids are shuffled so they hide the class."""
    rows = [(c, split) for c in range(params["num_classes"]) for split in SPLITS for _ in range(params["clips"][split])]
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED])).permutation(len(rows))
    plan = []
    for number, (c, split) in enumerate(rows):
        plan.append((number, f"synth{int(perm[number]):05d}", c, split))
    return plan


def _generation_doc(size: str, seed: int, params: dict, classes: list[dict]) -> dict:
    import av

    pairs_a = [
        [c["index"], d["index"]]
        for c in classes
        for d in classes
        if c["index"] < d["index"] and c["audio_id"] == d["audio_id"]
    ]
    pairs_v = [
        [c["index"], d["index"]]
        for c in classes
        for d in classes
        if c["index"] < d["index"] and c["visual_id"] == d["visual_id"]
    ]
    return {
        "benchmark": "synth-av",
        "version": SYNTH_VERSION,
        "size": size,
        "seed": seed,
        "params": params,
        "counts": {s: params["num_classes"] * params["clips"][s] for s in SPLITS},
        "ambiguous_in_audio": pairs_a,
        "ambiguous_in_vision": pairs_v,
        "classes": classes,
        "encoder": {
            "video": "libx264 veryfast/zerolatency yuv420p crf 18",
            "audio": "aac (fast coder) 64 kb/s",
            "pyav": av.__version__,
        },
    }


def _matches(size: str, seed: int):
    return lambda doc: doc.get("size") == size and doc.get("seed") == seed and doc.get("version") == SYNTH_VERSION


def generate_synth_av(
    out_dir: Path | None = None,
    size: str = "default",
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Generate (or reuse) the synth-av benchmark and return its directory.

    Writes ``clips/<id>.mp4``, ``classes.csv`` (index,name), ``splits.csv`` (id,label,split;
    label = class name), ``generation.json`` (parameters, seed, class signatures) and the
    ``done`` marker (:func:`~.clipset.build_clip_set`). Default directory:
    ``cache_dir()/synth-av/<size>-seed<seed>``. A complete directory for the same
    size/seed/version is returned as is; otherwise the benchmark is built in a temporary sibling
    directory and renamed into place. ``workers``: encoding threads (default ``min(2, cpus)`` for
    more than ``POOL_MIN_CLIPS`` clips).
    """
    from ..paths import cache_dir

    if size not in SYNTH_SIZES:
        raise ConfigError(f"unknown synth-av size '{size}' (known: {', '.join(SYNTH_SIZES)})")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"synth-av seed must be an integer, got {seed!r}")
    default_location = out_dir is None
    out = (cache_dir() / "synth-av" / f"{size}-seed{seed}") if default_location else Path(out_dir).expanduser()
    matches = _matches(size, seed)
    if clip_set_complete(out, matches):
        return out
    params = json.loads(json.dumps(SYNTH_SIZES[size]))
    classes = synth_classes(params["num_classes"])
    plan = _plan(params, seed)
    return build_clip_set(
        out,
        what="synth-av",
        other="another size/seed/version",
        matches=matches,
        replace=default_location,
        jobs=[(seed, number, cid, classes[c], params) for number, cid, c, _ in plan],
        render=_clip_job,
        classes=[c["name"] for c in classes],
        rows=[(cid, classes[c]["name"], split) for _, cid, c, split in plan],
        doc=_generation_doc(size, seed, params, classes),
        progress=progress,
        workers=workers,
        desc=f"generating synth-av ({size})",
    )


__all__ = [
    "MARKER",
    "POOL_MIN_CLIPS",
    "SYNTH_SIZES",
    "generate_synth_av",
    "synth_classes",
    "render_audio",
    "render_frames",
    "write_mp4",
]
