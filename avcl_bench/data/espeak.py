"""Spoken words from the eSpeak NG speech synthesiser, driven through its C API with ``ctypes``.

The library and its voice data come from an installed package, never from the network: the PyPI
package ``espeakng-loader`` (which bundles ``libespeak-ng`` and ``espeak-ng-data``; the ``realdata``
and ``test`` extras install it), or else a system ``libespeak-ng`` (Debian's ``libespeak-ng1``) with
its own data. eSpeak NG is GPL-3.0-or-later; it is only called, not shipped.

Determinism: the synthesiser keeps state between utterances that no API call resets (the pitch
flutter index in ``wavegen.c`` is a function-static counter), so the same utterance comes out
slightly differently depending on what was said before it in the same process. :func:`synthesize`
therefore speaks every request list in a fresh child process, in order, with the random seed
(``espeak_ng_SetRandSeed``, used for the noise source) set before each utterance: the same list
gives the same samples, bit for bit, for a given library version.

API used (``speak_lib.h`` / ``espeak_ng.h``): ``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0,
data_path, 0)`` returns the sample rate; ``espeak_SetSynthCallback`` receives the 16-bit mono
samples; ``espeak_SetVoiceByName("en-us+f3")`` picks a language voice and a variant;
``espeak_SetParameter`` sets rate (words per minute), pitch and pitch range (0-99).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

INSTALL_HINT = "pip install -e '.[realdata]' (the espeakng-loader package) or apt-get install libespeak-ng1"

# speak_lib.h: espeak_AUDIO_OUTPUT, espeak_PARAMETER, espeak_POSITION_TYPE, espeakCHARS_UTF8
AUDIO_OUTPUT_SYNCHRONOUS = 2
PARAMETERS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
POS_CHARACTER = 1
CHARS_UTF8 = 1
#: the keys of one request and their allowed ranges (speak_lib.h: rate 80-450 wpm, pitch and range 0-99)
REQUEST_RANGES = {"rate": (80, 450), "pitch": (0, 99), "range": (0, 99)}


def _library() -> tuple[ctypes.CDLL, str | None, str]:
    """(library, data path or None for the library's own, where it came from)."""
    try:
        import espeakng_loader
    except ImportError:
        espeakng_loader = None
    if espeakng_loader is not None:
        from importlib.metadata import version

        source = f"espeakng-loader {version('espeakng-loader')}"
        return ctypes.CDLL(espeakng_loader.get_library_path()), espeakng_loader.get_data_path(), source
    name = ctypes.util.find_library("espeak-ng")
    if name is None:
        raise DataError(f"eSpeak NG is not installed: {INSTALL_HINT}")
    return ctypes.CDLL(name), None, name


class _Speaker:
    """One initialised synthesiser (one per process: the library is a process-wide singleton)."""

    def __init__(self) -> None:
        lib, data, self.source = _library()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode() if data else None, 0)
        if self.sample_rate <= 0:
            raise DataError(f"eSpeak NG ({self.source}) failed to initialise (its voice data not found)")
        self.version = lib.espeak_Info(None).decode()
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(self._collect)  # kept referenced: the library calls it
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def _collect(self, samples, count, _events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # 0 = go on

    def say(self, req: dict) -> np.ndarray:
        """int16 samples of one request ``{text, voice, rate, pitch, range, seed}``."""
        if self.lib.espeak_SetVoiceByName(req["voice"].encode()) != 0:
            raise DataError(f"eSpeak NG ({self.source}) has no voice '{req['voice']}'")
        for key in ("rate", "pitch", "range"):
            self.lib.espeak_SetParameter(PARAMETERS[key], int(req[key]), 0)
        self.lib.espeak_SetParameter(PARAMETERS["volume"], 100, 0)
        self.lib.espeak_ng_SetRandSeed(int(req["seed"]))
        self._chunks = []
        text = req["text"].encode() + b"\0"
        if self.lib.espeak_Synth(text, len(text), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None) != 0:
            raise DataError(f"eSpeak NG ({self.source}) failed to say {req['text']!r}")
        if not self._chunks:
            raise DataError(f"eSpeak NG ({self.source}) said nothing for {req['text']!r} (voice {req['voice']})")
        return np.concatenate(self._chunks).astype(np.int16)


def check_request(req: dict) -> None:
    for key, (lo, hi) in REQUEST_RANGES.items():
        if not lo <= req[key] <= hi:
            raise ConfigError(f"speech {key} must be in {lo}..{hi}, got {req[key]}")


def synthesize(requests: list[dict]) -> tuple[list[np.ndarray], int, dict]:
    """Speak ``requests`` (dicts ``text, voice, rate, pitch, range, seed``) in a fresh process.

    Returns the int16 waveforms (in request order), their sample rate and a description of the
    synthesiser (``version``, ``source``) for the generation record.
    """
    for req in requests:
        check_request(req)
    with tempfile.TemporaryDirectory(prefix="avcl-espeak-") as tmp:
        src, dst = Path(tmp) / "requests.json", Path(tmp) / "speech.npz"
        src.write_text(json.dumps(requests), encoding="utf-8")
        # the child imports this module from the same tree as the parent, installed or not
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        proc = subprocess.run(
            [sys.executable, "-m", "avcl_bench.data.espeak", str(src), str(dst)],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit status {proc.returncode}"]
            raise DataError(f"speech synthesis failed: {lines[-1]}")
        with np.load(dst) as z:
            samples, offsets = z["samples"], z["offsets"]
            info = json.loads(str(z["info"]))
    waves = [samples[offsets[i] : offsets[i + 1]] for i in range(len(requests))]
    return waves, int(info.pop("sample_rate")), info


def _child(src: str, dst: str) -> int:
    try:
        requests = json.loads(Path(src).read_text(encoding="utf-8"))
        speaker = _Speaker()
        waves = [speaker.say(req) for req in requests]
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    offsets = np.cumsum([0] + [len(w) for w in waves])
    info = {"sample_rate": speaker.sample_rate, "version": speaker.version, "source": speaker.source}
    samples = np.concatenate(waves) if waves else np.zeros(0, np.int16)
    np.savez(dst, samples=samples, offsets=offsets, info=json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:3]))
