"""The captions of a cut: each clip's soft caption track, moved to where the clip plays in the cut.

A clip made by the captions operation carries its cues as a ``mov_text`` track. A join copies or
re-encodes the video and rebuilds the audio, and on its own would leave that track behind. So the
clips' text tracks are written out as SRT by one ffmpeg run and read back with pysubs2; each cue
is moved by its clip's start in the cut, taken from the frame counts the join itself uses (so the
shift is as exact as SRT's milliseconds), and kept within the time its clip is on screen: under a
crossfade, until the next clip begins, so the cues of two clips never overlap (a ``mov_text``
track shows one cue at a time). Burned-in captions are pixels: they travel with the frames.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pysubs2

from klingflow._files import atomic_path
from klingflow.media._concat_plan import ConcatPlan
from klingflow.media._run import run_ffmpeg

__all__ = ["cut_captions", "save_captions"]


def _ms(seconds: Fraction) -> int:
    return round(seconds * 1000)


def cut_captions(plan: ConcatPlan, scratch: Path, *, context: str) -> pysubs2.SSAFile | None:
    """Every captioned clip's cues on the cut's timeline, or None when no clip brings any.

    Each clip's track is written to ``scratch`` as SRT with its own timestamps (``-copyts``), so a
    clip whose first frame is not at zero has its cues moved by the same amount as its frames.
    """
    captioned = [(index, clip) for index, clip in enumerate(plan.clips) if clip.captions is not None]
    if not captioned:
        return None
    args = ["-copyts"]
    for _, clip in captioned:
        args += ["-i", str(clip.path.absolute())]
    for number, (index, clip) in enumerate(captioned):
        args += ["-map", f"{number}:{clip.captions}", "-f", "srt", str(scratch / f"clip-{index}.srt")]
    run_ffmpeg(args, context=f"{context} (reading the clips' captions)")
    starts = plan.starts
    ends = (*starts[1:], plan.video_seconds)
    merged = pysubs2.SSAFile()
    for index, clip in captioned:
        shift, shown, hidden = _ms(starts[index] - clip.start), _ms(starts[index]), _ms(ends[index])
        for event in pysubs2.load(str(scratch / f"clip-{index}.srt"), encoding="utf-8", format_="srt"):
            start, end = max(shown, event.start + shift), min(hidden, event.end + shift)
            if end > start and event.plaintext.strip():
                merged.events.append(pysubs2.SSAEvent(start=start, end=end, text=event.text))
    return merged if merged.events else None


def save_captions(captions: pysubs2.SSAFile, srt: Path | None, vtt: Path | None) -> None:
    """Write the cut's cues as SRT and WebVTT, each file whole or not at all."""
    for path, form in ((srt, "srt"), (vtt, "vtt")):
        if path is not None:
            with atomic_path(path) as partial:
                captions.save(str(partial), format_=form)
