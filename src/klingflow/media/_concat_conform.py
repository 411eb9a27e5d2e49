"""Re-encoding the odd clip of a cut so its packets can join the others' by stream copy.

One mp4 track holds one H.264 SPS/PPS (the ``avcC`` box), so a clip can join the others' packets
only when its encoder wrote byte-identical parameter sets. They follow from a handful of encoder
settings: profile and level, the size, rate and aspect in the VUI, and the x264 options that
shape the headers (CABAC, reference frames, B-frames and their pyramid, weighted prediction, the
8x8 transform, the rate control's initial QP, the chroma QP offset). libx264 records all of its
options in an SEI message of its first frame, so the reference clip itself says how it was made;
the odd clip is encoded the same way, and the result is probed: only a clip whose copy key then
equals the reference's is used. Anything else (another encoder, custom quantiser matrices,
interlacing) is caught by that probe and the cut falls back to normalising every clip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg

from klingflow.media._concat_plan import copy_key_difference
from klingflow.media._probe import VideoFacts, inspect_video, open_video
from klingflow.media._run import run_ffmpeg

__all__ = ["Encoder", "conform_clip", "matching_encoder"]

_X264_SEI = re.compile(rb"x264 - core \d+[^\x00]*? options: ([^\x00]*)")
_PROFILES = {66: "baseline", 77: "main", 100: "high", 110: "high10", 122: "high422", 244: "high444"}
"""avcC profile_idc -> the libx264 profile that writes it."""
_PYRAMIDS = ("none", "strict", "normal")
_COPIED = {
    "cabac": "cabac",
    "ref": "ref",
    "bframes": "bframes",
    "weightb": "weightb",
    "weightp": "weightp",
    "8x8dct": "8x8dct",
    "constrained_intra": "constrained-intra",
    "subme": "subme",
    "trellis": "trellis",
    "psy": "psy",
    "keyint": "keyint",
    "keyint_min": "min-keyint",
}
"""x264 options (as the SEI spells them) that shape the SPS/PPS, or decide how x264 derives a header
field, and that x264-params takes as they are (under x264's own name)."""
_UNSPECIFIED = {"color_range": 0, "colorspace": 2, "color_primaries": 2, "color_trc": 2}
"""libav's "unspecified" value of each colour tag: such a tag is left for the encoder to leave out."""


def _recorded_options(first_packet: bytes) -> dict[str, str]:
    """The ``key=value`` options libx264 wrote into its SEI; empty when the clip has none."""
    found = _X264_SEI.search(first_packet)
    if found is None:
        return {}
    pairs = (item.split("=", 1) for item in found.group(1).decode("ascii", "replace").split())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def _chroma_offset(recorded: dict[str, str]) -> int:
    """The chroma QP offset to ask for, so x264 ends at the recorded one.

    x264 records the offset after lowering it for psy-RD (used from subme 6) and psy-trellis,
    and lowers again whatever it is given, so the lowering is added back first.
    """
    offset = int(recorded["chroma_qp_offset"])
    if recorded.get("psy") != "1" or "psy_rd" not in recorded:
        return offset
    psy_rd, psy_trellis = (float(part) for part in recorded["psy_rd"].split(":"))
    if int(recorded.get("subme", 0)) >= 6 and psy_rd > 0:
        offset += 1 if psy_rd < 0.25 else 2
    if int(recorded.get("trellis", 0)) > 0 and psy_trellis > 0:
        offset += 1 if psy_trellis < 0.25 else 2
    return offset


def _x264_params(recorded: dict[str, str]) -> str:
    """The recorded options that decide the headers, as an ``x264-params`` value."""
    params = [f"{name}={recorded[key]}" for key, name in _COPIED.items() if key in recorded]
    if recorded.get("b_pyramid", "").isdigit() and int(recorded["b_pyramid"]) < len(_PYRAMIDS):
        params.append(f"b-pyramid={_PYRAMIDS[int(recorded['b_pyramid'])]}")
    if "psy_rd" in recorded:
        params.append(f"psy-rd={recorded['psy_rd'].replace(':', ',')}")
    if "chroma_qp_offset" in recorded:
        params.append(f"chroma-qp-offset={_chroma_offset(recorded)}")
    enabled, _, strengths = recorded.get("deblock", "").partition(":")
    if enabled == "0":
        params.append("no-deblock=1")
    elif enabled == "1" and strengths:
        params.append(f"deblock={strengths.replace(':', ',')}")
    return ":".join(params)


@dataclass(frozen=True)
class Encoder:
    """How to encode a clip so its headers come out as a reference clip's.

    ``options`` are ffmpeg's output options; ``sar`` is the aspect the frames must be given:
    "0" when the reference leaves it unsignalled, which x264 then leaves out of the VUI too.
    """

    options: dict[str, Any]
    sar: str


def matching_encoder(reference: VideoFacts, base: dict[str, Any], *, context: str) -> Encoder:
    """The libx264 encoder that should reproduce the reference clip's SPS/PPS.

    ``base`` is the cut's own encoder (libx264, its preset and quality); the reference's recorded
    rate control (its CRF, which x264 writes as the PPS's initial QP, or its constant QP) replaces
    the quality, so the odd clip also looks like its neighbours. Also carries the pixel format,
    frame rate, mp4 time scale and colour tags.
    """
    with open_video(reference.path, context) as (container, stream, _):
        ctx = stream.codec_context
        extradata = bytes(ctx.extradata or b"")
        tags = {name: getattr(ctx, name) for name in _UNSPECIFIED}
        tagged_sar = bool(stream.sample_aspect_ratio)
        time_base = Fraction(stream.time_base)
        first = next((bytes(packet) for packet in container.demux(stream) if packet.size), b"")
    recorded = _recorded_options(first)
    options: dict[str, Any] = {**base, "pix_fmt": reference.pixel_format, "r": str(reference.rate)}
    if recorded.get("rc") == "crf" and "crf" in recorded:
        options["crf"] = recorded["crf"]
    elif recorded.get("rc") == "cqp" and "qp" in recorded:
        options.pop("crf", None)
        options["qp"] = recorded["qp"]
    if len(extradata) > 3 and extradata[0] == 1:  # avcC: version, profile_idc, compatibility, level_idc
        if extradata[1] in _PROFILES:
            options["profile:v"] = _PROFILES[extradata[1]]
        options["level:v"] = str(extradata[3])
    params = _x264_params(recorded)
    if params:
        options["x264-params"] = params
    if time_base.numerator == 1:
        options["video_track_timescale"] = time_base.denominator
    options.update({name: value for name, value in tags.items() if value != _UNSPECIFIED[name]})
    return Encoder(options=options, sar="1" if tagged_sar else "0")


def conform_clip(
    video: Any, encoder: Encoder, reference: VideoFacts, frames: int, out: Path, *, context: str
) -> str | None:
    """Encode ``video`` (a filtered stream, already fitted to the cut) into ``out`` with ``encoder``.

    Returns None when the new clip's copy key equals the reference's and it has ``frames``
    frames, else a sentence saying what still differs.
    """
    options = {**encoder.options, "frames:v": frames, "f": "mp4", "fflags": "+bitexact", "map_metadata": -1}
    run_ffmpeg(ffmpeg.output(video, str(out), **options), context=context)
    facts = inspect_video(out, context=context)
    difference = copy_key_difference(reference, facts)
    if difference is not None:
        return f"re-encoded, it still differs in {difference}"
    made = round(facts.duration * reference.rate)
    if made != frames:
        return f"re-encoded, it has {made} frames instead of {frames}"
    return None
