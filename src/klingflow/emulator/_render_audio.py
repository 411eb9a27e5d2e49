"""Sound for the emulator, synthesised with numpy: speech-like babble for TTS and a soft tone.

Real speech synthesis is out of scope; what matters downstream is that the audio has the right
length, follows the text's rhythm (syllables, pauses at spaces and punctuation), and sounds
different per voice. The pitch comes from a hash of the voice id, the syllable melody from the
characters, and the length from the text length divided by the voice speed (about 14 characters
a second at speed 1). Samples are signed 16-bit mono, ready for ffmpeg's ``s16le`` input.
"""

from __future__ import annotations

import numpy as np

from klingflow.emulator.labels import seed_of

__all__ = [
    "SPEECH_RATE",
    "TTS_CHARS_PER_SECOND",
    "filled_speech_pcm",
    "speech_pcm",
    "speech_seconds",
    "tone_pcm",
]

SPEECH_RATE = 24_000
TTS_CHARS_PER_SECOND = 14.0
_MIN_SECONDS = 1.0
_EDGE_SECONDS = 0.12
_PAUSE_WEIGHTS = {" ": 0.8, "\n": 3.0, ",": 2.0, ";": 2.0, ":": 2.0, ".": 3.0, "!": 3.0, "?": 3.0}


def speech_seconds(text: str, voice_speed: float) -> float:
    """How long the TTS audio for ``text`` lasts: len / (14 * speed), at least one second."""
    if voice_speed <= 0:
        raise ValueError(f"voice_speed must be positive, got {voice_speed!r}")
    return max(_MIN_SECONDS, len(text) / (TTS_CHARS_PER_SECOND * voice_speed))


def _units(text: str) -> list[tuple[str, float]]:
    """Split text into ("syllable", weight) and ("pause", weight) units of relative duration."""
    units: list[tuple[str, float]] = []
    word = ""
    for char in text + " ":
        if char.isspace() or char in _PAUSE_WEIGHTS:
            for start in range(0, len(word), 3):
                units.append((word[start : start + 3], float(len(word[start : start + 3]))))
            word = ""
            units.append(("", _PAUSE_WEIGHTS.get(char, 0.8)))
        else:
            word += char
    units.pop()
    return units or [("", 1.0)]


def _syllable(chars: str, seconds: float, base_hz: float, contour: float, noise: np.ndarray) -> np.ndarray:
    """One voiced syllable: a harmonic tone with a vowel-like timbre, vibrato and a consonant burst."""
    count = max(1, round(seconds * SPEECH_RATE))
    t = np.arange(count, dtype=np.float64) / SPEECH_RATE
    code = sum(ord(char) for char in chars)
    pitch = base_hz * 2 ** (((code % 9) - 4) * 0.6 / 12 + contour)
    glide = 1 + 0.04 * np.sin(np.pi * t / max(seconds, 1e-3))
    phase = 2 * np.pi * np.cumsum(pitch * glide * (1 + 0.006 * np.sin(2 * np.pi * 5.5 * t))) / SPEECH_RATE
    formant = 2 + (code % 5)
    wave = sum((np.sin(k * phase) / k * (1.6 if k == formant else 1.0) for k in range(1, 7)), np.zeros(count))
    envelope = np.sin(np.pi * np.minimum(1.0, t / max(seconds, 1e-3))) ** 0.6
    burst = min(count, round(0.025 * SPEECH_RATE))
    wave[:burst] += noise[:burst] * np.linspace(1.2, 0.0, burst)
    return wave * envelope


def speech_pcm(text: str, voice_id: str, voice_speed: float) -> bytes:
    """Speech-like 24 kHz mono s16le samples lasting :func:`speech_seconds`."""
    total = speech_seconds(text, voice_speed)
    seed = seed_of("tts", text, voice_id, voice_speed)
    base_hz = 95 + (seed_of("voice", voice_id) % 1000) / 1000 * 160
    rng = np.random.Generator(np.random.PCG64(seed))
    units = _units(text.strip() or ".")
    per_weight = (total - 2 * _EDGE_SECONDS) / sum(weight for _, weight in units)
    pieces = [np.zeros(round(_EDGE_SECONDS * SPEECH_RATE))]
    for index, (chars, weight) in enumerate(units):
        seconds = weight * per_weight
        if chars:
            rising = 0.15 if "?" in text[-3:] and index >= len(units) - 2 else 0.0
            contour = -0.12 * index / max(1, len(units)) + rising
            noise = rng.standard_normal(round(0.03 * SPEECH_RATE))
            pieces.append(_syllable(chars, seconds, base_hz, contour, noise))
        else:
            pieces.append(np.zeros(max(0, round(seconds * SPEECH_RATE))))
    samples = np.concatenate(pieces)
    target = round(total * SPEECH_RATE)
    samples = np.pad(samples[:target], (0, max(0, target - samples.size)))
    peak = float(np.max(np.abs(samples))) or 1.0
    return (samples / peak * 0.6 * 32767).astype("<i2").tobytes()


def filled_speech_pcm(text: str, voice_id: str, seconds: float) -> bytes:
    """Speech-like samples of ``text`` spoken at the pace that makes them last ``seconds`` (at least 1 s)."""
    spoken = text.strip() or "."
    return speech_pcm(spoken, voice_id, len(spoken) / (TTS_CHARS_PER_SECOND * max(seconds, 1e-3)))


def tone_pcm(label: str, seconds: float, rate: int) -> bytes:
    """A soft two-note chord with a slow tremolo and fades: unmistakably not speech."""
    count = max(1, round(seconds * rate))
    t = np.arange(count, dtype=np.float64) / rate
    root = 196 + seed_of("tone", label) % 8 * 12
    wave = np.sin(2 * np.pi * root * t) + 0.5 * np.sin(2 * np.pi * root * 1.5 * t)
    wave *= 0.8 + 0.2 * np.sin(2 * np.pi * 1.5 * t)
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.2)
    return (wave * fade * 0.2 * 32767).astype("<i2").tobytes()
