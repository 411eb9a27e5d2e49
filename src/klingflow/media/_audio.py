"""Audio filter chains that give every piece of a cut an exact number of samples.

Joins drift when each clip's audio is a little longer or shorter than its video (AAC encodes in
1024-sample frames and adds priming), so every clip's audio is resampled to one rate and layout,
shifted to where its video starts, and padded or cut to the sample count its video occupies.
Silence stands in for clips that have no audio, so the track never has a hole.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import ffmpeg

__all__ = ["AUDIO_ENCODE", "OUTPUT_CHANNELS", "OUTPUT_RATE", "channel_layout", "fitted_audio", "silence"]

# AAC at 192 kb/s: transparent for speech and music beds; the encoder is fast next to x264.
AUDIO_ENCODE: dict[str, Any] = {"c:a": "aac", "b:a": "192k", "flags:a": "+bitexact"}

# 48 kHz stereo: what video tools expect, and one layout for every output, so that outputs of
# different steps can be joined later without resampling surprises.
OUTPUT_RATE = 48_000
OUTPUT_CHANNELS = 2

_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def channel_layout(channels: int) -> str:
    """ffmpeg's name for the default layout of ``channels`` channels (1 to 8)."""
    return _LAYOUTS[channels]


def _uniform(stream: Any, *, rate: int, channels: int) -> Any:
    return stream.filter("aresample", rate).filter(
        "aformat", sample_fmts="fltp", sample_rates=rate, channel_layouts=channel_layout(channels)
    )


def fitted_audio(
    stream: Any, *, samples: int, rate: int, channels: int, offset: Fraction = Fraction(0)
) -> Any:
    """``stream`` resampled, moved by ``offset`` seconds, then padded or cut to ``samples`` samples.

    ``offset`` is where the audio starts relative to its video (positive: later), so a clip whose
    audio starts late keeps its sync instead of being pulled forward. Timestamps are renumbered
    from zero by sample count, so what follows (concat, crossfade, mixing) sees a gapless stream.
    """
    audio = _uniform(stream, rate=rate, channels=channels)
    shift = round(offset * rate)
    if shift > 0:
        audio = audio.filter("adelay", delays=f"{shift}S", all=1)
    elif shift < 0:
        audio = audio.filter("atrim", start_sample=-shift)
    audio = audio.filter("apad", whole_len=samples).filter("atrim", end_sample=samples)
    return audio.filter("asetpts", "N/SR/TB")


def silence(*, samples: int, rate: int, channels: int, index: int = 0) -> Any:
    """Exactly ``samples`` samples of digital silence, for a clip that has no audio track.

    Each call is its own lavfi input. ffmpeg-python merges identical nodes, so two equally long
    silences would become one source feeding two places; ``index`` (the clip's position) makes
    the generated length, and so the node, differ. atrim cuts it to size either way.
    """
    seconds = Fraction(samples, rate) + 1 + index
    source = ffmpeg.input(
        f"anullsrc=r={rate}:cl={channel_layout(channels)}", f="lavfi", t=f"{float(seconds):.6f}"
    )
    audio = _uniform(source, rate=rate, channels=channels).filter("atrim", end_sample=samples)
    return audio.filter("asetpts", "N/SR/TB")
