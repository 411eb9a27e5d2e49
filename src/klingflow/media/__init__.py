"""The one package that runs ffmpeg: probing, joining, frames, audio muxing, captions and contact sheets.

ffmpeg comes with the install: ``imageio-ffmpeg`` bundles a static build (libx264, aac,
libmp3lame, xfade). A system ffmpeg on PATH wins when there is one, and ``KLINGFLOW_FFMPEG``
names a binary explicitly. Graphs are built with ffmpeg-python and run by :func:`run_ffmpeg`;
probing and frame grabs use PyAV (its own libav), so no ffprobe binary is needed.

Contracts every function here keeps:

* outputs appear whole or not at all: ffmpeg writes a hidden partial name beside ``out`` that is
  renamed over it only after success (and, for joins and muxes, after the result was probed), so a
  cache lookup by path never finds a truncated file;
* every failure is a :class:`~klingflow.errors.MediaError` whose context holds the caller's
  ``context`` (e.g. "step 'final_cut'") and the offending file, with the tail of ffmpeg's stderr;
* videos come out as mp4 with H.264 yuv420p and, when there is sound, 48 kHz AAC, with the index
  at the front (+faststart).

Example:
    >>> clips = [Path("shot1.mp4"), Path("shot2.mp4")]
    >>> result = concat(clips, Path("cut.mp4"), context="step 'cut'")  # doctest: +SKIP
    >>> result.path_taken  # doctest: +SKIP
    'stream_copy'
"""

from __future__ import annotations

from klingflow.media._captions import CaptionsResult, add_captions, find_pauses
from klingflow.media._concat import concat
from klingflow.media._concat_plan import ConcatResult, ConcatTarget, Transition
from klingflow.media._cues import Cue
from klingflow.media._frames import first_frame, last_frame, preview, thumbnail
from klingflow.media._mux import mux_audio
from klingflow.media._probe import MediaInfo, probe
from klingflow.media._run import ffmpeg_executable, run_ffmpeg
from klingflow.media._sheet import contact_sheet, contact_sheet_row

__all__ = [
    "CaptionsResult",
    "ConcatResult",
    "ConcatTarget",
    "Cue",
    "MediaInfo",
    "Transition",
    "add_captions",
    "concat",
    "contact_sheet",
    "contact_sheet_row",
    "ffmpeg_executable",
    "find_pauses",
    "first_frame",
    "last_frame",
    "mux_audio",
    "preview",
    "probe",
    "run_ffmpeg",
    "thumbnail",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
