"""``digits-av``: a spoken-and-written digits set built from material the suite does not make.

Each clip shows a real handwritten digit while a speech synthesiser says its name:

* **pictures**: scikit-learn's bundled ``load_digits`` (a copy of the test set of the UCI
  "Optical Recognition of Handwritten Digits" data, Alpaydin & Kaynak 1998, CC BY 4.0: 1797
  scans of 13 writers, 8 x 8 blocks of 0-16 ink counts). Each clip's scan is upscaled (bilinear)
  to 22-42 px and drawn in ink on a paper background with a gradient, at a random place, drifting
  a few pixels over the clip, sometimes with pencil strokes as clutter, with pixel noise. The
  scans of each class are split between train, val and test, so no scan is seen in two splits.
* **speech**: eSpeak NG (GPL-3.0-or-later, see :mod:`.espeak`) saying ``zero`` .. ``nine`` in one
  of six English accents x 16 voice variants, at a random rate, pitch and pitch range, at a
  random moment of the clip, over coloured background noise (white to brown) and sometimes mains
  hum, at 0-20 dB SNR.

Each class and split holds exactly ``round(hard_audio * n)`` clips whose speech is **buried**
(-18 to -10 dB SNR in low-passed, speech-shaped noise) or **missing** (noise only), and
``round(hard_visual * n)`` other clips whose digit is **faint** (4-10 % of its contrast, more
pixel noise) or **covered** (75-95 % of it hidden by a card); the two groups are disjoint, so
neither modality alone can name every clip while the pair can. Both fractions are parameters.

Nothing is downloaded: both materials come from installed packages (``pip install -e
".[realdata]"``). Everything is deterministic from the seed and the sizes (same library
versions): the speech is synthesised in plan order in a fresh process (:func:`.espeak.synthesize`),
every clip draws from its own random streams, and the encoders are single-threaded. The clips
are not shipped with the suite; ``avcl-bench generate digits-av --out DIR`` builds them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .clipset import build_clip_set, clip_set_complete

#: Bumped when the generated content changes; stored in ``generation.json``.
DIGITS_AV_VERSION = 1
MANIFEST_NAME = "digits-av.yaml"
CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "val", "test")
#: clips per class and split of the full set (1400 clips), the hard fractions and the clip format
DEFAULTS = {"clips": {"train": 100, "val": 20, "test": 20}, "hard_audio": 0.3, "hard_visual": 0.3}
FORMAT = {"duration": 2.0, "fps": 8, "resolution": 64, "sample_rate": 16000}
#: the protocol of the written manifest: 5 tasks x 2 classes, 10 exemplars per old class
PROTOCOL = {"num_tasks": 5, "memory": {"per_class": 10}}

#: eSpeak NG English voices (espeak-ng-data/lang/gmw) and voice variants (espeak-ng-data/voices/!v)
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "croak", "whisper",
)  # fmt: skip


# ---------------------------------------------------------------- the plan


def _check_params(clips: dict, hard_audio: float, hard_visual: float, seed: int) -> None:
    if set(clips) != set(SPLITS):
        raise ConfigError(f"digits-av clips per class need train, val and test, got {sorted(clips)}")
    for split, n in clips.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"digits-av clips per class ({split}) must be a positive integer, got {n!r}")
    for name, f in (("hard_audio", hard_audio), ("hard_visual", hard_visual)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise ConfigError(f"digits-av {name} must be a fraction in 0..1, got {f!r}")
    if hard_audio + hard_visual > 1.0:
        raise ConfigError(
            f"digits-av hard_audio + hard_visual must not exceed 1 (disjoint groups), got {hard_audio} + {hard_visual}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"digits-av seed must be a non-negative integer, got {seed!r}")


def _image_pools(targets: np.ndarray, clips: dict, seed: int) -> dict[tuple[int, str], np.ndarray]:
    """Scan indices per (class, split): each class's scans shuffled and cut in proportion to the
    requested clips, so the splits never share a scan (a pool shorter than its clips is reused)."""
    pools = {}
    total = sum(clips.values())
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(targets == c)
        idx = idx[np.random.default_rng(np.random.SeedSequence([seed, 0xD161, c])).permutation(len(idx))]
        sizes = [max(1, len(idx) * clips[s] // total) for s in SPLITS]
        start = 0
        for split, size in zip(SPLITS, sizes):
            pools[c, split] = idx[start : start + size]
            start += size
    return pools


def _plan(params: dict, targets: np.ndarray) -> list[dict]:
    """One dict per clip: number, id, class, split, condition, scan index, speech request."""
    seed, clips = params["seed"], params["clips"]
    pools = _image_pools(targets, clips, seed)
    rows = []
    for c in range(len(CLASSES)):
        for split in SPLITS:
            n = clips[split]
            n_audio = int(round(params["hard_audio"] * n))
            n_visual = min(int(round(params["hard_visual"] * n)), n - n_audio)
            conditions = (
                [("speech-buried", "speech-missing")[k % 2] for k in range(n_audio)]
                + [("digit-faint", "digit-covered")[k % 2] for k in range(n_visual)]
                + ["clear"] * (n - n_audio - n_visual)
            )
            order = np.random.default_rng(np.random.SeedSequence([seed, 0xC0DE, c, SPLITS.index(split)]))
            conditions = [conditions[i] for i in order.permutation(n)]
            pool = pools[c, split]
            for k in range(n):
                rows.append({"class": c, "split": split, "condition": conditions[k], "scan": int(pool[k % len(pool)])})
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED])).permutation(len(rows))
    for number, row in enumerate(rows):
        row["number"] = number
        row["id"] = f"digits{int(perm[number]):05d}"  # shuffled: the id hides the class
        speech_rng = _streams(seed, number)[0]
        row["speech"] = {
            "text": CLASSES[row["class"]],
            "voice": f"{ACCENTS[speech_rng.integers(len(ACCENTS))]}+{VARIANTS[speech_rng.integers(len(VARIANTS))]}",
            "rate": int(speech_rng.integers(110, 211)),  # words per minute (eSpeak's default 175)
            "pitch": int(speech_rng.integers(20, 81)),
            "range": int(speech_rng.integers(20, 91)),
            "seed": int(speech_rng.integers(1, 2**31 - 1)),
        }
    return rows


def _streams(seed: int, number: int) -> list[np.random.Generator]:
    """The clip's three independent random streams: speech parameters, sound mix, picture."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence([seed, number]).spawn(3)]


# ---------------------------------------------------------------- rendering


def _coloured_noise(rng: np.random.Generator, n: int, sr: int, slope: float, cutoff: float | None = None) -> np.ndarray:
    """Unit-RMS noise with power ~ f^-slope (0 white, 1 pink, 2 brown), optionally low-passed."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spec *= np.maximum(freqs, 20.0) ** (-slope / 2)
    if cutoff is not None:
        spec /= 1.0 + (freqs / cutoff) ** 4
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def render_audio(condition: str, speech: np.ndarray, rng: np.random.Generator, params: dict) -> np.ndarray:
    """Mono float32 waveform of one clip (``speech``: the spoken word at the clip's rate, float)."""
    sr = params["sample_rate"]
    n = int(round(sr * params["duration"]))
    slope = rng.uniform(0.0, 2.0)
    noise = _coloured_noise(rng, n, sr, slope)
    if rng.random() < 0.3:  # mains hum, 50 or 60 Hz with harmonics
        t = np.arange(n) / sr
        f0 = 50.0 if rng.random() < 0.5 else 60.0
        hum = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3))
        noise = noise + rng.uniform(0.3, 1.0) * hum / np.sqrt(np.mean(hum * hum))
        noise /= np.sqrt(np.mean(noise * noise))
    x = noise
    if condition == "speech-buried":  # speech-shaped masker: pink-to-brown, low-passed at 1-3 kHz
        x = _coloured_noise(rng, n, sr, rng.uniform(0.8, 1.5), cutoff=rng.uniform(1000.0, 3000.0))
    if condition != "speech-missing":
        word = speech[: n - int(0.1 * sr)]
        onset = int(rng.integers(int(0.05 * sr), n - len(word) - int(0.05 * sr) + 1))
        snr = rng.uniform(-18.0, -10.0) if condition == "speech-buried" else rng.uniform(0.0, 20.0)
        voiced = word[np.abs(word) > 0.05 * np.abs(word).max()]  # the word's RMS without its silences
        gain = 10 ** (snr / 20) / (np.sqrt(np.mean(voiced * voiced)) + 1e-12)
        x = x.copy()
        x[onset : onset + len(word)] += gain * word
    x = x * (rng.uniform(0.3, 0.9) / (np.abs(x).max() + 1e-12))
    return np.clip(x, -0.99, 0.99).astype(np.float32)


def _scan_alpha(scan: np.ndarray, size: int) -> np.ndarray:
    """The 8 x 8 ink counts (0-16) as a ``size x size`` ink coverage in 0..1 (bilinear upscale)."""
    from PIL import Image

    img = Image.fromarray((scan / 16.0).astype(np.float32), mode="F")
    return np.clip(np.asarray(img.resize((size, size), Image.BILINEAR)), 0.0, 1.0)


def render_frames(condition: str, scan: np.ndarray, rng: np.random.Generator, params: dict) -> np.ndarray:
    """uint8 RGB frames ``(fps * duration, res, res, 3)`` of one clip."""
    res, nf = params["resolution"], int(round(params["fps"] * params["duration"]))
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float64)
    dark = rng.random() < 0.25  # chalk on a dark board instead of ink on paper
    paper = rng.uniform(20, 70, size=3) if dark else rng.uniform(160, 245, size=3)
    ink = rng.uniform(200, 250, size=3) if dark else rng.uniform(0, 70, size=3)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(direction) * xx + np.sin(direction) * yy) / res
    background = paper[None, None, :] + ramp[..., None] * rng.uniform(-30, 30, size=3)[None, None, :]
    size = int(rng.integers(22, 43))
    alpha = _scan_alpha(scan, size)
    x0, y0 = rng.uniform(0, res - size, size=2)
    drift = rng.uniform(-4, 4, size=2)
    noise_sigma = rng.uniform(3, 10)
    strokes = []
    for _ in range(int(rng.integers(1, 4)) if rng.random() < 0.5 else 0):  # pencil clutter
        p, q = rng.uniform(0, res, size=2), rng.uniform(0, res, size=2)
        strokes.append((p, q, rng.uniform(0.25, 0.6)))
    cover = None
    if condition == "digit-faint":
        alpha = alpha * rng.uniform(0.04, 0.10)
        noise_sigma = rng.uniform(8, 14)
    elif condition == "digit-covered":  # a card over 75-95 % of the digit, from one side
        cover = (int(rng.integers(4)), rng.uniform(0.75, 0.95), rng.uniform(0, 255, size=3))
    frames = np.empty((nf, res, res, 3), dtype=np.uint8)
    for i in range(nf):
        img = background.copy()
        for p, q, strength in strokes:
            d = q - p
            t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / (d @ d + 1e-9), 0, 1)
            dist = np.hypot(xx - p[0] - t * d[0], yy - p[1] - t * d[1])
            a = strength * np.clip(1.2 - dist, 0, 1)[..., None]
            img = img * (1 - a) + ink[None, None, :] * a
        f = i / max(nf - 1, 1)
        cx, cy = int(round(x0 + drift[0] * f)), int(round(y0 + drift[1] * f))
        cx, cy = min(max(cx, 0), res - size), min(max(cy, 0), res - size)
        a = alpha[..., None]
        box = img[cy : cy + size, cx : cx + size]
        img[cy : cy + size, cx : cx + size] = box * (1 - a) + ink[None, None, :] * a
        if cover is not None:
            side, frac, colour = cover
            k = int(round(frac * size))
            if side == 0:  # from the top
                img[cy : cy + k, cx : cx + size] = colour
            elif side == 1:  # from the bottom
                img[cy + size - k : cy + size, cx : cx + size] = colour
            elif side == 2:  # from the left
                img[cy : cy + size, cx : cx + k] = colour
            else:  # from the right
                img[cy : cy + size, cx + size - k : cx + size] = colour
        img += rng.normal(0, noise_sigma, size=img.shape)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def _resample(speech: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    x = speech.astype(np.float64) / 32768.0
    return resample_poly(x, rate_out // g, rate_in // g) if rate_in != rate_out else x


def _clip_job(out_dir: Path, job) -> None:
    from .synth import write_mp4

    row, speech, speech_rate, scan, params = job
    _, mix_rng, picture_rng = _streams(params["seed"], row["number"])
    wave = render_audio(row["condition"], _resample(speech, speech_rate, params["sample_rate"]), mix_rng, params)
    frames = render_frames(row["condition"], scan, picture_rng, params)
    write_mp4(out_dir / "clips" / f"{row['id']}.mp4", frames, wave, params["fps"], params["sample_rate"])


# ---------------------------------------------------------------- generation


def manifest_text(params: dict) -> str:
    """The set's manifest YAML (``digits-av.yaml``), paths relative to its folder."""
    counts = {s: len(CLASSES) * params["clips"][s] for s in SPLITS}
    doc = {
        "name": "digits-av",
        "title": "digits-av: handwritten digit scans shown while a synthetic voice says their names",
        "source": "avcl-bench generate digits-av: scikit-learn load_digits (UCI optdigits, CC BY 4.0) + eSpeak NG",
        "classes": "classes.csv",
        "splits": "splits.csv",
        "num_classes": len(CLASSES),
        "counts": counts,
        "protocols": {"default": PROTOCOL},
        "default_protocol": "default",
        "inputs": ["clips"],
        "data_root": ".",
        # the clips' own format, sized for the CPU as the embedded benchmark (datasets/synth-av.yaml)
        "clips": {
            "audio": {
                "sample_rate": params["sample_rate"],
                "duration": params["duration"],
                "n_fft": 256,
                "win_length": 256,
                "hop_length": 256,
            },
            "visual": {"size": params["resolution"], "num_frames": 1},
        },
    }
    import yaml

    head = (
        "# Written by `avcl-bench generate digits-av` (avcl_bench/data/digits_av.py); generation.json\n"
        "# records the parameters, the seed, the library versions and each clip's conditions.\n"
    )
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


def _matches(params: dict):
    return lambda doc: doc.get("version") == DIGITS_AV_VERSION and doc.get("params") == params


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("digits-av needs scikit-learn's bundled digits: pip install -e '.[realdata]'") from None
    d = load_digits()
    return d.images, d.target


def generate_digits_av(
    out_dir: Path,
    clips: dict | None = None,
    hard_audio: float = DEFAULTS["hard_audio"],
    hard_visual: float = DEFAULTS["hard_visual"],
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Generate (or reuse) the digits-av set in ``out_dir`` and return the manifest path.

    ``clips``: clips per class and split (default 100 / 20 / 20: 1400 clips). Writes
    ``clips/<id>.mp4`` (H.264 + AAC), ``classes.csv``, ``splits.csv``, ``generation.json`` (the
    parameters, library versions and every clip's class, split, scan, voice and conditions) and
    ``digits-av.yaml`` (:data:`PROTOCOL`), which ``avcl-bench check`` / ``run --benchmark`` take.
    """
    clips = dict(DEFAULTS["clips"] if clips is None else clips)
    _check_params(clips, hard_audio, hard_visual, seed)
    out = Path(out_dir).expanduser()
    params = {"clips": clips, "hard_audio": float(hard_audio), "hard_visual": float(hard_visual), "seed": seed}
    params.update(FORMAT)
    matches = _matches(params)
    if clip_set_complete(out, matches):
        return out / MANIFEST_NAME
    images, targets = _load_digits()
    plan = _plan(params, targets)
    from .espeak import synthesize

    if progress:
        print(f"digits-av: synthesising {len(plan)} spoken words (eSpeak NG)", flush=True)
    waves, speech_rate, speaker = synthesize([row["speech"] for row in plan])
    jobs = [(row, w, speech_rate, images[row["scan"]], params) for row, w in zip(plan, waves)]
    import av
    import sklearn

    doc = {
        "benchmark": "digits-av",
        "version": DIGITS_AV_VERSION,
        "params": params,
        "counts": {s: len(CLASSES) * clips[s] for s in SPLITS},
        "sources": {
            "pictures": f"scikit-learn {sklearn.__version__} load_digits (UCI Optical Recognition of Handwritten "
            "Digits, test set of 13 writers; Alpaydin & Kaynak 1998; CC BY 4.0)",
            "speech": f"eSpeak NG {speaker['version']} via {speaker['source']} (GPL-3.0-or-later), "
            f"{speech_rate} Hz resampled to {params['sample_rate']} Hz",
        },
        "encoder": {
            "video": "libx264 veryfast/zerolatency yuv420p crf 18",
            "audio": "aac (fast coder) 64 kb/s",
            "pyav": av.__version__,
        },
        "clips": {row["id"]: {k: row[k] for k in ("class", "split", "condition", "scan", "speech")} for row in plan},
    }
    build_clip_set(
        out,
        what="digits-av",
        other="other settings (clips per class, hard fractions, seed or version)",
        matches=matches,
        replace=False,
        jobs=jobs,
        render=_clip_job,
        classes=list(CLASSES),
        rows=[(row["id"], CLASSES[row["class"]], row["split"]) for row in plan],
        doc=doc,
        extra_files={MANIFEST_NAME: manifest_text(params)},
        progress=progress,
        workers=workers,
        desc="generating digits-av",
    )
    return out / MANIFEST_NAME


__all__ = ["CLASSES", "DEFAULTS", "generate_digits_av", "manifest_text", "render_audio", "render_frames"]
