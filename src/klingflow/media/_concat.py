"""Joining clips into one cut: stream copy when the probes allow it (after re-encoding a few odd clips
to match the rest, if need be), otherwise one normalising encode.

Stream copy keeps every video packet bit for bit (no generation loss, a tenth of a second instead
of half a minute for twenty clips) and is taken only when
:func:`~klingflow.media._concat_plan.plan_concat` has proved from the probes that the clips can
share one H.264 track. When most clips can but a few cannot (one clip from another model or
encoder), only those few are re-encoded, with the settings the majority was encoded with
(:mod:`._concat_conform`), and every packet is then copied: one clip's encode instead of all of
them. A re-encoded clip is probed before it is used; if its parameters still differ from the
others', the cut normalises every clip instead, and the log says why.

Audio, when any clip has some, is always rebuilt: AAC codes 1024-sample frames behind a priming
frame, so joining AAC packets adds the next clip's priming and the last clip's padding at every
join (about 35 ms for 5 s clips; twenty of them play 0.69 s late by the end, while the
container's durations hide it). Decoding, fitting each clip's audio to its video to the sample and
encoding once takes about 4 s per 100 s of sound on two cores, a fraction of re-encoding the
video, and keeps the sound in sync to the end (see docs/benchmarks.md).
Captions a clip carries as a soft track are carried over too, moved to where the clip plays in
the cut (:mod:`._concat_captions`), as the cut's one ``mov_text`` track.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg

from klingflow._files import atomic_path
from klingflow.errors import MediaError
from klingflow.media._audio import AUDIO_ENCODE, fitted_audio, silence
from klingflow.media._concat_captions import cut_captions, save_captions
from klingflow.media._concat_conform import conform_clip, matching_encoder
from klingflow.media._concat_plan import ConcatPlan, ConcatResult, ConcatTarget, Transition, plan_concat
from klingflow.media._probe import MediaInfo, VideoFacts, inspect_video, probe
from klingflow.media._run import run_ffmpeg, where

__all__ = ["MP4_OPTIONS", "VIDEO_ENCODE", "concat", "write_concat"]

_log = logging.getLogger("klingflow.media")

# veryfast at crf 20: close to visually lossless for generated footage, and fast enough that
# re-running a cut of twenty clips on two cores takes seconds, not minutes.
VIDEO_ENCODE: dict[str, Any] = {
    "c:v": "libx264",
    "preset": "veryfast",
    "crf": 20,
    "pix_fmt": "yuv420p",
    "flags:v": "+bitexact",
}
# +faststart puts the index first so players (and fal uploads) can start before the end arrives.
MP4_OPTIONS: dict[str, Any] = {
    "f": "mp4",
    "movflags": "+faststart",
    "map_metadata": -1,
    "fflags": "+bitexact",
}
_AUDIO_SYNC_SECONDS = 0.05
_CAPTION_TRACK: dict[str, Any] = {"c:s": "mov_text", "metadata:s:s:0": "handler_name=Captions"}
"""The cut's captions as mp4's own text track, named as the captions operation names its track."""


def _ffconcat_quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


def _sources(plan: ConcatPlan) -> list[Any]:
    """One ffmpeg input per clip, even when the same file appears twice.

    ffmpeg-python merges identical nodes, and feeding a repeated clip through ``split`` would hold
    its whole decoded length in memory until its turn comes. So a repeat gets its own ``-i``, told
    apart by its demuxer queue size, an option that changes nothing in the output.
    """
    seen: Counter[Path] = Counter()
    sources = []
    for clip in plan.clips:
        repeat = seen[clip.path]
        seen[clip.path] += 1
        options = {"thread_queue_size": 8 + repeat} if repeat else {}
        sources.append(ffmpeg.input(str(clip.path), **options))
    return sources


def _clip_audio(plan: ConcatPlan, sources: Sequence[Any]) -> list[Any]:
    """One exactly sized audio piece per clip: its own audio fitted to its video, or silence."""
    pieces: list[Any] = []
    for clip, source, samples in zip(plan.clips, sources, plan.samples, strict=True):
        if clip.has_audio:
            piece = fitted_audio(
                source["a:0"],
                samples=samples,
                rate=plan.sample_rate,
                channels=plan.channels,
                offset=clip.audio_start - clip.start,
            )
        else:
            piece = silence(samples=samples, rate=plan.sample_rate, channels=plan.channels, index=len(pieces))
        pieces.append(piece)
    return pieces


def _joined_audio(pieces: list[Any], plan: ConcatPlan) -> Any:
    if plan.overlap_frames == 0:
        return ffmpeg.concat(*pieces, v=0, a=1)
    joined = pieces[0]
    for piece in pieces[1:]:
        joined = ffmpeg.filter([joined, piece], "acrossfade", nb_samples=plan.overlap_samples)
    return joined


def _output(streams: list[Any], options: dict[str, Any], track: Path | None, partial: Path) -> Any:
    """The output node: the streams, and the caption track (an SRT file) as ``mov_text`` when there is one."""
    if track is not None:
        streams = [*streams, ffmpeg.input(str(track))["s:0"]]
        options = {**options, **_CAPTION_TRACK}
    return ffmpeg.output(*streams, str(partial), **options)


def _copy_graph(
    plan: ConcatPlan, videos: Sequence[Path], scratch: Path, partial: Path, track: Path | None
) -> Any:
    """Video packets of ``videos`` through the concat demuxer untouched; audio rebuilt from each clip.

    ``videos`` are the clips themselves, or on the conformed path the re-encoded stand-ins of the
    odd ones, whose lengths are their planned frames.
    """
    listing = scratch / "clips.ffconcat"
    lines = ["ffconcat version 1.0"]
    for video, frames in zip(videos, plan.frames, strict=True):
        # The video's own length, not the container's (the longer of audio and video), so the
        # next clip's frames follow without a gap.
        lines += [f"file {_ffconcat_quoted(video.resolve())}", f"duration {float(frames / plan.rate):.6f}"]
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # auto_convert=0: the probes proved every clip has the same SPS/PPS, so the demuxer need not
    # repeat them in-band (annex B) in each clip's first keyframe; packets then pass bit for bit.
    streams = [ffmpeg.input(str(listing), f="concat", safe=0, auto_convert=0)["v:0"]]
    options = {"c:v": "copy", **MP4_OPTIONS}
    if plan.with_audio:
        streams.append(_joined_audio(_clip_audio(plan, _sources(plan)), plan))
        options.update(AUDIO_ENCODE)
    return _output(streams, options, track, partial)


def _scaled_size(clip: VideoFacts, plan: ConcatPlan) -> tuple[int, int]:
    """The clip's size once scaled to fit inside (pad) or to cover (crop) the target frame."""
    width, height = plan.size
    shown_width, shown_height = clip.width * clip.sar, Fraction(clip.height)
    scales = (width / shown_width, height / shown_height)
    scale = min(scales) if plan.fit == "pad" else max(scales)
    scaled = [max(2, round(shown_width * scale / 2) * 2), max(2, round(shown_height * scale / 2) * 2)]
    bound = min if plan.fit == "pad" else max
    return bound(scaled[0], width), bound(scaled[1], height)


def _fitted_video(stream: Any, clip: VideoFacts, frames: int, plan: ConcatPlan, *, sar: str = "1") -> Any:
    """One clip at the target rate, size and pixel format, exactly ``frames`` frames long.

    ``sar`` "0" leaves the square pixels unsignalled, as a conformed clip's neighbours may.
    """
    width, height = plan.size
    video = stream.filter("setpts", "PTS-STARTPTS").filter("fps", fps=str(plan.rate))
    scaled_width, scaled_height = _scaled_size(clip, plan)
    if (scaled_width, scaled_height) != (clip.width, clip.height):
        video = video.filter("scale", scaled_width, scaled_height)
    if plan.fit == "pad" and (scaled_width, scaled_height) != (width, height):
        x, y = (width - scaled_width) // 2, (height - scaled_height) // 2
        video = video.filter("pad", width, height, x, y, color="black")
    elif (scaled_width, scaled_height) != (width, height):
        x, y = (scaled_width - width) // 2, (scaled_height - height) // 2
        video = video.filter("crop", width, height, x, y)
    video = video.filter("setsar", sar).filter("format", "yuv420p")
    return video.filter("trim", end_frame=frames).filter("setpts", "PTS-STARTPTS")


def _joined_video(pieces: list[Any], plan: ConcatPlan) -> Any:
    if plan.overlap_frames == 0:
        return ffmpeg.concat(*pieces, v=1, a=0)
    joined, elapsed = pieces[0], plan.frames[0]
    fade = f"{float(Fraction(plan.overlap_frames) / plan.rate):.6f}"
    for index, piece in enumerate(pieces[1:], start=1):
        offset = Fraction(elapsed - index * plan.overlap_frames) / plan.rate
        joined = ffmpeg.filter(
            [joined, piece], "xfade", transition="fade", duration=fade, offset=f"{float(offset):.6f}"
        )
        elapsed += plan.frames[index]
    return joined


def _normalise_graph(plan: ConcatPlan, partial: Path, track: Path | None) -> Any:
    """Every clip decoded, fitted to one size, rate and format, joined, and encoded once."""
    sources = _sources(plan)
    pieces = [
        _fitted_video(source["v:0"], clip, frames, plan)
        for source, clip, frames in zip(sources, plan.clips, plan.frames, strict=True)
    ]
    streams = [_joined_video(pieces, plan)]
    options = {**VIDEO_ENCODE, **MP4_OPTIONS}
    if plan.with_audio:
        streams.append(_joined_audio(_clip_audio(plan, sources), plan))
        options.update(AUDIO_ENCODE)
    return _output(streams, options, track, partial)


def _conformed_videos(plan: ConcatPlan, scratch: Path, *, context: str) -> tuple[list[Path], str | None]:
    """Each clip's video for the copy: the majority's own files, the odd clips re-encoded to match.

    Returns why the conformed path cannot be taken (a re-encoded clip that still differs) instead.
    """
    reference = plan.clips[plan.reference]
    encoder = matching_encoder(reference, VIDEO_ENCODE, context=context)
    videos = [clip.path for clip in plan.clips]
    for index in plan.conform:
        clip, out = plan.clips[index], scratch / f"conformed-{index}.mp4"
        fitted = _fitted_video(
            ffmpeg.input(str(clip.path))["v:0"], clip, plan.frames[index], plan, sar=encoder.sar
        )
        doing = f"{context} (re-encoding clip {index + 1} to match clip {plan.reference + 1})"
        refusal = conform_clip(fitted, encoder, reference, plan.frames[index], out, context=doing)
        if refusal is not None:
            return videos, f"clip {index + 1} ({clip.path}), {refusal} from clip {plan.reference + 1}"
        videos[index] = out
    return videos, None


def _checked(partial: Path, plan: ConcatPlan, *, context: str) -> MediaInfo:
    """Probe the written file and refuse it unless its durations are what the plan promised."""
    info = probe(partial, context=context)
    expected = float(plan.video_seconds)
    frame = float(1 / plan.rate)
    problems = []
    if info.video_duration is None or abs(info.video_duration - expected) > frame + 1e-6:
        problems.append(f"video lasts {info.video_duration} s, expected {expected:.3f} s")
    if plan.with_audio and (
        info.audio_duration is None or abs(info.audio_duration - expected) > _AUDIO_SYNC_SECONDS
    ):
        problems.append(f"audio lasts {info.audio_duration} s, expected {expected:.3f} s")
    if problems:
        names = ", ".join(str(clip.path) for clip in plan.clips)
        raise MediaError(
            f"the joined file came out wrong ({'; '.join(problems)}); it was not kept",
            context=context,
            hint=f"an input may be truncated or damaged; check {names}",
        )
    return info


def concat(
    inputs: Sequence[Path],
    out: Path,
    *,
    target: ConcatTarget | None = None,
    transition: Transition | None = None,
    srt: Path | None = None,
    vtt: Path | None = None,
    context: str = "",
) -> ConcatResult:
    """Join clips end to end into one H.264 (+ AAC) mp4 at ``out``, fast when the clips allow it.

    Every input is probed first. When all share codec, profile, size, pixel format, aspect, frame
    rate, time base, colour tags and SPS/PPS, and the target asks for nothing else, the video
    packets are copied (``path_taken="stream_copy"``). When more than half of them share all that
    and the target's size and rate, only the others are re-encoded, fitted to that size and with
    the majority's encoder settings, and then every packet is copied (``"conformed"``; exactly one
    encode for one odd clip). Otherwise, or when a re-encoded clip still differs from the majority
    (logged as a warning), every clip is scaled to the target size (padded or cropped), converted
    to one frame rate and yuv420p, and encoded once (``"normalised"``). A ``transition``
    crossfades video and audio, so it always normalises. ``reason`` says why the path was taken.
    When any clip has audio, the output's AAC track is rebuilt with silence for silent clips and
    each clip's audio fitted to its video, so sound never drifts; with none, the output is silent.
    When any clip has a text subtitle track (a soft-captioned clip), the output gets one
    ``mov_text`` track of all their cues, each moved by its clip's start in the cut, and the same
    cues are written to ``srt`` and ``vtt`` when given (``captions`` counts them; no cues, no files).

    The output lasts the sum of the clips' video durations less one overlap per transition (to
    within a frame), its audio matches its video within 50 ms, and this is checked by probing
    before the file is moved to ``out``. ``context`` (e.g. "step 'final_cut'") names the caller in
    errors, which also name the file and carry ffmpeg's last lines of stderr.

    Example:
        >>> concat([Path("shot1.mp4"), Path("shot2.mp4")], Path("cut.mp4"),
        ...        transition=Transition(duration=0.5), context="step 'final_cut'")  # doctest: +SKIP
    """
    if not inputs:
        raise MediaError("nothing to join: no input clips were given", context=where(context, out))
    clips = tuple(inspect_video(path, context=context) for path in inputs)
    plan = plan_concat(clips, target or ConcatTarget(), transition, context=context)
    _log.info(
        "%s: %s of %d clips into %s: %s", context or "concat", plan.path_taken, len(clips), out, plan.reason
    )
    return write_concat(plan, out, srt=srt, vtt=vtt, context=context)


def write_concat(
    plan: ConcatPlan, out: Path, *, srt: Path | None = None, vtt: Path | None = None, context: str
) -> ConcatResult:
    """Carry out a plan: run ffmpeg into a partial file, check it by probing, move it to ``out``.

    Separate from :func:`concat` so the benchmark can send the same clips down either path.
    """
    doing = where(context, out) + f" (joining {len(plan.clips)} clips, {plan.path_taken.replace('_', ' ')})"
    with tempfile.TemporaryDirectory(prefix="klingflow-concat-") as scratch, atomic_path(out) as partial:
        captions = cut_captions(plan, Path(scratch), context=doing)
        track = None
        if captions is not None:
            track = Path(scratch) / "cut.srt"
            captions.save(str(track), format_="srt")
        videos = [clip.path for clip in plan.clips]
        if plan.path_taken == "conformed":
            videos, refusal = _conformed_videos(plan, Path(scratch), context=doing)
            if refusal is not None:
                _log.warning("%s: normalising every clip instead: %s", doing, refusal)
                plan = replace(plan, path_taken="normalised", reason=f"{plan.reason}; but {refusal}")
        if plan.path_taken != "normalised":
            graph = _copy_graph(plan, videos, Path(scratch), partial, track)
        else:
            graph = _normalise_graph(plan, partial, track)
        run_ffmpeg(graph, context=doing)
        info = _checked(partial, plan, context=doing)
    if captions is not None:
        save_captions(captions, srt, vtt)
    return ConcatResult(
        path=out,
        path_taken=plan.path_taken,
        reason=plan.reason,
        info=info.model_copy(update={"path": str(out)}),
        captions=len(captions.events) if captions is not None else 0,
        srt=srt if captions is not None else None,
        vtt=vtt if captions is not None else None,
    )
